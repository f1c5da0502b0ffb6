"""The ASGI application: `backend.main:app`, built by `create_app(settings)`."""

import asyncio
import gc
import logging
import logging.config
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend import db
from backend.config import (
    Settings,
    development_secret_file,
    from_environment,
    with_development_secret,
)
from backend.errors import PayloadTooLarge, UnexpectedErrors, install_error_handlers
from backend.logs import logging_config
from backend.metrics import Metrics
from backend.middleware.cors import Cors, startup_line
from backend.middleware.jwt_auth import BEARER_SCHEME, TokenVerifier
from backend.middleware.rate_limit import RateLimiter
from backend.middleware.requests import RequestContext
from backend.routes import health, tasks
from backend.schemas.error import HEADERS
from backend.services.events import ChangeHub
from backend.services.housekeeping import housekeeping

MAX_BODY_BYTES = 1024 * 1024
logger = logging.getLogger("backend")


@contextmanager
def _steady_gc() -> Iterator[None]:
    """While serving: what was built at start-up (modules, the app, SQLAlchemy's and pydantic's
    caches) is moved out of the cyclic collector's sight, and young objects are collected less
    often. A request allocates thousands of short-lived objects, and every collection of the
    older generations walked all of start-up's: py-spy put 5-10 % of a list request's time in
    the allocating frames, and this took one process from 541 to 858 list requests a second
    (PostgreSQL, 64 connections). Undone at shutdown, so nothing frozen outlives the app."""
    threshold = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


class BodySizeLimit:
    """Refuses request bodies over the limit with 413, counting bytes as they stream in, so a
    chunked body without Content-Length is caught too and nothing large is ever buffered."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                declared_too_large = True
                break
        else:
            declared_too_large = False
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared_too_large:
                raise PayloadTooLarge(f"The request body is larger than {self.max_bytes} bytes")
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(f"The request body is larger than {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


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


_REQUEST_ID_HEADER = {
    "description": "The request's id: the one sent, when sane, or a new one; every log line "
    "of the request carries it",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
}
_RATE_LIMIT_HEADERS = {
    name: HEADERS[name] for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
}
TAGS = [
    {"name": "tasks", "description": "A user's tasks: every route needs the user's token."},
    {
        "name": "sync",
        "description": "What changed since a sync token, as pages or as a live stream.",
    },
    {"name": "operations", "description": "Probes and metrics for operators; no token."},
]


def _finish_document(schema: dict[str, Any]) -> dict[str, Any]:
    """What FastAPI cannot say per route: every route under /api/ needs the bearer token, every
    response carries X-Request-ID, and every successful answer under /api/ the user's
    RateLimit-* headers. An optional query or header
    parameter is left out, never sent as null (a header or query value is text): FastAPI
    documents `str | None` as "a string or null", so a client generator or fuzzer would send
    the text "null". Such a parameter is documented as the string alone."""
    schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schema["components"]["securitySchemes"]["HTTPBearer"] = BEARER_SCHEME
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            if path.startswith("/api/"):
                operation["security"] = [{"HTTPBearer": []}]
            for status, response in operation.get("responses", {}).items():
                headers = response.setdefault("headers", {})
                if path.startswith("/api/") and status.startswith("2"):
                    headers.update(_RATE_LIMIT_HEADERS)
                headers["X-Request-ID"] = _REQUEST_ID_HEADER
            for parameter in operation.get("parameters", []):
                choices = parameter.get("schema", {}).get("anyOf")
                if not choices or {"type": "null"} not in choices:
                    continue
                others = [choice for choice in choices if choice != {"type": "null"}]
                if len(others) == 1:
                    rest = {k: v for k, v in parameter["schema"].items() if k != "anyOf"}
                    parameter["schema"] = {**others[0], **rest}
    return schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    development_secret = development_secret_file(settings)
    settings = with_development_secret(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            await db.migrate(settings)
        logger.info("%s", startup_line(settings))
        cleaner = asyncio.create_task(housekeeping(app.state.db), name="housekeeping")
        with _steady_gc():
            yield
        cleaner.cancel()
        with suppress(asyncio.CancelledError):
            await cleaner
        await app.state.changes.aclose()
        await app.state.verifier.aclose()
        await app.state.db.dispose()
        app.state.rate_limiter.close()

    # Swagger UI and ReDoc from files this package ships, not from a CDN: /docs works offline.
    app = FastAPIOffline(
        static_url="/docs/assets",
        title="Tasks API",
        version="0.1.0",
        summary="Multi-user tasks for apps whose users sign in with Better Auth.",
        description="Every route under `/api/` needs `Authorization: Bearer <JWT>` whose `sub` "
        "is the `{user_id}` of the path. Errors are `{detail, code, field}`.",
        openapi_tags=TAGS,
        lifespan=lifespan,
        redirect_slashes=False,
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _finish_document(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.settings = settings
    app.state.db = db.Database(settings)
    app.state.verifier = TokenVerifier(settings, development_secret=development_secret)
    app.state.changes = ChangeHub(settings, app.state.db)
    app.state.rate_limiter = RateLimiter(settings)
    app.state.metrics = Metrics(app.state.db)
    # Requests no route takes count against the client address's budget, as refusals do.
    install_error_handlers(app, unrouted=app.state.rate_limiter.refusal_for)
    # The routers' routes are the app's own: FastAPI would wrap each included router in one more
    # layer that matches every request twice (about 70 µs a request, measured). They go first:
    # the router tries routes in order, and the docs' five need not be tried for every request.
    app.router.routes[:0] = [*tasks.router.routes, *health.router.routes]
    # Listed innermost first: CORS wraps everything the app answers, errors included, and
    # RequestContext wraps CORS (Starlette's own 500 handler stays outermost, but it never
    # answers: UnexpectedErrors has answered first).
    app.add_middleware(BodySizeLimit)
    app.add_middleware(UnexpectedErrors)
    app.add_middleware(NoTrailingSlash)
    # Always there: a browser's preflight is answered, refused ones with what to set.
    app.add_middleware(Cors, settings=settings)
    app.add_middleware(RequestContext, routes=app.router.routes, metrics=app.state.metrics)
    return app


def __getattr__(name: str) -> FastAPI:
    # `backend.main:app` is built on first access (uvicorn's import), not at import time, so
    # that importing create_app (tests, the CLI) reads no environment and touches no files.
    # Built so, it is the app of a process an ASGI server started (`uvicorn backend.main:app`,
    # or `taskapi serve`'s workers), and it sets the process up as `taskapi` does: settings that
    # are wrong end it with one line, and logging is the service's (JSON with LOG_FORMAT=json,
    # uvicorn's own lines included, and one access line a request: ours).
    if name == "app":
        settings = from_environment()
        try:
            db.check_urls(settings)
        except db.DatabaseURLError as exc:
            sys.exit(f"taskapi: {exc}")
        logging.config.dictConfig(logging_config(settings))
        application = globals()["app"] = create_app(settings)
        return application
    raise AttributeError(name)
