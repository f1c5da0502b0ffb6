"""Statements whose SQL differs between SQLite and PostgreSQL: transactions on a request
connection, a read snapshot, and INSERT … ON CONFLICT.

Request connections are in AUTOCOMMIT mode: every service operation is a single statement
(`INSERT/UPDATE/DELETE … RETURNING`), which the database applies atomically, so a BEGIN/COMMIT
pair would only add two round trips. Work that needs several statements opens a transaction
explicitly (`async with db.transaction(conn)`).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import Insert as PostgresqlInsert
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.db.urls import is_sqlite


@asynccontextmanager
async def transaction(conn: AsyncConnection) -> AsyncIterator[None]:
    """A real transaction on a request connection, which is otherwise in AUTOCOMMIT (where
    SQLAlchemy's `begin()` sends nothing). On SQLite it takes the write lock at once (BEGIN
    IMMEDIATE): a transaction that reads, then writes, can never fail to upgrade its lock. On
    PostgreSQL it is READ COMMITTED; rows to be changed are locked with SELECT … FOR UPDATE.
    Behind a transaction-mode pooler the server connection is held until COMMIT, as it must be.
    Inside another transaction it is part of that one.
    """
    async with _transaction(conn, "BEGIN IMMEDIATE" if is_sqlite(conn) else "BEGIN"):
        yield


@asynccontextmanager
async def snapshot(conn: AsyncConnection) -> AsyncIterator[None]:
    """A read-only transaction whose statements all see one snapshot of the database
    (REPEATABLE READ on PostgreSQL; on SQLite, in WAL mode, any read transaction is one)."""
    begin = "BEGIN" if is_sqlite(conn) else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    async with _transaction(conn, begin):
        yield


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


def upsert(conn: AsyncConnection, table: Table) -> SqliteInsert | PostgresqlInsert:
    """An INSERT into `table` that can say what to do ON CONFLICT, in this database's dialect."""
    return sqlite_insert(table) if is_sqlite(conn) else postgresql_insert(table)
