"""The per-user rate limit: RATE_LIMIT requests a minute, counted after authentication (the key
is the token's user) and before the body is read.

A fixed one-minute window of `limits` (its asyncio storage): the window opens at a user's first
request and closes a minute later. The count lives in this process's memory, or with
RATE_LIMIT_STORAGE=redis://… in Redis, where one atomic INCR per request makes every worker and
machine share one budget.

Redis unreachable: the limit fails over to this process's memory (each worker then counts on its
own), with a warning, and Redis is tried again after RETRY_STORAGE_SECONDS (a long outage logs
one line per worker every few seconds; requests do not each wait on a dead Redis). Refusing every
request (503) because the limiter's store is down would turn an outage of an auxiliary service
into an outage of the API; the task quota, which protects the database, is enforced by the
database and does not depend on Redis.
"""

import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, Storage
from limits.errors import StorageError
from limits.storage import storage_from_string

from backend.config import Settings

logger = logging.getLogger("backend.rate_limit")

RETRY_STORAGE_SECONDS = 5.0  # after Redis failed, how long memory counts before Redis is tried
REDIS_TIMEOUT_SECONDS = 1.0  # a request waits at most this long for Redis


@dataclass(frozen=True, slots=True)
class Quota:
    """Where a user stands after a request: RateLimit-* headers, and whether it was refused."""

    limit: int
    remaining: int
    reset: int  # seconds until the window closes, at least 1
    allowed: bool

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"ratelimit-limit", b"%d" % self.limit),
            (b"ratelimit-remaining", b"%d" % self.remaining),
            (b"ratelimit-reset", b"%d" % self.reset),
        ]


def storage_uri(url: str) -> str:
    """RATE_LIMIT_STORAGE as limits' asyncio storage wants it: redis://… → async+redis://…."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("redis", "rediss", "memory"):
        raise ValueError("RATE_LIMIT_STORAGE must be memory://, redis://… or rediss://…")
    return f"async+{scheme.lower()}://{rest}"


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self.item = RateLimitItemPerMinute(max(settings.rate_limit, 1))
        self.enabled = settings.rate_limit > 0
        self.memory = MemoryStorage()
        self.shared: Storage | None = None
        uri = storage_uri(settings.rate_limit_storage)
        if not uri.startswith("async+memory"):
            storage = storage_from_string(
                uri,
                wrap_exceptions=True,
                connect_timeout=REDIS_TIMEOUT_SECONDS,
                stream_timeout=REDIS_TIMEOUT_SECONDS,
            )
            assert isinstance(storage, Storage)
            self.shared = storage
        self._shared_down_until = 0.0

    def _storage(self) -> Storage:
        if self.shared is not None and time.monotonic() >= self._shared_down_until:
            return self.shared
        return self.memory

    async def hit(self, user_id: str) -> Quota | None:
        """Count one request of this user; None when the limit is off."""
        if not self.enabled:
            return None
        key = self.item.key_for("user", user_id)
        storage = self._storage()
        try:
            count = await storage.incr(key, self.item.get_expiry())
            expires = await storage.get_expiry(key)
        except StorageError as failure:
            self._shared_down_until = time.monotonic() + RETRY_STORAGE_SECONDS
            logger.warning(
                "rate limit storage unreachable (%s): counting in this process's memory for %.0f s",
                type(failure.storage_error).__name__,
                RETRY_STORAGE_SECONDS,
            )
            return await self.hit(user_id)
        limit = self.item.amount
        reset = max(1, math.ceil(expires - time.time()))
        return Quota(limit, max(0, limit - count), reset, allowed=count <= limit)

    def close(self) -> None:
        """Close the connections to Redis (limits' storage has no close of its own)."""
        client = getattr(getattr(self.shared, "bridge", None), "storage", None)
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            pool.disconnect()
