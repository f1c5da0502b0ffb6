"""The MCP server for AI agents, served by the app at `/mcp` when MCP_AUDIENCE is set.

The official SDK (MCPServer, Streamable HTTP) answers: stateless (every request stands alone, so
any worker or machine can take the next one) with JSON responses, its bearer check done by the
service's own verifier (`tokens.McpTokens`). A token that is missing or refused gets the SDK's
401, whose `WWW-Authenticate` names the RFC 9728 protected-resource metadata it serves at
`/.well-known/oauth-protected-resource/<path of MCP_AUDIENCE>`, which names the authorization
server (Better Auth's URL). In front of the SDK, `McpGate` applies the limits every request of
the service has: a request refused as unauthenticated counts against its client address
(RATE_LIMIT_ANONYMOUS), and one of a user against the user's RATE_LIMIT (429 beyond, in the
service's error format). The SDK refuses a Host (and an Origin) it was not told of: MCP_AUDIENCE's
host and the loopback names are allowed, and MCP_ALLOWED_HOSTS adds others.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import AnyHttpUrl
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.config import Settings
from backend.db import Database
from backend.errors import AppError, RateLimited
from backend.mcp import tools
from backend.mcp.tokens import McpTokens
from backend.metrics import Metrics
from backend.middleware.jwt_auth import TokenVerifier
from backend.middleware.rate_limit import RateLimiter
from backend.services.events import ChangeHub
from backend.web.errors import error_response

PATH = "/mcp"
_LOOPBACK = ["127.0.0.1", "localhost", "[::1]"]


class McpService:
    """The MCP server of one app: its routes, and `run()`, its session manager for the
    lifespan."""

    def __init__(
        self,
        settings: Settings,
        *,
        database: Database,
        hub: ChangeHub,
        verifier: TokenVerifier,
        limiter: RateLimiter,
        metrics: Metrics,
    ) -> None:
        assert settings.mcp_audience is not None
        self.tokens = McpTokens(verifier, settings)
        audience = settings.mcp_audience
        self.server = MCPServer(
            name="tasks",
            title="Tasks",
            instructions=tools.INSTRUCTIONS,
            token_verifier=self.tokens,
            auth=AuthSettings(
                issuer_url=AnyHttpUrl(_authorization_server(settings)),
                resource_server_url=AnyHttpUrl(audience),
                validate_token_resource=False,  # McpTokens checks the audience itself
            ),
        )
        tools.register(
            self.server,
            tools.Services(database, hub, settings.max_tasks_per_user),
            metrics.observe_tool,
        )
        sdk = self.server.streamable_http_app(
            streamable_http_path=PATH,
            stateless_http=True,
            json_response=True,
            transport_security=_transport_security(settings),
        )
        gate = McpGate(sdk, self.tokens, limiter)
        # The SDK's own routes (the endpoint and the metadata), each served through the gate.
        self.routes: list[BaseRoute] = [
            Route(str(getattr(route, "path", PATH)), endpoint=gate, include_in_schema=False)
            for route in sdk.routes
        ]

    @asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        async with self.server.session_manager.run():
            yield


class McpGate:
    """The service's limits before the SDK sees a request: the client address's budget for a
    request whose token is refused (the SDK then answers its 401), the user's rate limit for the
    others (429 beyond). Verification is the verifier's, and remembered: the SDK's check of the
    same token finds it done."""

    def __init__(self, app: ASGIApp, tokens: McpTokens, limiter: RateLimiter) -> None:
        self.app = app
        self.tokens = tokens
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH:
            await self.app(scope, receive, send)  # the metadata: public, like /health
            return
        refusal: AppError | None = None
        token = _bearer(scope)
        checked = None if token is None else await self.tokens.check(token)
        if checked is None or isinstance(checked, AppError):
            refusal = await self.limiter.refusal_for(scope)
        else:
            quota = await self.limiter.hit(checked.user_id)
            if quota is not None and not quota.allowed:
                refusal = RateLimited(limit=quota.limit, retry_after=quota.reset)
        if refusal is not None:
            await error_response(refusal)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def _authorization_server(settings: Settings) -> str:
    """Who issues the tokens: Better Auth (its URL), else the configured issuer, else — with a
    shared secret and no issuer — the origin of the MCP server itself."""
    if settings.better_auth_url is not None:
        return settings.better_auth_url
    if settings.jwt_issuer is not None and urlsplit(settings.jwt_issuer).scheme in (
        "http",
        "https",
    ):
        return settings.jwt_issuer
    assert settings.mcp_audience is not None
    parts = urlsplit(settings.mcp_audience)
    return f"{parts.scheme}://{parts.netloc}"


def _transport_security(settings: Settings) -> TransportSecuritySettings:
    """The Hosts (and browser Origins) the SDK answers: MCP_AUDIENCE's, the loopback names (any
    port), and MCP_ALLOWED_HOSTS; the origins of the frontends (CORS_ORIGINS) too."""
    assert settings.mcp_audience is not None
    public = urlsplit(settings.mcp_audience)
    hosts = [public.netloc, *settings.mcp_allowed_hosts, *(f"{host}:*" for host in _LOOPBACK)]
    hosts += _LOOPBACK
    origins = [f"{public.scheme}://{public.netloc}", *settings.cors_origins]
    origins += [f"http://{host}:*" for host in _LOOPBACK]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )
