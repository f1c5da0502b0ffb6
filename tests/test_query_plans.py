"""A user's list reads the task table through its indexes, whatever the query (PostgreSQL).

Each test asks the real endpoint for a list and captures the statements the service sends to
the driver; each is then EXPLAINed on a table of 25,000 tasks of 500 users (ANALYZEd), twice:
planned for the values sent (what an unprepared statement gets, as behind PgBouncer) and as
the generic plan (what a statement that asyncpg prepared gets after its fifth run). Neither
may hold a sequential scan of the task table: other users' tasks are never read. A change to
the service's SQL that loses the index (a function around `user_id`, a count without it, a
cursor condition no index can start from, a pending filter its partial index cannot serve)
fails here. Plans only, never timings: the latency at scale is bench/scale.py's to measure.

SQLite is not checked: its planner is another one, and bench/scale.py measures it.
"""

import asyncio
import json
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from uuid import uuid4

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection

from backend import db
from backend.services.tables import fold, tag_keys
from backend.web.state import app_state
from tests.fixtures.app import running_app
from tests.fixtures.databases import database_kinds, make_settings
from tests.fixtures.postgres import PostgresCluster

pytestmark = pytest.mark.skipif(
    "postgresql" not in database_kinds(),
    reason="query plans are checked on PostgreSQL only (SQLite's are measured by bench/scale.py)",
)

USERS, TASKS_EACH = 500, 50
USER = "user-0007"
NOW = datetime.now(UTC).replace(microsecond=0)
SOON, LAST_MONTH = NOW + timedelta(days=7), NOW - timedelta(days=30)
TAGS = ("work", "home", "errands", "health", "Études", "family", "car", "someday")
TITLES = ("Call the dentist", "Buy groceries", "Pay the electricity bill", "Renew passport",
          "Book flights to Lisbon", "Fix the bike", "Réserver le café",
          "Send Étienne the slides")  # fmt: skip
COLUMNS = ("user_id", "title", "title_fold", "description", "description_fold", "completed",
           "completed_at", "created_at", "updated_at", "priority", "tags", "tag_keys", "due_at",
           "remind_at")  # fmt: skip
SORTS = ("created_at", "updated_at", "due_at", "priority", "title")
# Sorts that have an index in their order: their cursor must be where an index scan starts.
INDEXED_SORTS = ("created_at", "updated_at")


def _rows() -> Iterator[tuple[Any, ...]]:
    """USERS users' tasks, interleaved in time (as users write them), with every field varied."""
    rng = random.Random(0)
    start = NOW - timedelta(days=365)
    for n in range(USERS * TASKS_EACH):
        created = start + timedelta(minutes=20 * n)
        title = f"{rng.choice(TITLES)} #{n}"
        description = rng.choice((None, "Before Friday.", "Ask Anna first."))
        tags = rng.sample(TAGS, rng.choice((0, 1, 1, 2, 3)))
        completed = rng.random() < 0.4
        due = rng.choice((None, NOW + timedelta(hours=rng.randint(-2000, 4000))))
        remind = due - timedelta(hours=2) if due is not None and rng.random() < 0.3 else None
        yield (
            f"user-{n % USERS:04d}", title, fold(title), description,
            None if description is None else fold(description), completed,
            created + timedelta(days=1) if completed else None, created, created,
            rng.choice((1, 2, 2, 3)), json.dumps(tags), tag_keys(tags), due, remind,
        )  # fmt: skip


async def _admin(cluster: PostgresCluster, sql: str) -> None:
    engine = db.make_engine(make_settings(cluster.url("postgres")))
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


async def _load(url: str) -> None:
    await db.migrate(make_settings(url))
    engine = db.make_engine(make_settings(url))
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
                "task", records=_rows(), columns=COLUMNS
            )
            await conn.exec_driver_sql("VACUUM ANALYZE task")
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def plans_url(postgres: PostgresCluster) -> Iterator[str]:
    """A database of the module's own on the session cluster, loaded and analysed once."""
    name = f"plans_{uuid4().hex}"
    asyncio.run(_admin(postgres, f'CREATE DATABASE "{name}"'))
    try:
        asyncio.run(_load(postgres.url(name)))
        yield postgres.url(name)
    finally:
        asyncio.run(_admin(postgres, f'DROP DATABASE "{name}" WITH (FORCE)'))


Statement = tuple[str, Any]


