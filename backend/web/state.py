"""What `create_app` builds from the settings, in one typed object with one `aclose()` that the
lifespan and the tests both use. Read through `app_state(app or request)`."""

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute

from backend import db
from backend.config import Settings, development_secret_file, with_development_secret
from backend.metrics import Metrics
from backend.middleware.jwt_auth import TokenVerifier
from backend.middleware.rate_limit import RateLimiter
from backend.services.events import ChangeHub


class Mounted(Protocol):
    """A server the app serves beside its routes, and runs while it serves: the MCP server
    (backend.mcp), which main.py wires in."""

    routes: list[BaseRoute]

    def run(self) -> AbstractAsyncContextManager[None]: ...


@dataclass(slots=True)
class AppState:
    """Not frozen: a test may put in a verifier of its own (with a clock it controls)."""

    settings: Settings
    db: db.Database
    verifier: TokenVerifier
    changes: ChangeHub
    rate_limiter: RateLimiter
    metrics: Metrics
    mcp: Mounted | None = None  # with MCP_AUDIENCE: the MCP server for AI agents

    @classmethod
    def build(cls, settings: Settings) -> "AppState":
        """The objects of an app with these settings: nothing connects yet. With no way to
        verify tokens configured, the development secret is made (or read) here."""
        development_secret = development_secret_file(settings)
        settings = with_development_secret(settings)
        database = db.Database(settings)
        return cls(
            settings=settings,
            db=database,
            verifier=TokenVerifier(settings, development_secret=development_secret),
            changes=ChangeHub(settings, database),
            rate_limiter=RateLimiter(settings),
            metrics=Metrics(database),
        )

    def attach(self, app: Starlette) -> None:
        app.state.app_state = self

    async def aclose(self) -> None:
        """Ends the event streams, then closes the JWKS client, the database and Redis."""
        await self.changes.aclose()
        await self.verifier.aclose()
        await self.db.dispose()
        self.rate_limiter.close()


def app_state(where: Starlette | HTTPConnection) -> AppState:
    app = where.app if isinstance(where, HTTPConnection) else where
    state: AppState = app.state.app_state
    return state
