"""Who is calling: the bearer JWT, verified. The request side (the header, the path's user,
the refusals) is web/auth.py's; this is the token side, which any entry point can use.

Tokens (see TokenVerifier): HS256 signed with BETTER_AUTH_SECRET, or Better Auth's jwt-plugin
tokens verified with its JWKS (middleware/jwks.py). The signature first, then the claims:
`exp` and `sub` required, `exp`/`nbf`/`iat` numbers, bounded leeway, `iss`/`aud` checked when
configured or known. A refusal says which claim or which setting is wrong.
"""

import json
import math
import time
from collections.abc import Callable
from pathlib import Path as FilePath
from typing import Any, NamedTuple

import jwt

from backend.config import Settings
from backend.errors import TokenExpired, TokenInvalid
from backend.middleware.jwks import (
    ASYMMETRIC_ALGORITHMS,
    FETCH_TIMEOUT_SECONDS,
    Clock,
    JwksCache,
)
from backend.models.task import CONTROL_CHARACTER, USER_ID_MAX

HS256 = "HS256"
VERIFIED_TOKENS_KEPT = 4096  # the most recent tokens (a few MB at most) kept verified
VERIFIED_TOKEN_SECONDS = 60.0
MAX_TOKEN_BYTES = 8192  # Better Auth's tokens are well under 2 KiB; refuse before any parsing
MAX_SHOWN = 100  # characters of a token's own value quoted back in a detail or a log line
ACCEPTED_ALGORITHMS = ", ".join([HS256, *sorted(ASYMMETRIC_ALGORITHMS, key=str.lower)])
NOT_A_JWT_DETAIL = (
    "The bearer token is not a JWT. A Better Auth session token cannot be verified here: "
    "send the JWT that Better Auth's jwt plugin serves at /api/auth/token"
)
HS256_NOT_CONFIGURED = (
    "The token is signed with HS256, which needs BETTER_AUTH_SECRET on the server; this "
    "service is configured for Better Auth's JWKS (asymmetric tokens) only"
)
# PyJWT checks only the signature: it reads `exp`/`nbf`/`iat` with int() (so "1700000000" and
# true pass), reports a future `iat` as an immature token, and its errors do not carry the
# values a useful message needs. The claims are checked below instead (_checked_subject).
SIGNATURE_ONLY: Any = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_iss": False,
    "verify_aud": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
}
_MISSING = {
    "exp": "The token has no exp claim: it must say when it expires",
    "sub": "The token has no sub claim: it must name the user (their id)",
}
_JSON_TYPES = {str: "a string", bool: "a boolean", list: "an array", dict: "an object"}


