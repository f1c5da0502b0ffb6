"""The ASGI middlewares, each a pure ASGI app (nothing buffered, a streamed response is never
delayed). main.py installs them; a request passes them outermost first:

    RequestContext     the request id, the headers every response carries, the access line and
                       the request metrics: around everything, so that preflights, 404s and 500s
                       get an `X-Request-ID` too, and every line logged while a request is served
                       names it (see logs.py)
    Cors               cors.py: wraps everything the app answers, errors included
    NoTrailingSlash    `/api/alice/tasks/` served as `/api/alice/tasks`
    UnexpectedErrors   an exception nobody handled: the contract's 500, logged once
    BodySizeLimit      bodies over MAX_BODY_BYTES refused with 413 as they stream in
"""

import logging
import re
import secrets
import time

from fastapi.routing import APIRoute
from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.errors import AppError, PayloadTooLarge
from backend.logs import request_id
from backend.metrics import Metrics
from backend.middleware.rate_limit import PROBE_PATHS
from backend.web.errors import error_response
from backend.web.matching import route_template

access_logger = logging.getLogger("backend.access")
logger = logging.getLogger("backend.errors")  # the name it has always logged under

MAX_BODY_BYTES = 1024 * 1024
# A sane incoming X-Request-ID is kept; the document states the same pattern.
REQUEST_ID_PATTERN = "^[A-Za-z0-9._-]{1,128}$"
_SANE_ID = re.compile(REQUEST_ID_PATTERN)


def body_too_large() -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than {MAX_BODY_BYTES} bytes")


def new_request_id() -> str:
    return secrets.token_hex(16)  # 32 hex digits, as uuid4().hex, without building a UUID


def incoming_request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _SANE_ID.fullmatch(candidate):
                return candidate
            break
    return new_request_id()


class RequestContext:
    """`routes`: the app's, for the template of a request no route took."""

    def __init__(self, app: ASGIApp, *, routes: list[BaseRoute], metrics: Metrics) -> None:
        self.app = app
        self.routes = routes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = incoming_request_id(scope)
        is_api = scope["path"].startswith("/api/")
        status = 500  # if the app fails before it answers (the server then answers 500)

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = rid
                headers["X-Content-Type-Options"] = "nosniff"
                if is_api:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        token = request_id.set(rid)
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            seconds = time.perf_counter() - started
            # The route the router chose (it leaves it in the scope); only a request no route
            # took (404, 405) or a copied scope (a trailing slash) is matched again here.
            chosen = scope.get("route")
            route = (
                chosen.path if isinstance(chosen, APIRoute) else route_template(self.routes, scope)
            )
            method = scope["method"]
            self.metrics.observe(method=method, route=route, status=status, seconds=seconds)
            # Probes of load balancers and scrapers: counted in the metrics, but their access
            # lines are DEBUG, not INFO.
            level = logging.DEBUG if scope["path"] in PROBE_PATHS else logging.INFO
            milliseconds = round(seconds * 1000, 1)
            access_logger.log(
                level,
                "%s %s %d %.1f ms",
                method,
                route,
                status,
                milliseconds,
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": milliseconds,
                },
            )
            request_id.reset(token)


class NoTrailingSlash:
    """Serves `/api/alice/tasks/` as `/api/alice/tasks`. Starlette would answer a redirect whose
    Location it builds from the Host header (`Host: evil.example` → `http://evil.example/…`,
    and `http://` behind TLS); a frontend that adds the slash simply gets its answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            raw: bytes = scope.get("raw_path") or path.encode()
            scope = {
                **scope,
                "path": path[:-1],
                "raw_path": raw[:-1] if raw.endswith(b"/") else raw,
            }
        await self.app(scope, receive, send)


class UnexpectedErrors:
    """Answers an exception nobody handled with the contract's 500 body, and logs it once.

    Starlette answers them in its outermost middleware, outside CORS, so a browser would see a
    CORS failure instead of the error; this one sits inside CORS. A response that has already
    started cannot be replaced: then the exception goes on to the server, which closes the
    connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            logger.error("unhandled error", exc_info=exc)
            if started:
                raise
            await error_response(AppError())(scope, receive, send)


class BodySizeLimit:
    """Refuses request bodies over the limit with 413, counting bytes as they stream in, so a
    chunked body without Content-Length is caught too and nothing large is ever buffered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
                declared_too_large = True
                break
        else:
            declared_too_large = False
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared_too_large:
                raise body_too_large()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise body_too_large()
            return message

        await self.app(scope, limited_receive, send)
