"""Bounds that hold whatever an ordinary account sends: what one process keeps for the shapes of
the requests it serves, and what the database keeps for each user (tombstones, idempotency keys).
Through the real app, on both databases; the sizes are asserted, never the memory of the process."""

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, get_args
from urllib.parse import urlencode
from uuid import uuid4

import httpx
import pytest
from sqlalchemy import Integer, bindparam, insert, select, text

from backend import db
from backend.config import Settings
from backend.models.sync import TOMBSTONE_CHANGES
from backend.models.task import UTCDateTime
from backend.schemas.task import SortKey
from backend.services import listing, statements
from backend.services.idempotency import KEYS_PER_USER, key_table
from backend.services.tables import STATEMENTS_KEPT
from backend.web.state import app_state
from tests.fixtures.app import running_app
from tests.fixtures.databases import make_settings
from tests.helpers import Auth


@pytest.fixture
def settings(database_url: str) -> Settings:
    # These tests send thousands of requests as one user; the rate limit has tests of its own.
    return make_settings(database_url, rate_limit=0)


_FILTERS: tuple[tuple[str, str], ...] = (
    ("q", "milk"),
    ("due_before", "2030-01-01T00:00:00Z"),
    ("due_after", "2001-01-01T00:00:00Z"),
    ("overdue", "true"),
    ("remind_before", "2030-01-01T00:00:00Z"),
)


def _distinct_list_queries() -> Iterator[list[tuple[str, str]]]:
    """Valid list queries of distinct statement shapes: sort x status x number of tags x the
    optional filters (10 x 3 x 2 x 32 = 1,920 of them)."""
    for sort, status, tag_count, chosen in itertools.product(
        get_args(SortKey),
        ("all", "pending", "completed"),
        range(2),
        itertools.product((False, True), repeat=len(_FILTERS)),
    ):
        query = [("sort", sort), ("status", status), ("limit", "5")]
        query += [("tag", f"t{n}") for n in range(tag_count)]
        query += [pair for pair, on in zip(_FILTERS, chosen, strict=True) if on]
        yield query


def _sizes() -> dict[str, int]:
    builders: dict[str, Any] = {
        "list": listing._list_statement,
        "empty page": listing._empty_page_statement,
        "total": listing._total,
        "update": statements.update_statement,
        "create": statements.create_statement,
    }
    return {name: builder.cache_info().currsize for name, builder in builders.items()}


@pytest.mark.slow  # thousands of requests
async def test_statement_caches_stay_bounded_under_thousands_of_distinct_valid_requests(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    # A cache keyed by what requests send must have a bound: every distinct combination of
    # list filters and sort (80,640 are valid) kept a compiled statement for the life of the
    # process (about 68 KiB each), and so did every distinct set of fields a PATCH sends.
    headers = auth("alice")
    created = await client.post("/api/alice/tasks", headers=headers, json={"title": "Milk"})
    assert created.status_code == 201
    task_id = created.json()["id"]
    shapes = 0
    for query in _distinct_list_queries():
        response = await client.get(f"/api/alice/tasks?{urlencode(query)}", headers=headers)
        assert response.status_code == 200, response.text
        shapes += 1
    fields = {
        "title": "Milk",
        "description": "two litres",
        "priority": "high",
        "tags": ["home"],
        "due_at": "2030-01-01T00:00:00Z",
        "remind_at": "2029-12-31T00:00:00Z",
        "completed": False,
    }
    for count in range(1, len(fields) + 1):
        for names in itertools.combinations(fields, count):
            body = {name: fields[name] for name in names}
            response = await client.patch(f"/api/alice/tasks/{task_id}", headers=headers, json=body)
            assert response.status_code == 200, response.text
            shapes += 1
    assert shapes > 2_000
    sizes = _sizes()
    assert sizes["list"] == STATEMENTS_KEPT
    assert all(size <= STATEMENTS_KEPT for size in sizes.values()), sizes
    # A prepared statement keeps at most one plan per kind of database.
    assert len(statements.GET._plans) <= 2


# --- what the database keeps per user -----------------------------------------------------------

LARGE = 100_000


async def _seed_many(database: db.Database, user: str, count: int) -> None:
    """`count` tasks of `user`, every other one completed, numbered 1..count in the change
    sequence, loaded with the triggers off (as bench/seed.py loads): row by row they would make
    the load itself take longer than the test."""
    dialect = database.engine.dialect.name
    numbers = (
        "generate_series(1, :count) AS n"
        if dialect == "postgresql"
        else "(WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < :count)"
        " SELECT n FROM s)"
    )
    columns = (
        "user_id, title, title_fold, completed, completed_at, created_at, updated_at, change_seq"
    )
    values = "SELECT :user, 'task ' || n, 'task ' || n, n % 2 = 0, "
    values += "CASE WHEN n % 2 = 0 THEN :now END, :now, :now, n"
    load = text(f"INSERT INTO task ({columns}) {values} FROM {numbers}").bindparams(
        bindparam("now", type_=UTCDateTime()), bindparam("count", type_=Integer())
    )
    state = text(
        "INSERT INTO sync_state (user_id, seq, purged_seq, task_count) "
        "VALUES (:user, :count, 0, :count)"
    )
    given = {"user": user, "count": count, "now": datetime(2026, 12, 7, tzinfo=UTC)}
    async with database.connect() as conn, db.transaction(conn):
        if dialect == "postgresql":
            await conn.execute(text("ALTER TABLE task DISABLE TRIGGER USER"))
            await conn.execute(load, given)
            await conn.execute(text("ALTER TABLE task ENABLE TRIGGER USER"))
        else:
            triggers = (
                await conn.execute(
                    text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
                )
            ).all()
            for name, _ in triggers:
                await conn.execute(text(f'DROP TRIGGER "{name}"'))
            await conn.execute(load, given)
            for _, sql in triggers:
                await conn.execute(text(sql))
        await conn.execute(state, given)


async def _kept(database: db.Database, user: str) -> tuple[int, int, int, int]:
    """(seq, task_count, purged_seq, tombstones) of the user."""
    async with database.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT seq, task_count, purged_seq, "
                    "(SELECT count(*) FROM task_tombstone WHERE user_id = :user) "
                    "FROM sync_state WHERE user_id = :user"
                ),
                {"user": user},
            )
        ).one()
    return (int(row[0]), int(row[1]), int(row[2]), int(row[3]))


