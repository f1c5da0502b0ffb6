"""Which failures mean "the database cannot serve now" (503, retry), sorted where they arise.

One classifier (`classify`) sorts a driver's exception for both paths a statement can take:
SQLAlchemy's `handle_error` hook (`on_driver_error`) and the raw fetch path
(`driver_failure`): PostgreSQL shutting down or starting up, out of connections, a lost
connection, a timeout, a locked SQLite file. Anything else (a bug, a constraint) goes on as it
is; a constraint on the raw path becomes SQLAlchemy's IntegrityError, which the services catch.
`describe_failure` says the same for whoever starts the service, in one line.
"""

import errno
import socket
import sqlite3
import ssl as ssl_module
from collections.abc import Iterator
from contextlib import suppress
from typing import Any, NamedTuple

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.config import Settings
from backend.db.urls import DatabaseURLError, target, where

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
_LOST = "the connection to the database was lost"


class DatabaseUnavailable(Exception):
    """The database cannot serve now: down, restarting, out of connections, locked or too slow.
    The same request may well succeed later. `reason` says which, without SQL or parameters."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


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


class Failure(NamedTuple):
    unavailable: DatabaseUnavailable | None  # None: not the database's state (a bug, a constraint)
    connection_lost: bool  # the connection must not be used again


def classify(error: BaseException, *, disconnected: bool) -> Failure:
    """A driver's exception, sorted: whether the database cannot serve now, and whether the
    connection is gone (`disconnected`: the caller already knows it is)."""
    lost = disconnected or getattr(error, "sqlstate", None) in _CONNECTION_LOST
    reason = unavailable_reason(error)
    if reason is None and lost:
        reason = _LOST
    return Failure(None if reason is None else DatabaseUnavailable(reason), lost)


def on_driver_error(context: ExceptionContext) -> BaseException | None:
    """SQLAlchemy's handle_error hook: a statement's (or a connect's) failure that means the
    database cannot serve now becomes DatabaseUnavailable; everything else goes on as it is."""
    error = context.original_exception
    if not isinstance(error, Exception):  # cancellation, interpreter exit: not ours to judge
        return None
    failure = classify(error, disconnected=context.is_disconnect)
    if failure.unavailable is None:
        return None
    # A session the server ended is never reused. A timeout is not a disconnect: SQLAlchemy
    # would discard the connection, closing it politely (two more seconds on a server that
    # does not answer); asyncpg has already asked the server to cancel the statement, and the
    # connection's next user waits for that (or asyncpg closes it, and the pool replaces it at
    # checkout), so it may go back to the pool.
    context.is_disconnect = failure.connection_lost and not isinstance(error, TimeoutError)
    return failure.unavailable


async def driver_failure(
    conn: AsyncConnection, raw: Any, error: Exception, *, sqlite: bool
) -> Exception:
    """A failure of the raw fetch path, as `on_driver_error` sorts SQLAlchemy's: the database
    cannot serve now (DatabaseUnavailable), a constraint (SQLAlchemy's IntegrityError, which
    the services catch), or anything else as it is. A PostgreSQL connection the failure closed
    is invalidated."""
    failure = classify(error, disconnected=not sqlite and raw.is_closed())
    if failure.connection_lost:
        with suppress(Exception):
            await conn.invalidate()
    if failure.unavailable is not None:
        return failure.unavailable
    constraint = isinstance(error, sqlite3.IntegrityError) or str(
        getattr(error, "sqlstate", "")
    ).startswith("23")
    return sa_exc.IntegrityError(None, None, error) if constraint else error


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


def describe_failure(error: BaseException, settings: Settings) -> str | None:
    """One line for whoever starts the service: what went wrong with the database and where,
    never the password. None when `error` is not a failure to reach or use the database."""
    try:
        url, _ = target(settings, direct=True)
    except DatabaseURLError as exc:
        return str(exc)
    place = where(url)
    variable = "DATABASE_DIRECT_URL" if settings.database_direct_url else "DATABASE_URL"
    timeout = settings.db_connect_timeout
    for cause in _causes(error):
        state = getattr(cause, "sqlstate", None)
        server_says = str(cause.args[0]) if cause.args else type(cause).__name__
        if isinstance(cause, DatabaseURLError):
            return str(cause)
        if state in ("28P01", "28000"):  # wrong password; no such role or no pg_hba.conf entry
            hint = f"check the user and password in {variable}"
            return f"{place} refused the login: {server_says} ({hint})"
        if state == "3D000":
            return f"{place}: {server_says} (create it, or fix the database name in {variable})"
        if isinstance(state, str) and state[:2] in ("08", "53", "57"):
            return f"{place} cannot serve now: {server_says} (SQLSTATE {state})"
        if isinstance(cause, ssl_module.SSLError):
            return f"{place}: the TLS handshake failed ({cause.reason or cause})"
        if isinstance(cause, ConnectionError) and "SSL" in server_says:
            return (
                f"{place} does not accept TLS, but {variable} requires it "
                "(sslmode=require or stricter)"
            )
        if isinstance(cause, socket.gaierror):
            return f"{place}: the host name cannot be resolved ({cause.strerror})"
        if isinstance(cause, ConnectionRefusedError):
            return f"{place} refused the connection: is PostgreSQL running and listening there?"
        if isinstance(cause, TimeoutError):
            return f"{place} did not answer within DB_CONNECT_TIMEOUT ({timeout:g} s)"
        if isinstance(cause, ConnectionError) or (
            isinstance(cause, OSError) and cause.errno in _UNREACHABLE_ERRNOS
        ):  # not any OSError: a file missing in a migration is a bug, shown in full
            return f"{place} cannot be reached: {cause.strerror or type(cause).__name__}"
        if isinstance(cause, sqlite3.Error):
            return f"{place} cannot be used: {server_says}"
    return None
