"""The raw fetch path: prepared statements run on the driver's own connection.

A statement is prepared once (`prepare`), as a module constant or by a builder whose cache has a
bound (`functools.lru_cache`), and `fetch` takes only what `prepare` returned: so a compiled
plan lives exactly as long as its statement, and nothing here grows with what requests send.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

from sqlalchemy import Dialect, Executable
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from backend.db.failures import driver_failure


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
    kept with it: a plan lives exactly as long as its statement."""

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
    where one does). A failure is sorted as SQLAlchemy's hook sorts it (`failures.classify`),
    and a connection that broke is invalidated, so the pool replaces it. A statement with an IN
    list, or a connection SQLAlchemy has invalidated, takes SQLAlchemy's `execute`."""
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
        failure = await driver_failure(conn, raw, error, sqlite=plan.sqlite)
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
