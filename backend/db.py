"""Everything that differs between SQLite and PostgreSQL lives here, and nowhere else.

- URLs are accepted as people write them: `sqlite:///tasks.db`, `postgres://…`,
  `postgresql://…?sslmode=require&channel_binding=require` exactly as Neon shows it, and the
  SQLAlchemy driver forms. They are normalised to the async drivers (aiosqlite, asyncpg).
- Requests run on connections in AUTOCOMMIT mode: every service operation is a single
  statement (`INSERT/UPDATE/DELETE … RETURNING`), which the database applies atomically, so a
  BEGIN/COMMIT pair would only add two round trips. Work that needs several statements opens a
  transaction explicitly (`async with db.transaction(conn)`); migrations use their own engine.
- SQLite: WAL (readers never block the writer), foreign keys on, and a busy timeout so that
  concurrent writers queue instead of failing. aiosqlite runs each connection in its own
  thread, so a writer waiting for the lock never blocks the event loop.
- PostgreSQL/Neon: a bounded pool with a checkout timeout (a full pool answers 503, it never
  deadlocks), connections recycled before Neon's five-minute idle suspend can kill them, and a
  connect timeout.
- Timestamps are timezone-aware UTC on both (see `models.task.UTCDateTime`).

A database that cannot serve now is `DatabaseUnavailable` (503), always within a bound:
- every wait has a limit: a free connection (DB_POOL_TIMEOUT), a new one (DB_CONNECT_TIMEOUT),
  and each statement or lock wait (DB_STATEMENT_TIMEOUT: the server's statement_timeout and
  lock_timeout, set on each new connection; asyncpg's command_timeout a little later for a
  server that does not answer at all; SQLite's busy timeout);
- the driver's failures are sorted where they arise (`_on_driver_error` for statements,
  `Database.connect` for connecting): PostgreSQL shutting down or starting up, out of
  connections, a lost connection, a timeout, a locked SQLite file. Anything else (a bug) stays
  a 500.

Behind a transaction-mode pooler (PgBouncer; Neon's `-pooler` host) consecutive statements of
one connection may run on different server connections, so nothing may live in the session:
no named prepared statements (every statement is parsed again in the round trip that runs it)
and no SET, so the statement bound is asyncpg's command_timeout alone. Migrations run on
DATABASE_DIRECT_URL, a session connection.
"""

import asyncio
import errno
import fcntl
import os
import socket
import sqlite3
import ssl as ssl_module
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, suppress
from functools import partial
from pathlib import Path
from typing import IO, Any, NamedTuple, cast

import orjson
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import ColumnElement, Connection, Dialect, Executable, Insert, Table, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool, PoolProxiedConnection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from backend.config import Settings

# Neon suspends an idle compute after 5 minutes, closing its connections; any connection older
# than this is replaced at checkout instead of failing on first use.
PG_POOL_RECYCLE_SECONDS = 240
# The server's statement_timeout/lock_timeout end a slow statement cleanly (the connection stays
# usable); asyncpg's own timeout, this much later, is for a server that does not answer at all.
CLIENT_TIMEOUT_GRACE_SECONDS = 1.0
_SSLMODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}

# SQLSTATEs that mean "the database cannot serve now; the same request may work later".
_UNAVAILABLE_SQLSTATES = {
    "57P01": "the database server is shutting down",
    "57P02": "the database server crashed and is restarting",
    "57P03": "the database server is starting up",
    "57P05": "the database server closed an idle connection",
    "08P01": "the server, or a pooler in front of it, refused the protocol (behind PgBouncer in "
    "transaction mode, set DB_POOLER=transaction)",
    "57014": "a statement ran longer than DB_STATEMENT_TIMEOUT",
    "55P03": "a lock wait ran longer than DB_STATEMENT_TIMEOUT",
    # Writes of one user lock rows first and their change counter last, so these should not
    # happen; if one ever does, the request that lost may simply be sent again.
    "40P01": "a deadlock with another transaction",
    "40001": "a conflict with a concurrent transaction",
}
_UNAVAILABLE_CLASSES = {
    "08": "the connection to the database failed",
    "53": "the database server is out of resources (too many connections, memory or disk)",
}
# Of those, the ones after which the connection is gone.
_CONNECTION_LOST = {"57P01", "57P02", "57P05"}


class DatabaseURLError(ValueError):
    pass


