"""Which bearer tokens the MCP server takes: the service's own verifier (HS256 or Better Auth's
JWKS, as for the REST routes), with the audience of the MCP server.

The MCP specification requires a server to accept only tokens issued for it: a token's `aud`
must include MCP_AUDIENCE (the public URL of `/mcp`). The web app's ordinary tokens (for
Better Auth's origin, or an HS256 token with no audience) are accepted too only when
MCP_ACCEPT_APP_TOKENS is true. Tokens are checked here and nowhere passed on; a refusal is
logged with its reason, never with the token.
"""

import logging

from mcp.server.auth.provider import AccessToken

from backend.config import Settings
from backend.errors import AppError
from backend.middleware.jwt_auth import TokenVerifier, VerifiedToken

logger = logging.getLogger("backend.mcp")


class McpTokens:
    """The SDK's TokenVerifier: `verify_token` answers None for a token it refuses (the SDK
    then answers 401 with `WWW-Authenticate` naming the protected-resource metadata)."""

    def __init__(self, verifier: TokenVerifier, settings: Settings) -> None:
        assert settings.mcp_audience is not None  # the MCP server is served only with it
        self._verifier = verifier
        self._audience = settings.mcp_audience
        self._accept_app_tokens = settings.mcp_accept_app_tokens

    async def check(self, token: str) -> VerifiedToken | AppError:
        """The verified token, or why it is refused."""
        try:
            return await self._verifier.verified(token, audience=self._audience)
        except AppError as refusal:
            if not self._accept_app_tokens:
                return refusal
        try:
            return await self._verifier.verified(token)
        except AppError as refusal:
            return refusal

    async def verify_token(self, token: str) -> AccessToken | None:
        checked = await self.check(token)
        if isinstance(checked, AppError):
            logger.info(
                "/mcp refused: %d %s: %s", checked.status_code, checked.code, checked.detail
            )
            return None
        return AccessToken(
            token=token,
            client_id=checked.user_id,
            subject=checked.user_id,
            scopes=[],
            expires_at=None,  # `exp` is checked above, with the leeway the SDK does not know
            resource=self._audience,
        )
