"""The public keys of Better Auth's `jwt` plugin, fetched from its JWKS and cached.

- Fetched with httpx (async: the event loop never waits on a socket), bounded by a size limit
  and by one deadline for the whole fetch, and kept for JWKS_CACHE_SECONDS.
- A token whose `kid` is not in the cache triggers a refetch, so a freshly rotated key is
  accepted; but at most one fetch runs at a time (concurrent requests share it) and the next
  one starts no sooner than `min_refetch_seconds` after it ended, so a flood of made-up `kid`s
  cannot become a flood of fetches. A request that arrives too soon after a successful fetch
  waits for the next one (a few seconds at most) instead of being refused: the key may have
  been published since.
- When the JWKS cannot be fetched, keys already cached keep working (even past their cache
  time); a token whose key is not cached gets 503 — the auth server is down, the token may be
  fine — never a 500 and never a long wait: while the last fetch has failed, such a token is
  answered at once. Only the first such request after each `min_refetch_seconds` tries the JWKS
  again (and waits for that one attempt, bounded by the fetch timeout), so the service sees the
  auth server come back without anyone being held for the throttle.
- Keys that do not fit the algorithm they would verify (wrong type or curve, RSA under 2048
  bits, an `alg` of their own that differs) are never used; a `kid` that names more than one
  fitting key is ambiguous and refused.
- All of this is timed by a `Clock` (monotonic `now()`, async `sleep()`), a parameter, so that
  the tests decide when time passes.
"""

import asyncio
import json
import logging
import math
import time
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

import httpx
import jwt

from backend.errors import ServiceUnavailable, TokenInvalid

logger = logging.getLogger("backend.jwks")

MAX_JWKS_BYTES = 256 * 1024
MAX_KEYS = 100
FETCH_TIMEOUT_SECONDS = 3.0
MIN_REFETCH_SECONDS = 3.0
MIN_RSA_BITS = 2048
UNAVAILABLE_DETAIL = "The signing keys cannot be fetched from the auth server right now"

T = TypeVar("T")

# The asymmetric algorithms Better Auth's jwt plugin signs with, and the keys each may use.
_FITS: dict[str, tuple[str, set[str] | None]] = {
    "EdDSA": ("OKP", {"Ed25519", "Ed448"}),
    "ES256": ("EC", {"P-256"}),
    "ES512": ("EC", {"P-521"}),
    "RS256": ("RSA", None),
    "PS256": ("RSA", None),
}
ASYMMETRIC_ALGORITHMS = frozenset(_FITS)


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


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
        min_refetch_seconds: float = MIN_REFETCH_SECONDS,
        timeout: float = FETCH_TIMEOUT_SECONDS,
        clock: Clock | None = None,
    ) -> None:
        self.url = url
        self._cache_seconds = cache_seconds
        self._min_refetch = min_refetch_seconds
        self._timeout = timeout
        self._clock: Clock = clock or MonotonicClock()
        self._client: httpx.AsyncClient | None = None
        self._keys: dict[str, list[dict[str, Any]]] = {}
        self._built: dict[tuple[str, str], jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._ended_at: float | None = None  # last fetch ended, successful or not
        self._failed = False  # the last fetch failed: the JWKS is known to be unreachable
        self._inflight: asyncio.Task[None] | None = None

    async def aclose(self) -> None:
        inflight = self._inflight
        if inflight is not None:
            inflight.cancel()
            await asyncio.wait([inflight])
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def key(self, kid: str, alg: str) -> jwt.PyJWK:
        """The key that verifies `alg` signatures for `kid`, fetching the JWKS when needed."""
        if kid not in self._keys:
            await self._look_for(kid)
        elif self._stale() and self._inflight is None and self._may_fetch():
            self._start_fetch()  # refresh in the background; the cached key serves meanwhile
        candidates = [jwk for jwk in self._keys.get(kid, ()) if _fits(jwk, alg)]
        if not candidates:
            if kid not in self._keys and self._failed:
                # A client that obeys Retry-After comes back when a fetch may be tried again.
                wait = max(self._until_fetch_allowed(), self._min_refetch if self._inflight else 0)
                raise ServiceUnavailable(UNAVAILABLE_DETAIL, retry_after=max(1, math.ceil(wait)))
            raise TokenInvalid(
                f"The token's signing key (its kid) is not in the JWKS at {self.url}"
            )
        if len(candidates) > 1:
            raise TokenInvalid("The token's key id names more than one key")
        return self._build(kid, alg, candidates[0])

    async def _look_for(self, kid: str) -> None:
        if not self._failed and not self._may_fetch():
            # A fetch ran moments ago: rather than refuse a key that may have been published
            # since (a rotation), wait for the next allowed fetch; waiting requests share it.
            await self._clock.sleep(self._until_fetch_allowed())
            if kid in self._keys:
                return
        if self._inflight is None:
            if self._may_fetch():
                await self._fetch_shared()
        elif not self._failed:
            await asyncio.shield(self._inflight)  # join the fetch under way
        # (A retry of an unreachable JWKS under way is not waited for: 503 at once.)

    def _stale(self) -> bool:
        return (
            self._fetched_at is None or self._clock.now() - self._fetched_at >= self._cache_seconds
        )

    def _may_fetch(self) -> bool:
        return self._until_fetch_allowed() <= 0

    def _until_fetch_allowed(self) -> float:
        if self._inflight is not None or self._ended_at is None:
            return 0.0  # join the fetch under way, or make the first one
        # Counted from the end, not the start: a JWKS that hangs until the deadline is given
        # the whole interval to recover, as one that refuses at once is.
        return self._ended_at + self._min_refetch - self._clock.now()

    def _start_fetch(self) -> asyncio.Task[None]:
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._fetch())
        return self._inflight

    async def _fetch_shared(self) -> None:
        # shield: a request that is cancelled must not cancel the fetch the others wait for
        await asyncio.shield(self._start_fetch())

    async def _fetch(self) -> None:
        # The outcome, the end time and `_inflight` change in one step after the download (no
        # await in between): no request sees a fetch ended without its outcome — nor does a
        # test that watches the fetch's deadline leave the clock.
        try:
            keys = await self._within_deadline(self._download())
        except Exception as exc:  # any failure means "unreachable" and is handled alike
            self._failed = True
            logger.warning("JWKS fetch from %s failed: %s", self.url, type(exc).__name__)
        else:
            if self._failed:
                logger.info("JWKS at %s is reachable again", self.url)
            self._keys = keys
            self._built = {}
            self._fetched_at = self._clock.now()
            self._failed = False
        finally:
            self._ended_at = self._clock.now()
            self._inflight = None

    async def _within_deadline(self, work: Coroutine[Any, Any, T]) -> T:
        # One deadline for the whole fetch (connect, headers and a body that may trickle in; a
        # per-read timeout would restart with every byte), measured on the cache's clock.
        task = asyncio.create_task(work)
        deadline = asyncio.create_task(self._clock.sleep(self._timeout))
        deadline.add_done_callback(lambda _: task.cancel())
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not deadline.done() or (current is not None and current.cancelling()):
                raise  # the fetch itself is being cancelled (aclose), not timed out
            raise TimeoutError(f"no JWKS within {self._timeout} s") from None
        finally:
            deadline.cancel()

    async def _download(self) -> dict[str, list[dict[str, Any]]]:
        if self._client is None:
            # No timeout of httpx's own: _within_deadline bounds the whole fetch, on the clock.
            self._client = httpx.AsyncClient(timeout=None, follow_redirects=False)  # noqa: S113
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