class TokenVerifier:
    """Two verification paths, chosen by the token header's `alg`, each with its own allow-list:
    HS256 with BETTER_AUTH_SECRET, or EdDSA/ES256/ES512/RS256/PS256 with the JWKS key named by
    `kid`. Anything else — `none`, HS512, no `alg`, a path that is not configured — is refused.
    Never mixing the two in one decode call is what makes algorithm confusion impossible."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        jwks_timeout: float = FETCH_TIMEOUT_SECONDS,
        wall_clock: Callable[[], float] = time.time,
        development_secret: FilePath | None = None,
    ) -> None:
        """`development_secret`: the file the HS256 secret was read from, when it is the
        development secret (a refused signature then says where the service's secret lives)."""
        self._now = wall_clock
        if development_secret is not None:
            self._bad_hs256 = (
                "The bearer token's signature does not verify with this service's development "
                f"secret (in {development_secret}, made when the service first started there): "
                "sign with it (`taskapi token`, run where the service runs, or DATA_DIR set to "
                "that folder), or set the same BETTER_AUTH_SECRET for Better Auth and this service"
            )
        else:
            self._bad_hs256 = (
                "The bearer token's signature does not verify with BETTER_AUTH_SECRET: sign it "
                "with the same secret as this service's BETTER_AUTH_SECRET (Better Auth's, as "
                "text)"
            )
        # Tokens verified lately, least recently used first. A client sends one token for many
        # requests: its signature and claims are checked once, not on every request.
        self._verified: dict[tuple[str, str | None], VerifiedToken] = {}
        self._hs256_key = settings.hs256_secret
        self._leeway = settings.jwt_leeway_seconds
        self._jwks: JwksCache | None = None
        if settings.jwks_url is not None:
            self._jwks = JwksCache(
                settings.jwks_url,
                cache_seconds=settings.jwks_cache_seconds,
                clock=clock,
                timeout=jwks_timeout,
            )
        # Shared-secret tokens usually carry no iss/aud: checked only when configured explicitly.
        issuer = _Expected(settings.jwt_issuer, "JWT_ISSUER")
        audience = _Expected(settings.jwt_audience, "JWT_AUDIENCE")
        self._hs256_checks = _Checks(issuer, audience)
        # Better Auth's jwt plugin sets both to the origin of BETTER_AUTH_URL.
        origin = _Expected(settings.better_auth_origin, "the origin of BETTER_AUTH_URL")
        self._jwks_checks = _Checks(
            issuer if issuer.value is not None else origin,
            audience if audience.value is not None else origin,
        )

    async def aclose(self) -> None:
        if self._jwks is not None:
            await self._jwks.aclose()

    async def verify(self, token: str) -> str:
        """Return the token's user id (`sub`), or raise TokenInvalid / TokenExpired (401), or
        ServiceUnavailable (503) when the key can only be had from an unreachable JWKS."""
        return (await self.verified(token)).user_id

    async def verified(self, token: str, *, audience: str | None = None) -> "VerifiedToken":
        """As `verify`, with what else the service needs of the token: its expiry.
        `audience`: a token issued for another resource than the web app — the MCP server's
        MCP_AUDIENCE — whose `aud` must include it instead of the app's own audience."""
        now = self._now()
        entry = (token, audience)
        known = self._verified.pop(entry, None)
        if known is not None and await self._still_valid(known, now):
            self._verified[entry] = known  # now the most recently used
            return known
        verified = await self._verify(token, now, audience)
        if len(self._verified) >= VERIFIED_TOKENS_KEPT:
            del self._verified[next(iter(self._verified))]  # the least recently used
        self._verified[entry] = verified
        return verified

    async def _still_valid(self, known: "VerifiedToken", now: float) -> bool:
        if now >= known.until:
            return False
        if known.kid is None:
            return True
        # A JWKS token only while its key is the one the JWKS cache holds; the lookup also
        # starts the cache's refresh when it is due, as a full check would.
        assert self._jwks is not None
        return await self._jwks.key(known.kid, known.alg) is known.key

    async def _verify(self, token: str, now: float, audience: str | None) -> "VerifiedToken":
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenInvalid("The bearer token is too large")
        if token.count(".") != 2:
            raise TokenInvalid(NOT_A_JWT_DETAIL)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenInvalid("The bearer token is malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise TokenInvalid("The token's header names no signing algorithm (alg)")
        key: Any
        key_id: str | None = None
        if alg == HS256:
            if self._hs256_key is None:
                raise TokenInvalid(HS256_NOT_CONFIGURED)
            key, checks = self._hs256_key, self._hs256_checks
        elif alg in ASYMMETRIC_ALGORITHMS:
            if self._jwks is None:
                raise TokenInvalid(
                    f"The token is signed with {alg}, which needs Better Auth's JWKS on the "
                    "server: set BETTER_AUTH_URL (or JWT_JWKS_URL)"
                )
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise TokenInvalid("The token names no signing key (kid)")
            key, checks = await self._jwks.key(kid, alg), self._jwks_checks
            key_id = kid
        else:
            raise TokenInvalid(
                f"The token's signing algorithm {_shown(alg)} is not accepted "
                f"(accepted: {ACCEPTED_ALGORITHMS})"
            )
        try:
            claims = jwt.decode(token, key, algorithms=[alg], options=SIGNATURE_ONLY)
        except jwt.InvalidSignatureError:
            if alg == HS256:
                raise TokenInvalid(self._bad_hs256) from None
            raise TokenInvalid("The bearer token's signature does not verify") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise TokenInvalid("The bearer token is malformed") from None
        if audience is not None:
            checks = checks._replace(audience=_Expected(audience, "MCP_AUDIENCE"))
        user_id = _checked_subject(claims, checks, self._leeway, now)
        # Kept until it expires (with the leeway), and at most a minute. (exp may be any JSON
        # number: compared, never converted, it cannot overflow.)
        limit = now + VERIFIED_TOKEN_SECONDS
        until = limit if claims["exp"] >= limit else claims["exp"] + self._leeway
        return VerifiedToken(user_id, until, key_id, alg, key, claims["exp"])


class VerifiedToken(NamedTuple):
    user_id: str
    until: float  # the answer holds until then
    kid: str | None  # a JWKS key's id: the key must still be the cache's; None for HS256
    alg: str
    key: Any
    # The `exp` claim: any JSON number, however large (compare it; float() could overflow).
    expires: float


class _Expected(NamedTuple):
    value: str | None  # None: not checked
    source: str  # where the value comes from, for the message


class _Checks(NamedTuple):
    issuer: _Expected
    audience: _Expected


def _checked_subject(claims: dict[str, Any], checks: _Checks, leeway: float, now: float) -> str:
    """The signature is valid: check the claims, each refusal naming the claim at fault."""
    for name, message in _MISSING.items():
        if claims.get(name) is None:
            raise TokenInvalid(message)
    for name, expected in (("iss", checks.issuer), ("aud", checks.audience)):
        if expected.value is not None and claims.get(name) is None:
            raise TokenInvalid(
                f"The token has no {name} claim; this service expects {_shown(expected.value)} "
                f"(from {expected.source})"
            )
    for name in ("exp", "nbf", "iat"):
        if name in claims and not _is_numeric_date(claims[name]):
            raise TokenInvalid(
                f"The token's {name} claim must be a number (seconds since 1970-01-01 UTC), "
                f"not {_json_type(claims[name])}"
            )
    if claims["exp"] <= now - leeway:
        raise TokenExpired()
    if claims.get("nbf", now) > now + leeway:
        raise TokenInvalid("The bearer token is not valid yet (its nbf is in the future)")
    # A token issued in the future means the auth server's clock is ahead of this one by more
    # than the leeway — and then its tokens live longer here than it meant. Refused (as PyJWT
    # does), with a message that points at the clocks.
    if claims.get("iat", now) > now + leeway:
        raise TokenInvalid(
            "The token's iat (issued at) is in the future: the clocks of the auth server and "
            "of this service disagree"
        )
    issuer, audience = checks
    if issuer.value is not None and claims["iss"] != issuer.value:
        raise _mismatch("iss", claims["iss"], issuer)
    if audience.value is not None and not _has_audience(claims["aud"], audience.value):
        raise _mismatch("aud", claims["aud"], audience)
    return _subject(claims["sub"])


def _mismatch(name: str, received: Any, expected: _Expected) -> TokenInvalid:
    # Both values are public (the token's holder has one, the auth server's URL is the other):
    # a frontend on localhost against BETTER_AUTH_URL=http://127.0.0.1… is found at a glance.
    return TokenInvalid(
        f"The token's {name} is {_shown(received)} but this service expects "
        f"{_shown(expected.value)} (from {expected.source})"
    )


def _has_audience(aud: Any, expected: str) -> bool:
    audiences = [aud] if isinstance(aud, str) else aud
    return (
        isinstance(audiences, list)
        and all(isinstance(a, str) for a in audiences)
        and expected in audiences
    )


def _subject(sub: Any) -> str:
    if not isinstance(sub, str):
        raise TokenInvalid(
            f"The token's sub claim must be a string (the user id), not {_json_type(sub)}"
        )
    if not sub:
        raise TokenInvalid("The token's sub claim is empty")
    if len(sub) > USER_ID_MAX:
        raise TokenInvalid(f"The token's sub claim is longer than {USER_ID_MAX} characters")
    if CONTROL_CHARACTER.search(sub):
        raise TokenInvalid("The token's sub claim contains a control character")
    return sub


def _is_numeric_date(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    # Any JSON integer, however long (math.isfinite would overflow on a 400-digit one).
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)  # NaN, Infinity: Python's JSON reader accepts them
    return _JSON_TYPES.get(type(value), "a number")


def _shown(value: Any) -> str:
    """A value from a token, fit to quote in a response or a log line: as JSON, with anything
    unprintable escaped and cut short."""
    return _printable(json.dumps(value, ensure_ascii=False))


def _printable(text: str) -> str:
    # No line breaks, no control characters, no bidi or zero-width tricks in a log line; and
    # no novel from a hostile token.
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"