class DatabaseUnavailable(Exception):
    """The database cannot serve now: down, restarting, out of connections, locked or too slow.
    The same request may well succeed later. `reason` says which, without SQL or parameters."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


ACCEPTED_URLS = (
    "sqlite:///relative/path/tasks.db, sqlite:////absolute/path/tasks.db, or "
    "postgresql://user:password@host[:port]/database[?sslmode=require] (postgres:// too)"
)


def normalize_url(raw: str, *, name: str = "DATABASE_URL") -> URL:
    """The URL for the async driver, or DatabaseURLError: one line that says what is wrong and
    the forms that are accepted, never the URL itself (it may hold a password)."""

    def refused(problem: str) -> DatabaseURLError:
        return DatabaseURLError(
            f"{name} is not a database URL this service takes ({problem}); write {ACCEPTED_URLS}"
        )

    try:
        url = make_url(raw.strip())
    except Exception:
        raise refused("it cannot be parsed: scheme://… with a numeric port, if any") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        # sqlite://x would name a host, and sqlite:/// no file (a database in memory, lost at
        # the end of each connection).
        if url.host or url.port or url.username:
            raise refused("a SQLite URL has three slashes and a file path, no host")
        if not url.database or url.database == ":memory:":
            raise refused("a SQLite URL needs a file path")
        return url.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        if not url.host:
            raise refused("a PostgreSQL URL needs a host")
        if not url.database:
            raise refused("a PostgreSQL URL needs a database name after the host")
        return url.set(drivername="postgresql+asyncpg")
    raise refused(f"the scheme is {url.drivername}://, not postgresql:// or sqlite://")


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


def _is_pooler_host(url: URL) -> bool:
    # Neon's pooled connection string: ep-name-123456-pooler.region.aws.neon.tech.
    return not is_sqlite(url) and "-pooler" in (url.host or "")


def _target(settings: Settings, *, direct: bool) -> tuple[URL, bool]:
    """The URL to connect to, and whether it is a transaction-mode pooler. `direct`: the
    session connection for migrations (DATABASE_DIRECT_URL, else DATABASE_URL)."""
    if direct and settings.database_direct_url:
        url = normalize_url(settings.database_direct_url, name="DATABASE_DIRECT_URL")
        return url, _is_pooler_host(url)
    url = normalize_url(settings.db_url)
    if settings.db_pooler is None:
        return url, _is_pooler_host(url)
    return url, settings.db_pooler == "transaction" and not is_sqlite(url)


def check_urls(settings: Settings) -> None:
    """Raise DatabaseURLError for a URL the engines would refuse, without connecting."""
    for direct in (False, True):
        url, _ = _target(settings, direct=direct)
        if not is_sqlite(url):
            _pg_connect_args(url, settings)


def behind_pooler(settings: Settings) -> bool:
    """Whether requests go through a transaction-mode pooler (DB_POOLER, or a Neon -pooler host)."""
    return _target(settings, direct=False)[1]


def can_listen(settings: Settings) -> bool:
    """Whether there is a session connection to LISTEN on: PostgreSQL, not through a pooler."""
    url, pooled = _target(settings, direct=True)
    return not is_sqlite(url) and not pooled


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


def pool_size(settings: Settings) -> int:
    if settings.db_pool_size is not None:
        return settings.db_pool_size
    # SQLite: one connection, so one aiosqlite thread. It runs one writer at a time anyway (more
    # connections only add threads that sleep in the busy handler: p99 of writes 1 s with 20,
    # 0.1 s with 3), and every further thread only competes with the event loop for the GIL:
    # one process served 28-33 % more requests with 1 connection than with 3 (list of 20: 957 ->
    # 1,237 a second; one task 1,642 -> 2,098; toggles 1,034 -> 1,378). Each statement takes a
    # tenth of a millisecond, so the requests queued at the gate wait less than they did for
    # the GIL.
    return 1 if is_sqlite(normalize_url(settings.db_url)) else 10


def unavailable_reason(error: BaseException) -> str | None:
    """Why the database cannot serve now, if that is what `error` (a driver's exception) says;
    None for anything else (a bug, a constraint, a refused login)."""
    state = getattr(error, "sqlstate", None)  # asyncpg's, kept by SQLAlchemy's adapter
    if isinstance(state, str):
        reason = _UNAVAILABLE_SQLSTATES.get(state) or _UNAVAILABLE_CLASSES.get(state[:2])
        return None if reason is None else f"{reason} (SQLSTATE {state})"
    if isinstance(error, sqlite3.OperationalError):
        code = getattr(error, "sqlite_errorcode", 0) & 0xFF  # extended codes keep the primary
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return "the SQLite database stayed locked longer than DB_STATEMENT_TIMEOUT"
        return None
    if isinstance(error, TimeoutError):
        return "the database did not answer within DB_STATEMENT_TIMEOUT"
    if isinstance(error, OSError):
        return f"the connection to the database failed ({type(error).__name__})"
    return None


def _on_driver_error(context: ExceptionContext) -> BaseException | None:
    """SQLAlchemy's handle_error hook: a statement's (or a connect's) failure that means the
    database cannot serve now becomes DatabaseUnavailable; everything else goes on as it is."""
    error = context.original_exception
    if not isinstance(error, Exception):  # cancellation, interpreter exit: not ours to judge
        return None
    reason = unavailable_reason(error)
    if reason is None and context.is_disconnect:
        reason = "the connection to the database was lost"
    if reason is None:
        return None
    if getattr(error, "sqlstate", None) in _CONNECTION_LOST:
        context.is_disconnect = True  # the server ended this session: never reuse it
    elif isinstance(error, TimeoutError):
        # SQLAlchemy would discard the connection, closing it politely: two more seconds on a
        # server that does not answer. asyncpg has already asked the server to cancel the
        # statement; the connection's next user waits for that (or asyncpg closes it, and the
        # pool replaces it at checkout), so it may go back to the pool.
        context.is_disconnect = False
    return DatabaseUnavailable(reason)


def _discard_closed(
    dbapi_connection: Any, _: ConnectionPoolEntry, __: PoolProxiedConnection
) -> None:
    # A server restart, Neon suspending its compute, or a timed-out statement whose cancel
    # failed leaves pooled connections that asyncpg already knows are closed: replace them at
    # checkout (no round trip) rather than fail the request that draws one.
    if dbapi_connection.driver_connection.is_closed():
        raise sa_exc.DisconnectionError("the pooled connection was closed")


class Database:
    """The request engine behind a first-come, first-served gate, with its connections kept.

    SQLAlchemy's async pool hands a returned connection to whoever asks next, so under load a
    request that is already waiting can lose its turn again and again (seen: p50 15 ms, p99 3 s
    at 64 connections). The gate admits no more requests than the pool has connections, in
    arrival order, so the pool itself never makes anyone wait; a request that cannot get in
    within DB_POOL_TIMEOUT gets 503.

    Behind the gate, a request's connection stays open for the next request (up to the pool's
    size), instead of going back to SQLAlchemy's pool: a checkout and a checkin there cost two
    greenlet switches and the pool's events, about 90 us of CPU, a sixth of a request. What the
    pool does at checkout is done here before a kept connection is handed out again: one that
    SQLAlchemy invalidated, or whose server ended it, or that is older than the recycle age, is
    given back to the pool (which replaces it) and another is checked out. So the engine's pool
    belongs to this gate: whatever uses the request engine goes through `connect()`.
    """

    def __init__(self, settings: Settings) -> None:
        self.engine = make_engine(settings)
        self._size = pool_size(settings)
        self._gate = asyncio.Semaphore(self._size + settings.db_max_overflow)
        self._timeout = settings.db_pool_timeout
        self._connect_timeout = settings.db_connect_timeout
        self._postgresql = not is_sqlite(self.engine.url)
        self._recycle = PG_POOL_RECYCLE_SECONDS if self._postgresql else None
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
        # knows it without a round trip (`_discard_closed` does the same at the pool's checkout).
        raw: Any = sync.connection.driver_connection
        return not (self._postgresql and raw.is_closed())

    async def dispose(self) -> None:
        kept, self._kept = self._kept, []
        for conn, _ in kept:
            with suppress(Exception):
                await conn.close()
        await self.engine.dispose()


@asynccontextmanager
async def transaction(conn: AsyncConnection) -> AsyncIterator[None]:
    """A real transaction on a request connection, which is otherwise in AUTOCOMMIT (where
    SQLAlchemy's `begin()` sends nothing). On SQLite it takes the write lock at once (BEGIN
    IMMEDIATE): a transaction that reads, then writes, can never fail to upgrade its lock. On
    PostgreSQL it is READ COMMITTED; rows to be changed are locked with SELECT … FOR UPDATE.
    Behind a transaction-mode pooler the server connection is held until COMMIT, as it must be.
    Inside another transaction it is part of that one.
    """
    async with _transaction(conn, "BEGIN IMMEDIATE" if _is_sqlite(conn) else "BEGIN"):
        yield


@asynccontextmanager
async def snapshot(conn: AsyncConnection) -> AsyncIterator[None]:
    """A read-only transaction whose statements all see one snapshot of the database
    (REPEATABLE READ on PostgreSQL; on SQLite, in WAL mode, any read transaction is one)."""
    begin = "BEGIN" if _is_sqlite(conn) else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    async with _transaction(conn, begin):
        yield


def _is_sqlite(conn: AsyncConnection) -> bool:
    return conn.dialect.name == "sqlite"


@asynccontextmanager
async def _transaction(conn: AsyncConnection, begin: str) -> AsyncIterator[None]:
    # The flag lives on the connection (a service function inside another's transaction joins
    # it). The dict is taken once: after a cancelled statement SQLAlchemy refuses to hand out
    # `conn.info`, and that must not replace the cancellation on its way out.
    info = conn.info
    if info.get("in_transaction"):
        yield
        return
    await conn.exec_driver_sql(begin)
    info["in_transaction"] = True
    try:
        yield
    except BaseException:
        info["in_transaction"] = False
        try:
            await conn.exec_driver_sql("ROLLBACK")
        except Exception:
            # The connection is broken or busy (a cancelled statement): it must not go back to
            # the pool inside a transaction, since nothing resets it on return.
            with suppress(Exception):
                await conn.invalidate()
        raise
    info["in_transaction"] = False
    await conn.exec_driver_sql("COMMIT")


class _Plan(NamedTuple):
    """A statement compiled once for the driver: its SQL, where each positional value comes from
    (a parameter's name, or the statement's own literal), the bind processors of SQLAlchemy's
    types, and the result processors of the columns that have one."""

    sql: str
    sqlite: bool
    binds: tuple[tuple[str, Any, Callable[[Any], Any] | None], ...]  # (name, default, process)
    results: tuple[tuple[int, Callable[[Any], Any]], ...]  # (column, process)


class Prepared:
    """A statement for `fetch`, compiled for each database the first time it runs there and
    kept with it: a plan lives exactly as long as its statement. Statements are prepared once,
    as module constants or by builders whose caches have a bound (`functools.lru_cache`), so
    nothing here grows with what requests send."""

    __slots__ = ("_plans", "statement")

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        # By dialect name: at most one entry per database kind. None: SQLAlchemy's own path.
        self._plans: dict[str, _Plan | None] = {}

    def plan(self, dialect: Dialect) -> "_Plan | None":
        try:
            return self._plans[dialect.name]
        except KeyError:
            plan = self._plans[dialect.name] = _compile(self.statement, dialect)
            return plan


def prepare(statement: Executable) -> Prepared:
    return Prepared(statement)


def _compile(statement: Executable, dialect: Dialect) -> _Plan | None:
    compiled = cast(SQLCompiler, cast(ClauseElement, statement).compile(dialect=dialect))
    binds = compiled.binds  # by the name each is rendered under
    processors = compiled._bind_processors
    # Expanding parameters (IN lists) are rendered per execution, and a tuple type has one
    # processor per element: SQLAlchemy's own path for those.
    if (
        compiled.positiontup is None
        or any(bind.expanding for bind in binds.values())
        or not all(callable(process) for process in processors.values())
    ):
        return None
    results = []
    for n, column in enumerate(compiled._result_columns or ()):
        process = column.type._cached_result_processor(dialect, None)
        if process is not None:
            results.append((n, process))
    return _Plan(
        compiled.string,
        dialect.name == "sqlite",
        tuple(
            (name, binds[name].effective_value, cast(Any, processors.get(name)))
            for name in compiled.positiontup
        ),
        tuple(results),
    )


async def fetch(
    conn: AsyncConnection, statement: Prepared, params: dict[str, Any]
) -> Sequence[Sequence[Any]]:
    """The rows of a prepared statement, each a sequence of its columns' values as SQLAlchemy's
    types make them.

    It runs on the driver's connection itself, compiled once: SQLAlchemy's async adaption costs
    about as much CPU as the round trip (a greenlet switch per statement and its result objects
    on PostgreSQL; on SQLite four hops to aiosqlite's thread — cursor, execute, fetch, close —
    where one does). A failure is sorted as `_on_driver_error` sorts SQLAlchemy's, and a
    connection that broke is invalidated, so the pool replaces it. A statement with an IN list,
    or a connection SQLAlchemy has invalidated, takes SQLAlchemy's `execute`."""
    sync = conn.sync_connection
    plan = None if sync is None or sync.invalidated else statement.plan(conn.dialect)
    if sync is None or plan is None:
        return (await conn.execute(statement.statement, params)).all()
    raw: Any = sync.connection.driver_connection
    values = []
    for name, default, process in plan.binds:
        value = params.get(name, default)
        values.append(value if process is None else process(value))
    # SQLAlchemy's statement listeners (tracing, statement counts) still see each statement.
    observed = sync._has_events or sync.engine._has_events
    if observed:
        sync.dispatch.before_cursor_execute(sync, None, plan.sql, tuple(values), None, False)
    try:
        if plan.sqlite:
            records = await raw.execute_fetchall(plan.sql, values)
        else:
            records = await raw.fetch(plan.sql, *values)
    except Exception as error:
        failure = await _driver_failure(conn, raw, error, sqlite=plan.sqlite)
        if failure is error:
            raise
        raise failure from error
    if observed:
        sync.dispatch.after_cursor_execute(sync, None, plan.sql, tuple(values), None, False)
    if not plan.results:
        return cast(Sequence[Sequence[Any]], records)
    rows = []
    for record in records:
        row = list(record)
        for n, process in plan.results:
            row[n] = process(row[n])
        rows.append(row)
    return rows


async def _driver_failure(
    conn: AsyncConnection, raw: Any, error: Exception, *, sqlite: bool
) -> Exception:
    """The driver's failure as `_on_driver_error` sorts SQLAlchemy's: the database cannot serve
    now (DatabaseUnavailable), a constraint (SQLAlchemy's IntegrityError, which the services
    catch), or anything else as it is. A PostgreSQL connection the failure closed is
    invalidated."""
    lost = not sqlite and (getattr(error, "sqlstate", None) in _CONNECTION_LOST or raw.is_closed())
    if lost:
        with suppress(Exception):
            await conn.invalidate()
    reason = unavailable_reason(error)
    if reason is None and lost:
        reason = "the connection to the database was lost"
    if reason is not None:
        return DatabaseUnavailable(reason)
    constraint = isinstance(error, sqlite3.IntegrityError) or str(
        getattr(error, "sqlstate", "")
    ).startswith("23")
    return sa_exc.IntegrityError(None, None, error) if constraint else error


def insert_unless_present(
    conn: AsyncConnection,
    table: Table,
    values: dict[str, Any],
    *,
    replace_where: ColumnElement[bool],
) -> Insert:
    """INSERT these values, or replace the row with the same primary key if `replace_where`
    holds for it (an expired one, say). A row comes back when the values were written; none when
    a row that stays was there. A row being written by another transaction is waited for."""
    dialect_insert = sqlite_insert if _is_sqlite(conn) else postgresql_insert
    statement = dialect_insert(table).values(values)
    return statement.on_conflict_do_update(
        index_elements=list(table.primary_key.columns),
        set_={name: statement.excluded[name] for name in values},
        where=replace_where,
    ).returning(*table.primary_key.columns)


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def make_engine(settings: Settings, *, for_requests: bool = True) -> AsyncEngine:
    """The request engine (AUTOCOMMIT, pooled, every statement bounded), or with
    `for_requests=False` a one-off transactional engine on the direct (session) URL for
    migrations and tests, whose statements are not cut short."""
    url, pooled = _target(settings, direct=not for_requests)
    kwargs: dict[str, Any] = {
        "hide_parameters": True,  # task text never reaches a log line
        # JSON columns (tags, recurrence) through orjson: several times faster than json, and
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
        url, connect_args = _pg_connect_args(url, settings)
        connect_args.update(_pg_driver_args(settings, for_requests=for_requests, pooled=pooled))
        kwargs["connect_args"] = connect_args
        if for_requests:
            kwargs["pool_recycle"] = PG_POOL_RECYCLE_SECONDS
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "checkout", _discard_closed)
        if for_requests and not pooled:
            milliseconds = max(1, round(settings.db_statement_timeout * 1000))
            event.listen(engine.sync_engine, "connect", partial(_set_timeouts, milliseconds))
    event.listen(engine.sync_engine, "handle_error", _on_driver_error)
    return engine


async def listen(
    settings: Settings,
    channel: str,
    on_message: Callable[[str], None],
    on_listening: Callable[[], None],
    *,
    keepalive_seconds: float = 30.0,
) -> None:
    """LISTEN to a PostgreSQL channel on a session connection of DATABASE_DIRECT_URL (a
    transaction-mode pooler cannot hold one), calling `on_message(payload)` for each
    notification, until the connection fails: then it raises. A query every `keepalive_seconds`
    finds a connection that died without a word (and keeps Neon's compute from suspending it
    while streams are open)."""
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
                    async with asyncio.timeout(keepalive_seconds):
                        await lost.wait()
                except TimeoutError:
                    await raw.fetchval("SELECT 1", timeout=keepalive_seconds)
            raise DatabaseUnavailable("the listening connection was closed")
    finally:
        await engine.dispose()


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
    """Apply pending migrations, holding a lock that other processes migrating wait for.

    They run on DATABASE_DIRECT_URL when it is set: a session connection, as a transaction-mode
    pooler is no place for DDL that may run longer than its query timeouts (the lock itself is
    transaction-scoped, so the pooled URL works too when no direct one is given)."""
    url, _ = _target(settings, direct=True)
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


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)  # SQLAlchemy's wrapper -> the driver's error
        pending += [orig if isinstance(orig, BaseException) else None]
        pending += [current.__cause__, current.__context__]


