"""`db.fetch`: statements run on the driver's own connection, compiled once.

It must give what SQLAlchemy's `execute` gives for the same statement (the types' processing
included), keep SQLAlchemy's path for what it does not run itself, and sort the driver's
failures as SQLAlchemy's hook sorts them.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text, update

from backend import db
from backend.db import DatabaseUnavailable
from backend.schemas.task import TaskCreate, TaskQuery
from backend.services import listing, tables, tasks
from backend.services import statements as task_statements
from tests.fixtures.databases import make_settings

DUE = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)


async def _seed(conn: Any) -> list[int]:
    bodies: list[dict[str, Any]] = [
        {"title": "plain"},
        {
            "title": "Full",
            "description": "with\ttab",
            "completed": True,
            "priority": "high",
            "tags": ["Work", "home"],
            "due_at": DUE.isoformat(),
            "remind_at": (DUE - timedelta(hours=1)).isoformat(),
            "recurrence": {"frequency": "monthly", "interval": 2},
        },
        {"title": "low", "priority": "low", "tags": ["work"]},
    ]
    ids = []
    for body in bodies:
        task = await tasks.create_task(
            conn, user_id="alice", data=TaskCreate.model_validate(body), max_tasks=100
        )
        ids.append(task["id"])
    return ids


def _shape_and_params(**query: Any) -> tuple[Any, dict[str, Any]]:
    parsed = TaskQuery.model_validate(query)
    shape = listing._shape(parsed)
    params = {**listing._filter_values("alice", parsed), "limit": parsed.limit + 1}
    return listing._list_statement(shape), params


async def test_fetch_gives_what_sqlalchemy_gives(database_url: str) -> None:
    database = db.Database(make_settings(database_url))
    try:
        async with database.connect() as conn:
            ids = await _seed(conn)
            statements: list[tuple[Any, dict[str, Any]]] = [
                (task_statements.GET, tables.key("alice", ids[1])),
                (task_statements.GET, tables.key("bob", ids[1])),  # another user's: no row
                _shape_and_params(),
                _shape_and_params(tag=["work"], sort="-due_at", limit=2),
                _shape_and_params(q="ful", status="completed"),
                # An IN list: SQLAlchemy's own path, the same rows.
                _shape_and_params(priority=["high,low"], sort="priority"),
            ]
            # All but the last run on the driver itself.
            assert [s.plan(conn.dialect) is not None for s, _ in statements] == [
                True,
                True,
                True,
                True,
                True,
                False,
            ]
            for statement, params in statements:
                expected = [
                    tuple(row) for row in (await conn.execute(statement.statement, params)).all()
                ]
                fetched = [tuple(row) for row in await db.fetch(conn, statement, params)]
                assert fetched == expected
                for got, want in zip(fetched, expected, strict=True):
                    assert [type(value) for value in got] == [type(value) for value in want]
            full = dict(
                zip(tables.PUBLIC_NAMES, (await db.fetch(conn, *statements[0]))[0], strict=True)
            )
            assert full["priority"] == "high"
            assert full["tags"] == ["Work", "home"]
            assert full["recurrence"] == {"frequency": "monthly", "interval": 2}
            assert full["due_at"] == DUE
            assert full["due_at"].tzinfo is not None
            assert full["completed"] is True
    finally:
        await database.dispose()


async def test_a_write_through_fetch_is_applied_once(database_url: str) -> None:
    database = db.Database(make_settings(database_url))
    try:
        async with database.connect() as conn:
            ids = await _seed(conn)
            params = {**tables.key("alice", ids[0]), "now": datetime.now(UTC)}
            (row,) = await db.fetch(conn, task_statements.TOGGLE, params)
            toggled = dict(zip(tables.PUBLIC_NAMES, row, strict=True))
            assert toggled["completed"] is True
            assert toggled["version"] == 2
            assert await tasks.get_task(conn, user_id="alice", task_id=ids[0]) == toggled
    finally:
        await database.dispose()


async def test_a_constraint_violation_is_sqlalchemys_integrity_error(database_url: str) -> None:
    # The table's CHECK (a recurring task has a due date), which the services turn into a 422.
    database = db.Database(make_settings(database_url))
    statement = db.prepare(
        update(tables.task_table)
        .where(tables.owned)
        .values(due_at=None)
        .returning(*tables.PUBLIC_COLUMNS)
    )
    try:
        async with database.connect() as conn:
            ids = await _seed(conn)
            with pytest.raises(sa_exc.IntegrityError):
                await db.fetch(conn, statement, tables.key("alice", ids[1]))
    finally:
        await database.dispose()


async def test_a_connection_the_server_ended_is_unavailable_then_replaced(
    database_url: str,
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite has no server to end a connection")
    database = db.Database(make_settings(database_url, db_pool_size=1))
    try:
        async with database.connect() as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            admin = db.make_engine(make_settings(database_url), for_requests=False)
            try:
                async with admin.connect() as other:
                    await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            finally:
                await admin.dispose()
            with pytest.raises(DatabaseUnavailable):
                await db.fetch(conn, task_statements.GET, tables.key("alice", 2**62))
            assert conn.invalidated
        async with database.connect() as conn:  # the pool's one connection, replaced
            assert await db.fetch(conn, task_statements.GET, tables.key("alice", 2**62)) == []
    finally:
        await database.dispose()
