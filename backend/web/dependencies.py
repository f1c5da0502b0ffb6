"""What a handler may ask for besides its parameters: the verified user, the request's
connection, the settings. Each is a FastAPI dependency (so the OpenAPI document and FastAPI's
own path know them), and each has a provider that TaskRoute's binder calls instead of solving
it. Both read what the pipeline set and fail closed: a route served without TaskRoute raises
on its first request instead of trusting the path."""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.config import Settings
from backend.web.auth import OutsidePipeline, verified_user
from backend.web.state import app_state

CONNECTION = "taskapi.connection"  # the scope key of the request's connection (TaskRoute's)


def connection_of(request: Request) -> AsyncConnection:
    try:
        conn: AsyncConnection = request.scope[CONNECTION]
    except KeyError:
        raise OutsidePipeline("a handler asks for a connection no TaskRoute opened") from None
    return conn


def settings_of(request: Request) -> Settings:
    return app_state(request).settings


async def current_user(
    request: Request,
    user_id: Annotated[str, Path(description="The user id; must equal the token's `sub`.")],
) -> str:
    return verified_user(request)


async def connection(request: Request) -> AsyncConnection:
    return connection_of(request)


async def settings(request: Request) -> Settings:
    return settings_of(request)


# The handler's user id: the path's, once TaskRoute's pipeline has verified that the token's
# `sub` is that user (tests/test_isolation.py sends requests to a route without the pipeline).
CurrentUser = Annotated[str, Depends(current_user)]
# The request's connection, opened by TaskRoute around the handler (a yield dependency's exit
# stack and cancel scopes would cost more than the checkout); back in the pool once the
# handler has rendered its response.
Conn = Annotated[AsyncConnection, Depends(connection)]
SettingsDep = Annotated[Settings, Depends(settings)]

# What TaskRoute's binder gives the handlers' dependencies, without solving them.
PROVIDED: dict[Callable[..., Any], Callable[[Request], Any]] = {
    current_user: verified_user,
    connection: connection_of,
    settings: settings_of,
}