_UNREACHABLE_ERRNOS = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL}


def _where(url: URL) -> str:
    if is_sqlite(url):
        return f"the SQLite database {url.database or ':memory:'}"
    where = f"PostgreSQL at {url.host or 'localhost'}:{url.port or 5432}"
    return f'{where} (database "{url.database}", user "{url.username}")'


def describe_failure(error: BaseException, settings: Settings) -> str | None:
    """One line for whoever starts the service: what went wrong with the database and where,
    never the password. None when `error` is not a failure to reach or use the database."""
    try:
        url, _ = _target(settings, direct=True)
    except DatabaseURLError as exc:
        return str(exc)
    where = _where(url)
    variable = "DATABASE_DIRECT_URL" if settings.database_direct_url else "DATABASE_URL"
    timeout = settings.db_connect_timeout
    for cause in _causes(error):
        state = getattr(cause, "sqlstate", None)
        server_says = str(cause.args[0]) if cause.args else type(cause).__name__
        if isinstance(cause, DatabaseURLError):
            return str(cause)
        if state in ("28P01", "28000"):  # wrong password; no such role or no pg_hba.conf entry
            hint = f"check the user and password in {variable}"
            return f"{where} refused the login: {server_says} ({hint})"
        if state == "3D000":
            return f"{where}: {server_says} (create it, or fix the database name in {variable})"
        if isinstance(state, str) and state[:2] in ("08", "53", "57"):
            return f"{where} cannot serve now: {server_says} (SQLSTATE {state})"
        if isinstance(cause, ssl_module.SSLError):
            return f"{where}: the TLS handshake failed ({cause.reason or cause})"
        if isinstance(cause, ConnectionError) and "SSL" in server_says:
            return (
                f"{where} does not accept TLS, but {variable} requires it "
                "(sslmode=require or stricter)"
            )
        if isinstance(cause, socket.gaierror):
            return f"{where}: the host name cannot be resolved ({cause.strerror})"
        if isinstance(cause, ConnectionRefusedError):
            return f"{where} refused the connection: is PostgreSQL running and listening there?"
        if isinstance(cause, TimeoutError):
            return f"{where} did not answer within DB_CONNECT_TIMEOUT ({timeout:g} s)"
        if isinstance(cause, ConnectionError) or (
            isinstance(cause, OSError) and cause.errno in _UNREACHABLE_ERRNOS
        ):  # not any OSError: a file missing in a migration is a bug, shown in full
            return f"{where} cannot be reached: {cause.strerror or type(cause).__name__}"
        if isinstance(cause, sqlite3.Error):
            return f"{where} cannot be used: {server_says}"
    return None
