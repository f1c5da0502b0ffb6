"""What runs on a session connection of DATABASE_DIRECT_URL (else DATABASE_URL), which a
transaction-mode pooler cannot give: the migrations, under a lock, and LISTEN."""

import asyncio
import fcntl
import os
from collections.abc import Callable
from typing import IO

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL

from backend.config import Settings
from backend.db.engine import make_engine
from backend.db.failures import DatabaseUnavailable
from backend.db.urls import is_sqlite, target

# An arbitrary, fixed key: every process of this service migrating the same database takes
# the same PostgreSQL advisory lock, so workers starting together run the migrations once.
_MIGRATION_LOCK_KEY = 7_316_204_551
# A listening connection runs a query this often (seconds) to find out it died without a word.
LISTEN_KEEPALIVE_SECONDS = 30.0


def alembic_config() -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", "backend:migrations")
    return config


def _upgrade_to_head(sync_conn: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = sync_conn
    command.upgrade(config, "head")


async def migrate(settings: Settings) -> None:
    """Apply pending migrations, holding a lock that other processes migrating wait for.

    They run on DATABASE_DIRECT_URL when it is set: a session connection, as a transaction-mode
    pooler is no place for DDL that may run longer than its query timeouts (the lock itself is
    transaction-scoped, so the pooled URL works too when no direct one is given)."""
    url, _ = target(settings, direct=True)
    engine = make_engine(settings, for_requests=False)
    try:
        if is_sqlite(url):
            with await asyncio.to_thread(_sqlite_migration_lock, url):
                async with engine.begin() as conn:
                    await conn.run_sync(_upgrade_to_head)
        else:
            async with engine.begin() as conn:
                # Released at commit, with the migrations.
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
                await conn.run_sync(_upgrade_to_head)
    finally:
        await engine.dispose()


def _sqlite_migration_lock(url: URL) -> IO[bytes]:
    database = url.database
    if not database or database == ":memory:":
        return open(os.devnull, "rb")  # an in-memory database is private: no lock
    lock = open(f"{database}.migrate-lock", "ab")  # noqa: SIM115 - closed by the caller's with
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


async def listen(
    settings: Settings,
    channel: str,
    on_message: Callable[[str], None],
    on_listening: Callable[[], None],
) -> None:
    """LISTEN to a PostgreSQL channel on a session connection of DATABASE_DIRECT_URL (a
    transaction-mode pooler cannot hold one), calling `on_message(payload)` for each
    notification, until the connection fails: then it raises. A query every
    LISTEN_KEEPALIVE_SECONDS finds a connection that died without a word (and keeps Neon's
    compute from suspending it while streams are open)."""
    engine = make_engine(settings, for_requests=False)
    try:
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None  # an open connection has its asyncpg connection
            lost = asyncio.Event()
            raw.add_termination_listener(lambda _: lost.set())
            await raw.add_listener(
                channel, lambda _conn, _pid, _channel, payload: on_message(payload)
            )
            on_listening()
            while not lost.is_set():
                try:
                    async with asyncio.timeout(LISTEN_KEEPALIVE_SECONDS):
                        await lost.wait()
                except TimeoutError:
                    await raw.fetchval("SELECT 1", timeout=LISTEN_KEEPALIVE_SECONDS)
            raise DatabaseUnavailable("the listening connection was closed")
    finally:
        await engine.dispose()
