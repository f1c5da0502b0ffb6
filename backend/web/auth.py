"""The first step of a user's request: who is calling, and whether the path is theirs.

`authenticate(request)` runs before FastAPI reads the body or validates anything (TaskRoute
calls it), so an unauthenticated request is a 401 whatever else is wrong with it:
  - no `Authorization: Bearer …` header        → 401 AUTH_REQUIRED  (tokens in the query
    string are ignored)
  - a token that fails verification            → 401 TOKEN_INVALID / TOKEN_EXPIRED
    (middleware/jwt_auth.py's TokenVerifier)
  - the token's `sub` ≠ the path's `{user_id}` → 403 FORBIDDEN
Every refusal counts against the client address's budget (RATE_LIMIT_ANONYMOUS, 429 beyond it:
middleware/rate_limit.py) and is logged at INFO on "backend.auth" with its route template and
reason; the token, the path and user ids never are. An accepted token leaves its user on
`request.state.user_id` and its `exp` on `request.state.token_expires` (an event stream ends
when its token does); `verified_user` reads the user back, and fails closed.
"""

import logging

from starlette.requests import Request

from backend.errors import AppError, AuthError, AuthRequired, Forbidden, TokenInvalid
from backend.metrics import UNMATCHED
from backend.middleware.jwt_auth import VerifiedToken
from backend.web.state import app_state

logger = logging.getLogger("backend.auth")


class OutsidePipeline(RuntimeError):
    """A value only TaskRoute's pipeline sets was asked for by a route it does not serve: a bug
    in the route's declaration, answered 500, never served on trust."""


async def authenticate(request: Request) -> str:
    """Verify the bearer token and that it belongs to the path's user; return the user id.
    A refusal (401, 403) counts against the client address's budget (429 beyond it)."""
    try:
        token = await _bearer_token(request)
    except AuthError as refusal:
        await _refused(request, refusal, refusal.detail)
        raise
    user_id = token.user_id
    if request.path_params.get("user_id") != user_id:
        forbidden = Forbidden()
        await _refused(request, forbidden, "the token's sub is not the path's user")
        raise forbidden
    request.state.user_id = user_id
    request.state.token_expires = token.expires
    return user_id


def verified_user(request: Request) -> str:
    """The user `authenticate` verified for this request, who is the path's user; raises when
    there is none (the route is not served by the pipeline) or when they differ."""
    user_id = getattr(request.state, "user_id", None)
    if user_id is None:
        raise OutsidePipeline(
            f"{request.method} {getattr(request.scope.get('route'), 'path', UNMATCHED)} asks "
            "for the verified user, but no TaskRoute authenticated the request"
        )
    if user_id != request.path_params.get("user_id"):
        raise Forbidden()
    return str(user_id)


async def _refused(request: Request, refusal: AppError, reason: str) -> None:
    """Count the refusal against the client's address, which beyond RATE_LIMIT_ANONYMOUS turns
    it into a 429 (rate_limit.py logs that once), else log it. The line names the route's
    template, never the path, which holds user ids and, percent-decoded, anything a client
    likes; and the reason names no user."""
    instead = await app_state(request).rate_limiter.refusal_for(request.scope)
    if instead is not None:
        raise instead from None
    route = getattr(request.scope.get("route"), "path", UNMATCHED)
    logger.info(
        "%s %s refused: %d %s: %s", request.method, route, refusal.status_code, refusal.code, reason
    )


async def _bearer_token(request: Request) -> VerifiedToken:
    header = request.headers.get("authorization")
    if not header:
        raise AuthRequired()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        raise AuthRequired("Use the Bearer scheme: Authorization: Bearer <JWT>")
    token = token.strip()
    if not token:
        raise TokenInvalid("The bearer token is empty")
    return await app_state(request).verifier.verified(token)
