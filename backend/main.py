"""The ASGI application: `backend.main:app`, built by `create_app(settings)`. This module is the
wiring only: the state, the lifespan, the document, the routes and the middlewares' order."""

import logging.config
import sys

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from backend import db
from backend.config import Settings, from_environment
from backend.logs import logging_config
from backend.mcp.server import McpService
from backend.routes import ROUTES
from backend.web import openapi
from backend.web.cors import Cors
from backend.web.errors import install_error_handlers
from backend.web.lifespan import lifespan
from backend.web.middleware import BodySizeLimit, NoTrailingSlash, RequestContext, UnexpectedErrors
from backend.web.state import AppState


def create_app(settings: Settings | None = None) -> FastAPI:
    state = AppState.build(settings or Settings())
    if state.settings.mcp_audience is not None:  # the MCP server for AI agents
        state.mcp = McpService(
            state.settings,
            database=state.db,
            hub=state.changes,
            verifier=state.verifier,
            limiter=state.rate_limiter,
            metrics=state.metrics,
        )
    # Swagger UI and ReDoc from files this package ships, not from a CDN: /docs works offline.
    app = FastAPIOffline(
        static_url="/docs/assets",
        title="Tasks API",
        version="0.1.0",
        summary="Multi-user tasks for apps whose users sign in with Better Auth.",
        description="Every route under `/api/` needs `Authorization: Bearer <JWT>` whose `sub` "
        "is the `{user_id}` of the path. Errors are `{detail, code, field}`.",
        openapi_tags=openapi.TAGS,
        lifespan=lifespan(state),
        redirect_slashes=False,
    )
    state.attach(app)
    openapi.finish(app)
    # Requests no route takes count against the client address's budget, as refusals do.
    install_error_handlers(app, unrouted=state.rate_limiter.refusal_for)
    # The routes are the app's own: FastAPI would wrap each included router in one more layer
    # that matches every request twice (bench/README.md). They go first: the router tries
    # routes in order, and the docs' five need not be tried for every request.
    app.router.routes[:0] = [*ROUTES, *(state.mcp.routes if state.mcp is not None else ())]
    # Listed innermost first: CORS wraps everything the app answers, errors included, and
    # RequestContext wraps CORS (Starlette's own 500 handler stays outermost, but it never
    # answers: UnexpectedErrors has answered first).
    app.add_middleware(BodySizeLimit)
    app.add_middleware(UnexpectedErrors)
    app.add_middleware(NoTrailingSlash)
    # Always there: a browser's preflight is answered, refused ones with what to set.
    app.add_middleware(Cors, settings=state.settings)
    app.add_middleware(RequestContext, routes=app.router.routes, metrics=state.metrics)
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
