"""The public keys of Better Auth's `jwt` plugin, fetched from its JWKS and cached.

- Fetched with httpx (async: the event loop never waits on a socket), bounded by a short
  timeout and a size limit, and kept for JWKS_CACHE_SECONDS.
- A token whose `kid` is not in the cache triggers a refetch, so a freshly rotated key is
  accepted; but at most one fetch runs at a time (concurrent requests share it) and at most one
  starts per `min_refetch_seconds`, so a flood of made-up `kid`s cannot become a flood of
  fetches. A request that arrives too soon after a fetch waits for the next one (a few seconds
  at most) instead of being refused: the key may have been published since.
- When the JWKS cannot be fetched, keys already cached keep working (even past their cache
  time); a token whose key is not cached gets 503 — the auth server is down, the token may be
  fine — never a 500 and never a hang.
- Keys that do not fit the algorithm they would verify (wrong type or curve, RSA under 2048
  bits, an `alg` of their own that differs) are never used; a `kid` that names more than one
  fitting key is ambiguous and refused.
"""

import asyncio
import json
import logging
import time
from typing import Any

import httpx
import jwt

from backend.errors import ServiceUnavailable, TokenInvalid

logger = logging.getLogger("backend.jwks")

MAX_JWKS_BYTES = 256 * 1024
MAX_KEYS = 100
FETCH_TIMEOUT_SECONDS = 3.0
MIN_RSA_BITS = 2048

# The asymmetric algorithms Better Auth's jwt plugin signs with, and the keys each may use.
_FITS: dict[str, tuple[str, set[str] | None]] = {
    "EdDSA": ("OKP", {"Ed25519", "Ed448"}),
    "ES256": ("EC", {"P-256"}),
    "ES512": ("EC", {"P-521"}),
    "RS256": ("RSA", None),
    "PS256": ("RSA", None),
}
ASYMMETRIC_ALGORITHMS = frozenset(_FITS)


def _fits(jwk: dict[str, Any], alg: str) -> bool:
    kty, curves = _FITS[alg]
    if jwk.get("kty") != kty or jwk.get("alg", alg) != alg:
        return False
    if jwk.get("use", "sig") != "sig":
        return False
    return curves is None or jwk.get("crv") in curves


class JwksCache:
    def __init__(
        self,
        url: str,
        *,
        cache_seconds: float,
        min_refetch_seconds: float = 3.0,
        timeout: float = FETCH_TIMEOUT_SECONDS,
    ) -> None:
        self.url = url
        self._cache_seconds = cache_seconds
        self._min_refetch = min_refetch_seconds
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._keys: dict[str, list[dict[str, Any]]] = {}
        self._built: dict[tuple[str, str], jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch started, successful or not
        self._failed = False  # the last fetch failed
        self._inflight: asyncio.Task[None] | None = None
        self.fetches = 0  # how many fetches were started (for tests and logs)

    async def aclose(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def key(self, kid: str, alg: str) -> jwt.PyJWK:
        """The key that verifies `alg` signatures for `kid`, fetching the JWKS when needed."""
        now = time.monotonic()
        if kid not in self._keys:
            wait = self._until_fetch_allowed(now)
            if wait > 0:
                # A fetch just ran: rather than refuse a key that may have been published since
                # (a rotation), wait for the next allowed fetch; waiting requests share it.
                await asyncio.sleep(wait)
            if kid not in self._keys and self._may_fetch(time.monotonic()):
                await self._fetch_shared()
        elif self._stale(now) and self._inflight is None and self._may_fetch(now):
            self._start_fetch()  # refresh in the background; the cached key serves meanwhile
        candidates = [jwk for jwk in self._keys.get(kid, ()) if _fits(jwk, alg)]
        if not candidates:
            if kid not in self._keys and self._failed:
                raise ServiceUnavailable(
                    "The signing keys cannot be fetched from the auth server right now"
                )
            raise TokenInvalid("The token is signed with a key this service does not know")
        if len(candidates) > 1:
            raise TokenInvalid("The token's key id names more than one key")
        return self._build(kid, alg, candidates[0])

    def _stale(self, now: float) -> bool:
        return self._fetched_at is None or now - self._fetched_at >= self._cache_seconds

    def _may_fetch(self, now: float) -> bool:
        return self._until_fetch_allowed(now) <= 0

    def _until_fetch_allowed(self, now: float) -> float:
        if self._inflight is not None or self._attempted_at is None:
            return 0.0  # join the fetch under way, or make the first one
        return self._attempted_at + self._min_refetch - now

    def _start_fetch(self) -> asyncio.Task[None]:
        if self._inflight is None:
            self._attempted_at = time.monotonic()
            self._inflight = asyncio.create_task(self._fetch())
            self._inflight.add_done_callback(self._fetch_done)
        return self._inflight

    async def _fetch_shared(self) -> None:
        # shield: a request that is cancelled must not cancel the fetch the others wait for
        await asyncio.shield(self._start_fetch())

    def _fetch_done(self, _: asyncio.Task[None]) -> None:
        self._inflight = None

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            async with asyncio.timeout(self._timeout):
                keys = await self._download()
        except Exception as exc:  # any failure means "unreachable" and is handled alike
            self._failed = True
            logger.warning("JWKS fetch from %s failed: %s", self.url, type(exc).__name__)
            return
        self._keys = keys
        self._built = {}
        self._fetched_at = time.monotonic()
        self._failed = False

    async def _download(self) -> dict[str, list[dict[str, Any]]]:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
        async with self._client.stream(
            "GET", self.url, headers={"Accept": "application/json"}
        ) as r:
            r.raise_for_status()
            body = b""
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("JWKS too large")
        document = json.loads(body)
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWKS document")
        keys: dict[str, list[dict[str, Any]]] = {}
        for jwk in document["keys"][:MAX_KEYS]:
            # Keys are chosen by the token's `kid`; a key without one can never be chosen.
            if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str):
                keys.setdefault(jwk["kid"], []).append(jwk)
        return keys

    def _build(self, kid: str, alg: str, jwk: dict[str, Any]) -> jwt.PyJWK:
        built = self._built.get((kid, alg))
        if built is None:
            try:
                built = jwt.PyJWK(jwk, algorithm=alg)
            except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                raise TokenInvalid("The token's key in the JWKS is not usable") from None
            size = getattr(built.key, "key_size", None)
            if _FITS[alg][0] == "RSA" and (size is None or size < MIN_RSA_BITS):
                raise TokenInvalid("The token's RSA key is too small")
            self._built[(kid, alg)] = built
        return built
