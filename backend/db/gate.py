"""The connection gate: the request engine behind a first-come, first-served gate, with its
connections kept between requests. Whatever uses the request engine goes through `connect()`."""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.config import Settings
from backend.db.engine import PG_POOL_RECYCLE_SECONDS, make_engine, pool_size
from backend.db.failures import DatabaseUnavailable
from backend.db.urls import is_sqlite


class Database:
    """The request engine behind a first-come, first-served gate, with its connections kept.

    SQLAlchemy's async pool hands a returned connection to whoever asks next, so under load a
    request that is already waiting can lose its turn again and again (a tail of seconds under
    a median of milliseconds: bench/README.md). The gate admits no more requests than the pool has
    connections, in arrival order, so the pool itself never makes anyone wait; a request that
    cannot get in within DB_POOL_TIMEOUT gets 503.

    Behind the gate, a request's connection stays open for the next request (up to the pool's
    size), instead of going back to SQLAlchemy's pool: a checkout and a checkin there cost two
    greenlet switches and the pool's events, a large share of a request's CPU. What the pool
    does at checkout is done here before a kept connection is handed out again: one that
    SQLAlchemy invalidated, or whose server ended it, or that is older than the recycle age, is
    given back to the pool (which replaces it) and another is checked out. So the engine's pool
    belongs to this gate.
    """

    def __init__(self, settings: Settings) -> None:
        self.engine = make_engine(settings)
        self._size = pool_size(settings)
        self._gate = asyncio.Semaphore(self._size + settings.db_max_overflow)
        self._timeout = settings.db_pool_timeout
        self._connect_timeout = settings.db_connect_timeout
        self.sqlite = is_sqlite(self.engine.url)
        self._recycle = None if self.sqlite else PG_POOL_RECYCLE_SECONDS
        self._kept: list[tuple[AsyncConnection, float]] = []  # (connection, checked out at)
        self.in_use = 0

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        if self._gate.locked():  # others are waiting, or all connections are in use
            try:
                async with asyncio.timeout(self._timeout):
                    await self._gate.acquire()
            except TimeoutError:
                raise DatabaseUnavailable(
                    "no database connection became free within DB_POOL_TIMEOUT "
                    f"({self._timeout:g} s)"
                ) from None
        else:
            await self._gate.acquire()  # free, and nobody is ahead: no timer needed
        try:
            conn, since = await self._checkout()
            self.in_use += 1
            try:
                yield conn
            finally:
                self.in_use -= 1
                if len(self._kept) < self._size:
                    self._kept.append((conn, since))
                else:
                    await conn.close()  # beyond the pool's size (DB_MAX_OVERFLOW)
        finally:
            self._gate.release()

    async def _checkout(self) -> tuple[AsyncConnection, float]:
        now = time.monotonic()
        while self._kept:
            conn, since = self._kept.pop()  # the most recently used: the likeliest to be alive
            if self._usable(conn, now - since):
                return conn, since
            await conn.close()  # back to SQLAlchemy's pool, which replaces or recycles it
        conn = self.engine.connect()
        try:
            await conn.start()
        # What the driver raises before a connection exists reaches no SQLAlchemy hook:
        # refused, unreachable, TLS refused, or no answer within DB_CONNECT_TIMEOUT.
        except TimeoutError as exc:
            raise DatabaseUnavailable(
                "the database did not accept a connection within DB_CONNECT_TIMEOUT "
                f"({self._connect_timeout:g} s)"
            ) from exc
        except OSError as exc:
            raise DatabaseUnavailable(
                f"cannot connect to the database ({type(exc).__name__})"
            ) from exc
        except sa_exc.TimeoutError as exc:  # the pool's own checkout timeout
            raise DatabaseUnavailable("no pooled database connection became free") from exc
        return conn, now

    def _usable(self, conn: AsyncConnection, age: float) -> bool:
        sync = conn.sync_connection
        if sync is None or sync.closed or sync.invalidated:
            return False
        if self._recycle is not None and age > self._recycle:
            return False
        # A server restart, or Neon suspending its compute, closes kept connections too; asyncpg
        # knows it without a round trip (the engine's checkout listener does the same).
        raw: Any = sync.connection.driver_connection
        return self.sqlite or not raw.is_closed()

    async def dispose(self) -> None:
        kept, self._kept = self._kept, []
        for conn, _ in kept:
            with suppress(Exception):
                await conn.close()
        await self.engine.dispose()
