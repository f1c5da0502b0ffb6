"""The engines: the request engine (AUTOCOMMIT, pooled, every wait bounded) and the one-off
transactional engine for migrations, LISTEN and tests.

- SQLite: WAL (readers never block the writer), foreign keys on, and a busy timeout so that
  concurrent writers queue instead of failing. aiosqlite runs each connection in its own
  thread, so a writer waiting for the lock never blocks the event loop.
- PostgreSQL/Neon: a bounded pool with a checkout timeout (a full pool answers 503, it never
  deadlocks), connections recycled before Neon's five-minute idle suspend can kill them, a
  connect timeout, and the server's statement_timeout and lock_timeout set on each new
  connection (asyncpg's command_timeout a little later, for a server that does not answer).
- Behind a transaction-mode pooler (PgBouncer; Neon's `-pooler` host) consecutive statements of
  one connection may run on different server connections, so nothing may live in the session:
  no named prepared statements (every statement is parsed again in the round trip that runs it)
  and no SET, so the statement bound is asyncpg's command_timeout alone.
"""

from functools import partial
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool, PoolProxiedConnection

from backend.config import Settings
from backend.db.failures import on_driver_error
from backend.db.urls import is_sqlite, normalize_url, pg_connect_args, target

# Neon suspends an idle compute after 5 minutes, closing its connections; any connection older
# than this is replaced at checkout instead of failing on first use.
PG_POOL_RECYCLE_SECONDS = 240
# The server's statement_timeout/lock_timeout end a slow statement cleanly (the connection stays
# usable); asyncpg's own timeout, this much later, is for a server that does not answer at all.
CLIENT_TIMEOUT_GRACE_SECONDS = 1.0


def pool_size(settings: Settings) -> int:
    if settings.db_pool_size is not None:
        return settings.db_pool_size
    # SQLite: one connection, so one aiosqlite thread. It runs one writer at a time anyway (more
    # connections only add threads that sleep in the busy handler), and every further thread
    # only competes with the event loop for the GIL: one process served more requests with one
    # connection than with three (bench/README.md). Each statement takes a tenth of a
    # millisecond, so the requests queued at the gate wait less than they did for the GIL.
    return 1 if is_sqlite(normalize_url(settings.db_url)) else 10


def _unnamed_statement() -> str:
    return ""


def _pg_driver_args(settings: Settings, *, for_requests: bool, pooled: bool) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if pooled:
        # asyncpg's cache keeps named prepared statements on the server connection that
        # prepared them; through the pooler the next use lands on another one ("prepared
        # statement __asyncpg_stmt_10__ does not exist"). Unique names (SQLAlchemy's documented
        # recipe) fail the same way with PgBouncer 1.18, and leak a statement per query. An
        # unnamed statement is parsed again in the very round trip that binds and runs it
        # (asyncpg does this when its cache is off), so it never outlives its server connection.
        args.update(
            statement_cache_size=0,  # asyncpg's cache
            prepared_statement_cache_size=0,  # SQLAlchemy's cache of asyncpg statements
            prepared_statement_name_func=_unnamed_statement,
        )
    if for_requests:
        # Behind a transaction-mode pooler a SET would stay on whichever server connection ran
        # it, so the client's timeout is the only bound there (asyncpg cancels the statement on
        # the server when it fires); elsewhere the server's timeouts come first (`_set_timeouts`).
        grace = 0 if pooled else CLIENT_TIMEOUT_GRACE_SECONDS
        args["command_timeout"] = settings.db_statement_timeout + grace
    return args


def _set_timeouts(milliseconds: int, dbapi_connection: Any, _: ConnectionPoolEntry) -> None:
    # Once per new connection. A SET rather than startup parameters, which PgBouncer refuses
    # in every pool mode ("unsupported startup parameter: statement_timeout").
    dbapi_connection.run_async(
        lambda conn: conn.execute(
            f"SET statement_timeout = {milliseconds}; SET lock_timeout = {milliseconds}"
        )
    )


def _sqlite_pragmas(busy_timeout_ms: int, dbapi_connection: Any, _: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
        cursor.execute("PRAGMA foreign_keys=ON")
        # A writer waits this long for the lock, then fails ("database is locked": 503). Equal
        # to DB_STATEMENT_TIMEOUT: a longer wait would hold one of the few connections past the
        # time every other request gives up.
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    finally:
        cursor.close()


def _discard_closed(
    dbapi_connection: Any, _: ConnectionPoolEntry, __: PoolProxiedConnection
) -> None:
    # A server restart, Neon suspending its compute, or a timed-out statement whose cancel
    # failed leaves pooled connections that asyncpg already knows are closed: replace them at
    # checkout (no round trip) rather than fail the request that draws one.
    if dbapi_connection.driver_connection.is_closed():
        raise sa_exc.DisconnectionError("the pooled connection was closed")


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def make_engine(settings: Settings, *, for_requests: bool = True) -> AsyncEngine:
    """The request engine (AUTOCOMMIT, pooled, every statement bounded), or with
    `for_requests=False` a one-off transactional engine on the direct (session) URL for
    migrations and tests, whose statements are not cut short."""
    url, pooled = target(settings, direct=not for_requests)
    kwargs: dict[str, Any] = {
        "hide_parameters": True,  # task text never reaches a log line
        # JSON columns (tags, recurrence) through orjson: faster than json, and
        # one spelling of a value, which SQLite's text comparison of JSON relies on.
        "json_serializer": _json_text,
        "json_deserializer": orjson.loads,
    }
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
        busy_timeout = settings.db_statement_timeout
        kwargs["connect_args"] = {"timeout": busy_timeout}
        engine = create_async_engine(url, **kwargs)
        event.listen(
            engine.sync_engine, "connect", partial(_sqlite_pragmas, round(busy_timeout * 1000))
        )
    else:
        url, connect_args = pg_connect_args(url, settings)
        connect_args.update(_pg_driver_args(settings, for_requests=for_requests, pooled=pooled))
        kwargs["connect_args"] = connect_args
        if for_requests:
            kwargs["pool_recycle"] = PG_POOL_RECYCLE_SECONDS
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "checkout", _discard_closed)
        if for_requests and not pooled:
            milliseconds = max(1, round(settings.db_statement_timeout * 1000))
            event.listen(engine.sync_engine, "connect", partial(_set_timeouts, milliseconds))
    event.listen(engine.sync_engine, "handle_error", on_driver_error)
    return engine