@pytest.mark.slow  # a hundred thousand tasks
async def test_clearing_a_large_account_succeeds_within_the_statement_timeout(
    settings: Settings, auth: Auth
) -> None:
    # On PostgreSQL the delete trigger ran once per row: from about 20,000 tasks "clear
    # completed" outlasted the statement timeout (503, nothing deleted). The feed and the
    # counts stay exact, and the tombstones kept are bounded.
    assert settings.db_statement_timeout == 5.0  # the default: the bound this must hold within
    user = f"large-{uuid4().hex[:8]}"
    async with running_app(settings) as (app, http):
        await _seed_many(app_state(app).db, user, LARGE)
        async with app_state(app).db.connect() as conn:
            query = text("SELECT id FROM task WHERE user_id = :user AND completed ORDER BY id")
            completed = list((await conn.execute(query, {"user": user})).scalars())
        url = f"/api/{user}/tasks"
        cleared = await http.delete(f"{url}?status=completed", headers=auth(user))
        assert cleared.status_code == 200, cleared.text
        assert cleared.json() == {"deleted": LARGE // 2}
        listed = await http.get(f"{url}?limit=1", headers=auth(user))
        assert listed.headers["X-Total-Count"] == str(LARGE // 2)
        latest = LARGE + LARGE // 2
        # The deletions of the user's last TOMBSTONE_CHANGES changes are remembered; a token
        # from before them has expired.
        assert await _kept(app_state(app).db, user) == (
            latest,
            LARGE // 2,
            latest - TOMBSTONE_CHANGES,
            TOMBSTONE_CHANGES,
        )
        expired = await http.get(f"{url}/changes?since={LARGE}", headers=auth(user))
        assert expired.status_code == 410
        since = latest - TOMBSTONE_CHANGES
        feed = await http.get(f"{url}/changes?since={since}&limit=3", headers=auth(user))
        assert feed.status_code == 200, feed.text
        # The deleted tasks, numbered in id order: the feed has the newest TOMBSTONE_CHANGES.
        assert feed.json()["deleted"] == completed[-TOMBSTONE_CHANGES:][:3]
        assert feed.json()["has_more"] is True

        everything = await http.delete(f"{url}?status=all", headers=auth(user))
        assert everything.status_code == 200, everything.text
        assert everything.json() == {"deleted": LARGE // 2}
        listed = await http.get(url, headers=auth(user))
        assert (listed.json(), listed.headers["X-Total-Count"]) == ([], "0")
        latest += LARGE // 2
        assert await _kept(app_state(app).db, user) == (
            latest,
            0,
            latest - TOMBSTONE_CHANGES,
            TOMBSTONE_CHANGES,
        )
        tail = await http.get(f"{url}/changes?since={latest - 2}", headers=auth(user))
        assert len(tail.json()["deleted"]) == 2


async def test_a_user_s_stored_idempotent_responses_are_bounded(
    settings: Settings, auth: Auth
) -> None:
    # Keys were kept 24 hours whatever their number: bounded only by how many requests a user
    # could send in a day. A user's newest KEYS_PER_USER are kept now.
    user, other = f"keys-{uuid4().hex[:8]}", f"keys-{uuid4().hex[:8]}"
    started = datetime.now(UTC) - timedelta(hours=1)
    stored = [
        {
            "user_id": owner,
            "key": f"old-{n}",
            "request_hash": "0" * 64,
            "created_at": started + timedelta(seconds=n),
            "status": 201,
            "body": "{}",
        }
        for owner in (user, other)
        for n in range(KEYS_PER_USER + 200)
    ]

    async def keys(owner: str) -> list[str]:
        async with app_state(app).db.connect() as conn:
            query = select(key_table.c.key).where(key_table.c.user_id == owner)
            return list((await conn.execute(query)).scalars())

    async with running_app(settings) as (app, http):
        async with app_state(app).db.connect() as conn, db.transaction(conn):
            await conn.execute(insert(key_table), stored)
        created = await http.post(
            f"/api/{user}/tasks",
            json={"title": "once"},
            headers={**auth(user), "Idempotency-Key": "new"},
        )
        assert created.status_code == 201, created.text
        kept = await keys(user)
        assert len(kept) == KEYS_PER_USER
        assert set(kept) == {"new"} | {f"old-{n}" for n in range(201, KEYS_PER_USER + 200)}
        assert len(await keys(other)) == KEYS_PER_USER + 200  # another user's are theirs
        # The newest are still replayed.
        again = await http.post(
            f"/api/{user}/tasks",
            json={"title": "once"},
            headers={**auth(user), "Idempotency-Key": "new"},
        )
        assert again.headers["Idempotent-Replayed"] == "true"