async def _statements(url: str, auth: dict[str, str], query: str, page: int) -> list[Statement]:
    """The statements the service sends for page `page` of GET …/tasks?query, as the driver
    receives them (SQL and parameters)."""
    async with running_app(make_settings(url)) as (app, http):
        captured: list[Statement] = []

        def capture(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
            captured.append((statement, parameters))

        path: str | None = f"/api/{USER}/tasks?{query}"
        for _ in range(page):
            assert path is not None, f"the list has fewer than {page} pages"
            captured.clear()
            event.listen(app_state(app).db.engine.sync_engine, "before_cursor_execute", capture)
            try:
                response = await http.get(path, headers=auth)
            finally:
                event.remove(app_state(app).db.engine.sync_engine, "before_cursor_execute", capture)
            assert response.status_code == 200, response.text
            path = response.links.get("next", {}).get("url")
        assert captured
        return captured


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'"
    if isinstance(value, bool):
        return "true" if value else "false"
    assert isinstance(value, int | float), value
    return str(value)


async def _plans(conn: AsyncConnection, statement: Statement) -> dict[str, dict[str, Any]]:
    """EXPLAIN of the statement: planned for its values, and as its generic plan."""
    sql, parameters = statement
    explained = await conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql, parameters)
    custom = explained.scalar_one()[0]["Plan"]  # the dialect decodes json
    await conn.exec_driver_sql("PREPARE checked_statement AS " + sql)
    try:
        await conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        arguments = ", ".join(_literal(value) for value in parameters)
        explained = await conn.exec_driver_sql(
            f"EXPLAIN (FORMAT JSON) EXECUTE checked_statement({arguments})"
        )
        generic = explained.scalar_one()[0]["Plan"]
    finally:
        await conn.exec_driver_sql("DEALLOCATE checked_statement")
        await conn.exec_driver_sql("RESET plan_cache_mode")
    return {"custom plan": custom, "generic plan": generic}


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _describe(node: dict[str, Any]) -> str:
    parts = [node["Node Type"]]
    if "Index Name" in node:
        parts.append(f"using {node['Index Name']}")
    if "Relation Name" in node:
        parts.append(f"on {node['Relation Name']}")
    if "Index Cond" in node:
        parts.append(f"[{node['Index Cond']}]")
    return " ".join(parts)


async def _check(url: str, auth: dict[str, str], query: str, page: int = 1) -> list[str]:
    """Assert that no plan of the request's statements scans the task table sequentially and
    that each reads it through one of its indexes; return the indexes used and every index
    condition seen."""
    statements = await _statements(url, auth, query, page)
    seen: list[str] = []
    engine = db.make_engine(make_settings(url))
    try:
        async with engine.connect() as conn:
            for statement in statements:
                for kind, plan in (await _plans(conn, statement)).items():
                    nodes = list(_nodes(plan))
                    shown = "\n  ".join(map(_describe, nodes))
                    where = f"{kind} of {statement[0]}\n  {shown}"
                    assert not any(
                        n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "task"
                        for n in nodes
                    ), f"a sequential scan of the task table in the {where}"
                    assert any(
                        n.get("Index Name", "").startswith(("ix_task_", "pk_task")) for n in nodes
                    ), f"no index of the task table in the {where}"
                    seen += [n["Index Name"] for n in nodes if "Index Name" in n]
                    seen += [n["Index Cond"] for n in nodes if "Index Cond" in n]
    finally:
        await engine.dispose()
    return seen


def _query(**params: str) -> str:
    return urlencode(params)


LISTS = {
    "default": "",
    **{f"sort={sort}": _query(sort=sort) for sort in SORTS},
    **{f"sort=-{sort}": _query(sort=f"-{sort}") for sort in SORTS},
    "status=pending": _query(status="pending"),
    "status=completed": _query(status="completed"),
    "priority=high": _query(priority="high"),
    "priority=low,medium": _query(priority="low,medium"),
    "tag": _query(tag="work"),
    "two tags": "tag=work&tag=%C3%89tudes",
    "q": _query(q="dentist"),
    "q non-ASCII": _query(q="étienne"),
    "due_before": _query(due_before=SOON.isoformat()),
    "due_after": _query(due_after=LAST_MONTH.isoformat()),
    "due range": _query(due_after=LAST_MONTH.isoformat(), due_before=SOON.isoformat()),
    "overdue": _query(overdue="true"),
    "remind_before": _query(remind_before=SOON.isoformat()),
    "combined": _query(status="pending", priority="high,medium", tag="work", sort="due_at"),
    # An empty page: the count runs as a statement of its own.
    "nothing matches": _query(q="no task says this"),
    "small page": _query(limit="10"),
}


# Filters with an index of their own (a partial one): the plans must use it.
OWN_INDEX = {
    "status=pending": "ix_task_user_id_created_at_id_pending",
    "overdue": "ix_task_user_id_due_at_pending",
    "remind_before": "ix_task_user_id_remind_at",
}


@pytest.mark.parametrize("name", LISTS)
async def test_a_list_reads_only_the_users_rows_through_an_index(
    plans_url: str, auth: Callable[..., dict[str, str]], name: str
) -> None:
    used = await _check(plans_url, auth(USER), LISTS[name])
    if name in OWN_INDEX:
        assert OWN_INDEX[name] in used, used


@pytest.mark.parametrize("sort", [*SORTS, *(f"-{sort}" for sort in SORTS)])
async def test_a_cursor_page_reads_through_an_index(
    plans_url: str, auth: Callable[..., dict[str, str]], sort: str
) -> None:
    seen = await _check(plans_url, auth(USER), _query(sort=sort, limit="10"), page=3)
    column = sort.removeprefix("-")
    if column in INDEXED_SORTS:
        # The page starts where the index is at the cursor's key, not at the user's first row.
        assert any(f"{column} <" in c or f"{column} >" in c for c in seen), seen
