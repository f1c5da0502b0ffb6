"""CORS that explains itself: Starlette's CORS middleware, always installed, whose refusals say
which origin was refused and which setting allows it.

- A preflight from an origin that is not allowed (not in CORS_ORIGINS, not matching
  CORS_ORIGIN_REGEX; with neither set, every origin) is 400 CORS_REFUSED in the error format,
  naming the origin and the settings, and so is one asking for a method or header the API does
  not take.
- Each refused origin is logged once a minute at WARNING (a request from it too, which the
  browser then refuses to show); the origins remembered for that are bounded.
- A request without an `Origin` header (every non-browser client) passes straight through.
- The start-up log says which origins are allowed (`startup_line`).
"""

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.config import Settings
from backend.errors import CorsRefused
from backend.web.errors import error_response

logger = logging.getLogger("backend.cors")

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
REQUEST_HEADERS = [
    "Authorization",
    "Content-Type",
    "If-Match",
    "If-None-Match",
    "Idempotency-Key",
    "Last-Event-ID",
]
EXPOSED_HEADERS = [
    "Location",
    "Link",
    "X-Total-Count",
    "ETag",
    "X-Sync-Token",
    "Idempotent-Replayed",
    "X-Next-Occurrence-Skipped",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "X-Request-ID",
]
LOG_EVERY_SECONDS = 60.0
ORIGINS_REMEMBERED = 256  # the refused origins whose last log line is remembered
MAX_SHOWN = 200  # characters of an Origin header quoted back


def allowed_origins(settings: Settings) -> str:
    """The origins allowed, in words (for the start-up log and the refusals)."""
    named = [*settings.cors_origins]
    if settings.cors_origin_regex is not None:
        named.append(f"those matching CORS_ORIGIN_REGEX {settings.cors_origin_regex}")
    return ", ".join(named) if named else "none (CORS_ORIGINS is not set)"


def startup_line(settings: Settings) -> str:
    if not settings.cors_origins and settings.cors_origin_regex is None:
        return (
            "CORS: no browser origin is allowed (CORS_ORIGINS is not set): a frontend served "
            "from another origin (http://localhost:3000, say) is refused by the browser; set "
            "CORS_ORIGINS to its origin"
        )
    return f"CORS: browsers on these origins may call this API: {allowed_origins(settings)}"


class Cors(CORSMiddleware):
    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
    ) -> None:
        super().__init__(
            app,
            allow_origins=settings.cors_origins,
            allow_origin_regex=settings.cors_origin_regex,
            allow_credentials=True,
            allow_methods=METHODS,
            allow_headers=REQUEST_HEADERS,
            expose_headers=EXPOSED_HEADERS,
        )
        self._allowed = allowed_origins(settings)
        self.clock: Callable[[], float] = time.monotonic  # when a refusal was last logged
        self._logged: OrderedDict[str, float] = OrderedDict()  # origin -> when last logged

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1")
                break
        else:  # not a browser's cross-origin request: nothing to add, nothing to check
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self.preflight_response(request_headers=headers)(scope, receive, send)
            return
        if not self.is_allowed_origin(origin) and not _same_origin(scope, headers, origin):
            self._log_refusal(origin, "a request")
        await self.simple_response(scope, receive, send, request_headers=headers)

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        origin = request_headers["origin"]
        if not self.is_allowed_origin(origin):
            self._log_refusal(origin, "a preflight")
            detail = (
                f"The origin {_shown(origin)} may not call this API: the allowed origins are "
                f"{self._allowed}. Add it to CORS_ORIGINS (scheme://host[:port], as the browser "
                "sends it), or match it with CORS_ORIGIN_REGEX"
            )
        else:
            detail = (
                f"The origin {_shown(origin)} is allowed, but this API takes only the methods "
                f"{', '.join(METHODS)} and the request headers {', '.join(REQUEST_HEADERS)}: "
                f"asked for {_shown(request_headers['access-control-request-method'])} with "
                f"{_shown(request_headers.get('access-control-request-headers', ''))}"
            )
        refused = error_response(CorsRefused(detail))
        for name, value in response.headers.items():
            if name not in ("content-type", "content-length"):
                refused.headers[name] = value
        return refused

    def _log_refusal(self, origin: str, what: str) -> None:
        now = self.clock()
        last = self._logged.get(origin)
        if last is not None and now - last < LOG_EVERY_SECONDS:
            return
        self._logged[origin] = now
        self._logged.move_to_end(origin)
        while len(self._logged) > ORIGINS_REMEMBERED:
            self._logged.popitem(last=False)
        logger.warning(
            "CORS: refused %s from the origin %s, which is not allowed (allowed: %s); add it to "
            "CORS_ORIGINS or match it with CORS_ORIGIN_REGEX",
            what,
            _shown(origin),
            self._allowed,
        )


def _same_origin(scope: Scope, headers: Headers, origin: str) -> bool:
    # The API's own pages (/docs) send an Origin with their writes: the API's own origin.
    host = headers.get("host")
    return host is not None and origin == f"{scope.get('scheme', 'http')}://{host}"


def _shown(value: str) -> str:
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in value)
    text = text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"
    return f'"{text}"'
