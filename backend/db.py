"""Everything that differs between SQLite and PostgreSQL lives here, and nowhere else.

- URLs are accepted as people write them: `sqlite:///tasks.db`, `postgres://…`,
  `postgresql://…?sslmode=require&channel_binding=require` exactly as Neon shows it, and the
  SQLAlchemy driver forms. They are normalised to the async drivers (aiosqlite, asyncpg).
- Requests run on connections in AUTOCOMMIT mode: every service operation is a single
  statement (`INSERT/UPDATE/DELETE … RETURNING`), which the database applies atomically, so a
  BEGIN/COMMIT pair would only add two round trips. Work that needs several statements opens a
  transaction explicitly (`async with conn.begin()`); migrations use their own engine.
- SQLite: WAL (readers never block the writer), foreign keys on, and a busy timeout so that
  concurrent writers queue instead of failing. aiosqlite runs each connection in its own
  thread, so a writer waiting for the lock never blocks the event loop.
- PostgreSQL/Neon: a bounded pool with a checkout timeout (a full pool answers 503, it never
  deadlocks), connections recycled before Neon's five-minute idle suspend can kill them, and a
  connect timeout.
- Timestamps are timezone-aware UTC on both (see `models.task.UTCDateTime`).
"""

import asyncio
import fcntl
import os
import ssl as ssl_module
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from backend.config import Settings

SQLITE_BUSY_TIMEOUT_MS = 10_000
# Neon suspends an idle compute after 5 minutes, closing its connections; any connection older
# than this is replaced at checkout instead of failing on first use.
PG_POOL_RECYCLE_SECONDS = 240
_SSLMODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}


class DatabaseURLError(ValueError):
    pass


def normalize_url(raw: str) -> URL:
    try:
        url = make_url(raw.strip())
    except Exception as exc:
        raise DatabaseURLError("DATABASE_URL is not a valid database URL") from exc
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+asyncpg")
    raise DatabaseURLError("DATABASE_URL must be a sqlite:// or postgresql:// URL")


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def _pg_connect_args(url: URL, settings: Settings) -> tuple[URL, dict[str, Any]]:
    """Move libpq-style query parameters (what Neon prints) to asyncpg's connect arguments."""
    query = dict(url.query)
    args: dict[str, Any] = {"timeout": settings.db_connect_timeout}
    sslmode = query.pop("sslmode", None) or query.pop("ssl", None)
    if sslmode is not None:
        if not isinstance(sslmode, str) or sslmode not in _SSLMODES:
            raise DatabaseURLError(f"sslmode must be one of {', '.join(sorted(_SSLMODES))}")
        args["ssl"] = sslmode
    if "sslrootcert" in query:
        context = ssl_module.create_default_context(cafile=str(query.pop("sslrootcert")))
        args["ssl"] = context
    # asyncpg negotiates SCRAM itself and has no channel-binding switch; Neon accepts it without.
    query.pop("channel_binding", None)
    if "connect_timeout" in query:
        try:
            args["timeout"] = float(str(query.pop("connect_timeout")))
        except ValueError:
            raise DatabaseURLError("connect_timeout must be a number of seconds") from None
    server_settings = {}
    if "application_name" in query:
        server_settings["application_name"] = str(query.pop("application_name"))
    if "options" in query:
        # Neon's "endpoint=<id>" routing option for clients without SNI; asyncpg sends SNI.
        query.pop("options")
    if server_settings:
        args["server_settings"] = server_settings
    if query:
        unknown = ", ".join(sorted(query))
        raise DatabaseURLError(
            f"DATABASE_URL has query parameters this service does not know: {unknown}"
        )
    return url.set(query={}), args


def _sqlite_pragmas(dbapi_connection: Any, _: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def pool_size(settings: Settings) -> int:
    if settings.db_pool_size is not None:
        return settings.db_pool_size
    # SQLite runs one writer at a time: more connections only add threads that sleep in the
    # busy handler (measured: p99 of writes 1 s with 20 connections, 0.1 s with 3).
    return 3 if is_sqlite(normalize_url(settings.db_url)) else 10


class Database:
    """The request engine behind a first-come, first-served gate.

    SQLAlchemy's async pool hands a returned connection to whoever asks next, so under load a
    request that is already waiting can lose its turn again and again (seen: p50 15 ms, p99 3 s
    at 64 connections). The gate admits no more requests than the pool has connections, in
    arrival order, so the pool itself never makes anyone wait; a request that cannot get in
    within DB_POOL_TIMEOUT gets 503.
    """

    def __init__(self, settings: Settings) -> None:
        self.engine = make_engine(settings)
        self._gate = asyncio.Semaphore(pool_size(settings) + settings.db_max_overflow)
        self._timeout = settings.db_pool_timeout

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with asyncio.timeout(self._timeout):
                await self._gate.acquire()
        except TimeoutError:
            raise sa_exc.TimeoutError("no database connection became free in time") from None
        try:
            async with self.engine.connect() as conn:
                yield conn
        finally:
            self._gate.release()

    async def dispose(self) -> None:
        await self.engine.dispose()


def make_engine(settings: Settings, *, for_requests: bool = True) -> AsyncEngine:
    """The request engine (AUTOCOMMIT, pooled), or with `for_requests=False` a one-off
    transactional engine for migrations and tests."""
    url = normalize_url(settings.db_url)
    kwargs: dict[str, Any] = {"hide_parameters": True}  # task text never reaches a log line
    if for_requests:
        kwargs.update(
            isolation_level="AUTOCOMMIT",
            # Nothing is left open to roll back when a connection returns to the pool (a block
            # that opens a transaction ends it itself), so skip the ROLLBACK round trip.
            pool_reset_on_return=None,
            pool_size=pool_size(settings),
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout,
        )
    else:
        kwargs["poolclass"] = NullPool
    if is_sqlite(url):
        database = url.database
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    url, kwargs["connect_args"] = _pg_connect_args(url, settings)
    if for_requests:
        kwargs["pool_recycle"] = PG_POOL_RECYCLE_SECONDS
    return create_async_engine(url, **kwargs)


# An arbitrary, fixed key: every process of this service migrating the same database takes
# the same PostgreSQL advisory lock, so workers starting together run the migrations once.
_MIGRATION_LOCK_KEY = 7_316_204_551


def alembic_config() -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", "backend:migrations")
    return config


def _upgrade_to_head(sync_conn: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = sync_conn
    command.upgrade(config, "head")


async def migrate(settings: Settings) -> None:
    """Apply pending migrations, holding a lock that other processes migrating wait for."""
    url = normalize_url(settings.db_url)
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
