"""The outermost middleware: the request id, the headers every response carries, the access
line and the request metrics.

It wraps CORS, the 500 handler and everything inside, so that preflights, 404s and 500s get an
`X-Request-ID` too, and every line logged while a request is served names it (see logs.py).
A pure ASGI middleware: it neither buffers nor delays a streamed response (event streams).
"""

import logging
import re
import secrets
import time

from fastapi.routing import APIRoute
from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.errors import flat_routes
from backend.logs import request_id
from backend.metrics import UNMATCHED, Metrics

access_logger = logging.getLogger("backend.access")

_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Probes of load balancers and scrapers: counted in the metrics, but their access lines are DEBUG,
# not INFO, and they count against no rate limit (rate_limit.py).
PROBE_PATHS = frozenset({"/health", "/ready", "/metrics"})


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


def route_template(routes: list[BaseRoute], scope: Scope) -> str:
    """The path template of the route a request went to (`/api/{user_id}/tasks/{task_id}`),
    never the raw path (it holds user ids); `<unmatched>` for a path no route has."""
    path: str = scope.get("path", "")
    if len(path) > 1 and path.endswith("/"):  # as NoTrailingSlash serves it
        scope = {**scope, "path": path[:-1]}
    for route in flat_routes(routes):
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return str(getattr(route, "path", UNMATCHED))
    return UNMATCHED


class RequestContext:
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
