"""Who is calling: the bearer JWT, verified, and the path's user checked against it.

Flow for every route under /api/{user_id}/…:
  1. `authenticate(request)` runs before FastAPI reads the body or validates anything, so an
     unauthenticated request is a 401 whatever else is wrong with it (routes/tasks.py calls it
     from its route class: FastAPI parses bodies before it solves dependencies).
     - no `Authorization: Bearer …` header        → 401 AUTH_REQUIRED  (tokens in the query
       string are ignored)
     - a token that fails verification            → 401 TOKEN_INVALID / TOKEN_EXPIRED
     - the token's `sub` ≠ the path's `{user_id}` → 403 FORBIDDEN
  2. `CurrentUser` hands the verified user id to the handler, and documents the bearer scheme
     in OpenAPI (the Authorize button of /docs).

Tokens (see TokenVerifier): HS256 signed with BETTER_AUTH_SECRET, or Better Auth's jwt-plugin
tokens verified with its JWKS (middleware/jwks.py). `exp` and `sub` required, `nbf` honoured,
bounded leeway, `iss`/`aud` checked when configured or known. Tokens are never logged.
"""

from typing import Annotated, Any

import jwt
from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from backend.config import Settings
from backend.errors import AuthRequired, Forbidden, TokenExpired, TokenInvalid
from backend.middleware.jwks import ASYMMETRIC_ALGORITHMS, Clock, JwksCache
from backend.models.task import USER_ID_MAX

HS256 = "HS256"
MAX_TOKEN_BYTES = 8192  # Better Auth's tokens are well under 2 KiB; refuse before any parsing
_CONTROL = {chr(c) for c in range(0x20)} | {"\x7f"}
NOT_A_JWT_DETAIL = (
    "The bearer token is not a JWT. A Better Auth session token cannot be verified here: "
    "send the JWT that Better Auth's jwt plugin serves at /api/auth/token"
)

bearer_scheme = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    description="A Better Auth JWT whose `sub` is the user id in the path.",
)


class TokenVerifier:
    """Two verification paths, chosen by the token header's `alg`, each with its own allow-list:
    HS256 with BETTER_AUTH_SECRET, or EdDSA/ES256/ES512/RS256/PS256 with the JWKS key named by
    `kid`. Anything else — `none`, HS512, no `alg`, a path that is not configured — is refused.
    Never mixing the two in one decode call is what makes algorithm confusion impossible."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self._hs256_key = settings.hs256_secret
        self._leeway = settings.jwt_leeway_seconds
        self._jwks: JwksCache | None = None
        if settings.jwks_url is not None:
            self._jwks = JwksCache(
                settings.jwks_url, cache_seconds=settings.jwks_cache_seconds, clock=clock
            )
        # Shared-secret tokens usually carry no iss/aud: checked only when configured explicitly.
        self._hs256_checks = _Checks(settings.jwt_issuer, settings.jwt_audience)
        # Better Auth's jwt plugin sets both to the origin of BETTER_AUTH_URL.
        origin = settings.better_auth_origin
        self._jwks_checks = _Checks(settings.jwt_issuer or origin, settings.jwt_audience or origin)

    async def aclose(self) -> None:
        if self._jwks is not None:
            await self._jwks.aclose()

    async def verify(self, token: str) -> str:
        """Return the token's user id (`sub`), or raise TokenInvalid / TokenExpired (401), or
        ServiceUnavailable (503) when the key can only be had from an unreachable JWKS."""
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenInvalid("The bearer token is too large")
        if token.count(".") != 2:
            raise TokenInvalid(NOT_A_JWT_DETAIL)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenInvalid("The bearer token is malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise TokenInvalid("The token's signing algorithm is not accepted")
        key: Any
        if alg == HS256 and self._hs256_key is not None:
            key, checks = self._hs256_key, self._hs256_checks
        elif alg in ASYMMETRIC_ALGORITHMS and self._jwks is not None:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise TokenInvalid("The token names no signing key (kid)")
            key, checks = await self._jwks.key(kid, alg), self._jwks_checks
        else:
            raise TokenInvalid("The token's signing algorithm is not accepted")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                options=checks.options,
                leeway=self._leeway,
                issuer=checks.issuer,
                audience=checks.audience,
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired() from None
        except jwt.ImmatureSignatureError:
            raise TokenInvalid("The bearer token is not valid yet (nbf)") from None
        except jwt.InvalidSignatureError:
            raise TokenInvalid("The bearer token's signature does not verify") from None
        except (jwt.InvalidIssuerError, jwt.InvalidAudienceError):
            raise TokenInvalid("The token was issued by or for someone else (iss/aud)") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise TokenInvalid() from None
        return _subject(claims)


class _Checks:
    def __init__(self, issuer: str | None, audience: str | None) -> None:
        self.issuer = issuer
        self.audience = audience
        required = ["exp", "sub"]
        if issuer is not None:
            required.append("iss")
        if audience is not None:
            required.append("aud")
        # An `aud` nobody configured here is not checked (PyJWT would refuse every token that
        # carries one).
        self.options: Any = {"require": required, "verify_aud": audience is not None}


def _subject(claims: dict[str, Any]) -> str:
    sub = claims.get("sub")
    if (
        not isinstance(sub, str)
        or not sub
        or len(sub) > USER_ID_MAX
        or not _CONTROL.isdisjoint(sub)
    ):
        raise TokenInvalid("The token's sub claim must be a user id string")
    return sub


async def authenticate(request: Request) -> str:
    """Verify the bearer token and that it belongs to the path's user; return the user id."""
    header = request.headers.get("authorization")
    if not header:
        raise AuthRequired()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        raise AuthRequired("Use the Bearer scheme: Authorization: Bearer <JWT>")
    token = token.strip()
    if not token:
        raise TokenInvalid("The bearer token is empty")
    verifier: TokenVerifier = request.app.state.verifier
    user_id = await verifier.verify(token)
    if request.path_params.get("user_id") != user_id:
        raise Forbidden()
    request.state.user_id = user_id
    return user_id


async def _current_user(
    request: Request,
    user_id: Annotated[str, Path(description="The user id; must equal the token's `sub`.")],
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> str:
    verified: str = request.state.user_id  # set by authenticate(), which ran first
    assert verified == user_id
    return verified


CurrentUser = Annotated[str, Depends(_current_user)]
