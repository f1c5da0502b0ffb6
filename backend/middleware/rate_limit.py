"""The rate limits, counted before the body is read:

- per user: RATE_LIMIT requests a minute, counted after authentication (the key is the token's
  user). An authenticated request counts against this one only.
- per client address: RATE_LIMIT_ANONYMOUS requests a minute that are refused as
  unauthenticated or forbidden (401, 403: web/auth.py) or that no route takes (404, 405:
  web/errors.py), answered 429 instead beyond it. Such requests cost the service something (a
  token's signature, a JWKS lookup, the router) and, keyed by no user, counted against nothing
  before. The key is the address uvicorn gives (scope["client"]; with `--proxy-headers`, the
  one the trusted proxy names); an IPv6 address counts by its /64, which one host is usually
  given whole, so that walking through it does not walk around the bound. A request from no
  known address (a Unix socket without proxy headers) is not counted, nor are the probes
  (/health, /ready, /metrics).

A fixed one-minute window of `limits` (its asyncio storage): the window opens at a key's first
request and closes a minute later. The count lives in this process's memory, or with
RATE_LIMIT_STORAGE=redis://… in Redis, where one atomic INCR per request makes every worker and
machine share one budget.

Redis unreachable or hung: a request waits at most REDIS_TIMEOUT_SECONDS for it (one deadline
over the whole exchange, and the client neither retries nor waits longer on its own), then the
limit fails over to this process's memory (each worker then counts on its own), with a warning,
and Redis is tried again after RETRY_STORAGE_SECONDS (a long outage logs one line per worker
every few seconds; requests do not each wait on a dead Redis). Refusing every request (503)
because the limiter's store is down would turn an outage of an auxiliary service into an outage
of the API; the task quota, which protects the database, is enforced by the database and does
not depend on Redis.
"""

import asyncio
import ipaddress
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coredis.retry import NoRetryPolicy
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, Storage
from limits.errors import StorageError
from limits.storage import storage_from_string
from starlette.types import Scope

from backend.config import Settings
from backend.errors import RATE_LIMIT_HEADERS, RateLimited

logger = logging.getLogger("backend.rate_limit")

# Probes of load balancers and scrapers: they count against no rate limit (and their access
# lines are DEBUG: web/middleware.py).
PROBE_PATHS = frozenset({"/health", "/ready", "/metrics"})

RETRY_STORAGE_SECONDS = 5.0  # after Redis failed, how long memory counts before Redis is tried
REDIS_TIMEOUT_SECONDS = 1.0  # a request waits at most this long for Redis
IPV6_PREFIX = 64  # an IPv6 client counts by its network of this size
MAX_ADDRESS_KEY = 64  # characters of an address that is no IP address (from a proxy's header)
ADDRESS_BUDGET = (
    "unauthenticated or refused requests a minute from this address (RATE_LIMIT_ANONYMOUS)"
)


_RAW_NAMES = tuple(name.lower().encode() for name in RATE_LIMIT_HEADERS)


@dataclass(frozen=True, slots=True)
class Quota:
    """Where a user stands after a request: RateLimit-* headers, and whether it was refused."""

    limit: int
    remaining: int
    reset: int  # seconds until the window closes, at least 1
    allowed: bool

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        limit, remaining, reset = _RAW_NAMES
        return [
            (limit, b"%d" % self.limit),
            (remaining, b"%d" % self.remaining),
            (reset, b"%d" % self.reset),
        ]


def storage_uri(url: str) -> str:
    """RATE_LIMIT_STORAGE (which Settings has checked) as limits' asyncio storage wants it:
    redis://… → async+redis://…."""
    scheme, _, rest = url.partition("://")
    return f"async+{scheme.lower()}://{rest}"


def address_key(host: str) -> str:
    """The budget a client address counts against: an IPv4 address itself; an IPv6 address its
    /64 (an IPv4 address mapped into IPv6, that IPv4 address); anything else (a proxy's header
    may name no address) its text, cut short."""
    if ":" not in host:
        return host[:MAX_ADDRESS_KEY]
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        return host[:MAX_ADDRESS_KEY]
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))


class RateLimiter:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.item = RateLimitItemPerMinute(max(settings.rate_limit, 1))
        self.enabled = settings.rate_limit > 0
        self.address_item = RateLimitItemPerMinute(max(settings.rate_limit_anonymous, 1))
        self.address_enabled = settings.rate_limit_anonymous > 0
        self.memory = MemoryStorage()
        self.shared: Storage | None = None
        uri = storage_uri(settings.rate_limit_storage)
        if not uri.startswith("async+memory"):
            client: dict[str, Any] = {  # coredis.Redis's options
                "connect_timeout": REDIS_TIMEOUT_SECONDS,
                "stream_timeout": REDIS_TIMEOUT_SECONDS,
                # Its default tries each command twice more after a timeout: a hung Redis would
                # cost a request several times the deadline of _count (bench/README.md).
                "retry_policy": NoRetryPolicy(),
            }
            storage = storage_from_string(uri, wrap_exceptions=True, **client)
            assert isinstance(storage, Storage)
            self.shared = storage
        self._clock = clock
        self._shared_down_until = 0.0

    async def hit(self, user_id: str) -> Quota | None:
        """Count one request of this user; None when the limit is off."""
        if not self.enabled:
            return None
        count, reset = await self._count(self.item, self.item.key_for("user", user_id))
        limit = self.item.amount
        return Quota(limit, max(0, limit - count), reset, allowed=count <= limit)

    async def refusal_for(self, scope: Scope) -> RateLimited | None:
        """Count a request that is refused (401, 403) or that no route takes (404, 405) against
        its client's address: the 429 to answer instead when that is over RATE_LIMIT_ANONYMOUS;
        None within it, when the limit is off, and for a request it does not count."""
        client = scope.get("client")
        if not self.address_enabled or not client or scope["path"] in PROBE_PATHS:
            return None
        key = self.address_item.key_for("address", address_key(client[0]))
        count, reset = await self._count(self.address_item, key)
        limit = self.address_item.amount
        if count <= limit:
            return None
        if count == limit + 1:  # once per address and window: not a line per refused request
            logger.warning(
                "a client address went over RATE_LIMIT_ANONYMOUS (%d a minute): its refused "
                "requests are answered 429 for %d s",
                limit,
                reset,
            )
        return RateLimited(limit=limit, retry_after=reset, of=ADDRESS_BUDGET)

    async def _count(self, item: RateLimitItem, key: str) -> tuple[int, int]:
        """Count one request against `key`: the count in its window, and the seconds until
        the window closes (at least 1)."""
        storage = self._storage()
        if storage is self.memory:
            count = await storage.incr(key, item.get_expiry())
            expires = await storage.get_expiry(key)
        else:
            try:
                async with asyncio.timeout(REDIS_TIMEOUT_SECONDS):
                    count = await storage.incr(key, item.get_expiry())
                    expires = await storage.get_expiry(key)
            except (StorageError, TimeoutError) as failure:
                cause = failure.storage_error if isinstance(failure, StorageError) else failure
                self._shared_down_until = self._clock() + RETRY_STORAGE_SECONDS
                self.close()  # what was sent to a Redis that did not answer is not waited for
                logger.warning(
                    "rate limit storage unreachable (%s): counting in this process's memory "
                    "for %.0f s",
                    type(cause).__name__,
                    RETRY_STORAGE_SECONDS,
                )
                return await self._count(item, key)
        return count, max(1, math.ceil(expires - time.time()))

    def _storage(self) -> Storage:
        if self.shared is not None and self._clock() >= self._shared_down_until:
            return self.shared
        return self.memory

    def close(self) -> None:
        """Close the connections to Redis (limits' storage has no close of its own)."""
        client = getattr(getattr(self.shared, "bridge", None), "storage", None)
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            pool.disconnect()
