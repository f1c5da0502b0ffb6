"""The schema changes only through Alembic: an empty database upgrades to head, the result is
exactly the models, and every way the service migrates (CLI, startup, racing workers) is safe.

Each test runs once per database kind on a fresh, empty database of that kind.
"""

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, select, text
from sqlmodel import SQLModel

import backend.models.sync  # noqa: F401 - registers the tables (and the task table) on the metadata
from backend import db
from backend.config import Settings
from backend.main import create_app
from backend.models.sync import TOMBSTONE_CHANGES
from backend.services.tables import task_table
from backend.web.state import app_state
from tests.fixtures.app import app_client
from tests.fixtures.databases import make_settings
from tests.fixtures.postgres import PostgresCluster
from tests.helpers import SECRET

INDEX = "ix_task_user_id_created_at_id"
# Every table at head: the tasks, and what safe edits and sync keep (migration 0003).
TABLES = ["alembic_version", "idempotency_key", "sync_state", "task", "task_tombstone"]


def head_revision() -> str:
    head = ScriptDirectory.from_config(db.alembic_config()).get_current_head()
    assert head is not None
    return head


@pytest.fixture
async def fresh_url(
    database_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """A new, empty database of the kind `database_url` is (nothing migrated yet)."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    name = f"fresh_{uuid4().hex}"
    admin = db.make_engine(make_settings(cluster.url("postgres")))  # AUTOCOMMIT: DDL on a db
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield cluster.url(name)
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


@pytest.fixture
def fresh_settings(fresh_url: str) -> Settings:
    return make_settings(fresh_url)


async def inspect_db(settings: Settings, look: Callable[[Connection], Any]) -> Any:
    """Run `look(sync_connection)` on a connection of its own and return what it returns."""
    engine = db.make_engine(settings, for_requests=False)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(look)
    finally:
        await engine.dispose()


def table_names(conn: Connection) -> list[str]:
    return sorted(inspect(conn).get_table_names())


def versions(conn: Connection) -> list[str]:
    return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


def schema_snapshot(conn: Connection) -> dict[str, Any]:
    inspector = inspect(conn)
    return {
        "tables": sorted(inspector.get_table_names()),
        "columns": [
            (c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns("task")
        ],
        "indexes": sorted(
            (i["name"], tuple(i["column_names"]), i["unique"])
            for i in inspector.get_indexes("task")
        ),
        "pk": inspector.get_pk_constraint("task"),
        "versions": versions(conn),
    }


async def test_empty_database_upgrades_to_head(fresh_settings: Settings) -> None:
    assert await inspect_db(fresh_settings, table_names) == []
    await db.migrate(fresh_settings)
    assert await inspect_db(fresh_settings, table_names) == TABLES
    assert await inspect_db(fresh_settings, versions) == [head_revision()]
    assert head_revision() == "0006"


async def test_migrating_twice_is_a_no_op(fresh_settings: Settings) -> None:
    await db.migrate(fresh_settings)
    before = await inspect_db(fresh_settings, schema_snapshot)
    now = datetime.now(UTC)
    engine = db.make_engine(fresh_settings)
    try:
        async with engine.connect() as conn:
            await conn.execute(
                task_table.insert(),
                {"user_id": "alice", "title": "kept", "created_at": now, "updated_at": now},
            )
        await db.migrate(fresh_settings)
        assert await inspect_db(fresh_settings, schema_snapshot) == before
        async with engine.connect() as conn:
            rows = (await conn.execute(select(task_table.c.title, task_table.c.created_at))).all()
    finally:
        await engine.dispose()
    assert [tuple(row) for row in rows] == [("kept", now)]


def model_differences(conn: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(conn), SQLModel.metadata))


async def test_migrated_schema_matches_the_models(fresh_settings: Settings) -> None:
    await db.migrate(fresh_settings)
    assert await inspect_db(fresh_settings, model_differences) == []


async def test_list_indexes_exist(fresh_settings: Settings) -> None:
    await db.migrate(fresh_settings)

    def indexes(conn: Connection) -> dict[str, list[tuple[str | None, list[str | None], bool]]]:
        inspector = inspect(conn)
        return {
            table: sorted(
                (i["name"], i["column_names"], bool(i["unique"]))
                for i in inspector.get_indexes(table)
            )
            for table in ("task", "task_tombstone", "idempotency_key")
        }

    found = await inspect_db(fresh_settings, indexes)
    assert found["task"] == [
        ("ix_task_user_id_change_seq", ["user_id", "change_seq"], False),  # the change feed
        (INDEX, ["user_id", "created_at", "id"], False),
        ("ix_task_user_id_created_at_id_pending", ["user_id", "created_at", "id"], False),
        ("ix_task_user_id_due_at_id", ["user_id", "due_at", "id"], False),
        ("ix_task_user_id_due_at_pending", ["user_id", "due_at"], False),
        ("ix_task_user_id_remind_at", ["user_id", "remind_at"], False),
        ("ix_task_user_id_updated_at_id", ["user_id", "updated_at", "id"], False),
    ]
    assert found["task_tombstone"] == [
        ("ix_task_tombstone_deleted_at", ["deleted_at"], False),  # forgetting old deletions
        ("ix_task_tombstone_user_id_change_seq", ["user_id", "change_seq"], False),
    ]
    assert found["idempotency_key"] == [
        ("ix_idempotency_key_created_at", ["created_at"], False),  # forgetting old keys
        # the bound on keys kept per user
        ("ix_idempotency_key_user_id_created_at", ["user_id", "created_at"], False),
    ]


async def test_concurrent_migrations_leave_one_head(fresh_settings: Settings) -> None:
    results = await asyncio.wait_for(
        asyncio.gather(*(db.migrate(fresh_settings) for _ in range(4)), return_exceptions=True),
        timeout=60,
    )
    assert results == [None, None, None, None]
    assert await inspect_db(fresh_settings, versions) == [head_revision()]
    assert await inspect_db(fresh_settings, model_differences) == []


@pytest.mark.live
async def test_cli_migrate(fresh_settings: Settings, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": fresh_settings.db_url,
        "BETTER_AUTH_SECRET": SECRET,
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "backend.cli", "migrate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert stderr.splitlines()[-1] == "taskapi: database is at the latest migration"
    assert await inspect_db(fresh_settings, versions) == [head_revision()]


async def test_downgrade_to_base_and_upgrade_again(fresh_settings: Settings) -> None:
    await db.migrate(fresh_settings)

    def downgrade(conn: Connection) -> None:
        config = db.alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "base")

    engine = db.make_engine(fresh_settings, for_requests=False)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(downgrade)
    finally:
        await engine.dispose()
    assert await inspect_db(fresh_settings, table_names) == ["alembic_version"]
    assert await inspect_db(fresh_settings, versions) == []

    await db.migrate(fresh_settings)
    assert await inspect_db(fresh_settings, table_names) == TABLES
    assert await inspect_db(fresh_settings, versions) == [head_revision()]
    assert await inspect_db(fresh_settings, model_differences) == []


async def test_startup_migrates_a_fresh_database(
    fresh_url: str, auth: Callable[..., dict[str, str]]
) -> None:
    settings = make_settings(fresh_url, migrate_on_start=True)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert await inspect_db(settings, versions) == [head_revision()]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            response = await http.post(
                "/api/alice/tasks", json={"title": "first"}, headers=auth("alice")
            )
    assert response.status_code == 201, response.text
    assert response.json()["title"] == "first"


async def test_timestamps_are_utc_aware(
    client: httpx.AsyncClient, settings: Settings, auth: Callable[..., dict[str, str]]
) -> None:
    response = await client.post("/api/alice/tasks", json={"title": "t"}, headers=auth("alice"))
    assert response.status_code == 201, response.text
    sent = response.json()
    assert sent["created_at"].endswith("Z")
    assert sent["updated_at"] == sent["created_at"]

    app = create_app(settings)
    try:
        async with app_state(app).db.connect() as conn:
            row = (
                await conn.execute(
                    select(task_table.c.created_at, task_table.c.updated_at).where(
                        task_table.c.id == sent["id"]
                    )
                )
            ).one()
    finally:
        await app_state(app).aclose()
    for stored in (row.created_at, row.updated_at):
        assert isinstance(stored, datetime)
        assert stored.tzinfo is not None
        assert stored.utcoffset() == timedelta(0)
    assert row.created_at == datetime.fromisoformat(sent["created_at"])


def _alembic(conn: Connection, action: str, revision: str) -> None:
    config = db.alembic_config()
    config.attributes["connection"] = conn
    getattr(command, action)(config, revision)


async def _run_alembic(settings: Settings, action: str, revision: str) -> None:
    engine = db.make_engine(settings, for_requests=False)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_alembic, action, revision)
    finally:
        await engine.dispose()


async def test_organise_migration_upgrades_a_database_with_tasks_and_downgrades(
    fresh_settings: Settings, auth: Callable[..., dict[str, str]]
) -> None:
    # A database as the first release left it, with tasks in it.
    await _run_alembic(fresh_settings, "upgrade", "0001")
    created = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    done = datetime(2026, 11, 21, 18, 0, tzinfo=UTC)
    old_task = text(
        "INSERT INTO task (user_id, title, description, completed, created_at, updated_at) "
        "VALUES (:user_id, :title, :description, :completed, :created_at, :updated_at)"
    )
    rows = [
        ("alice", "Écrire le RAPPORT", "Straße", False, created, created),
        ("alice", "Paid", None, True, created, done),
        ("bob", "Bob's", "b", False, created, created),
    ]
    engine = db.make_engine(fresh_settings, for_requests=False)
    try:
        async with engine.begin() as conn:
            for user, title, description, completed, created_at, updated_at in rows:
                await conn.execute(
                    old_task,
                    {
                        "user_id": user,
                        "title": title,
                        "description": description,
                        "completed": completed,
                        # SQLite's DateTime stores naive UTC text; PostgreSQL takes aware values.
                        "created_at": created_at
                        if "postgresql" in fresh_settings.db_url
                        else created_at.replace(tzinfo=None),
                        "updated_at": updated_at
                        if "postgresql" in fresh_settings.db_url
                        else updated_at.replace(tzinfo=None),
                    },
                )
    finally:
        await engine.dispose()

    await db.migrate(fresh_settings)
    assert await inspect_db(fresh_settings, versions) == [head_revision()]
    async with app_client(fresh_settings) as http:
        listed = (await http.get("/api/alice/tasks?sort=title", headers=auth("alice"))).json()
        defaults: dict[str, Any] = {
            "priority": "medium",
            "tags": [],
            "due_at": None,
            "remind_at": None,
        }
        assert [
            {k: task[k] for k in ("title", "completed", "completed_at", *defaults)}
            for task in listed
        ] == [
            {
                "title": "Paid",
                "completed": True,
                "completed_at": "2026-11-21T18:00:00Z",  # its last update: the best known
                **defaults,
            },
            {"title": "Écrire le RAPPORT", "completed": False, "completed_at": None, **defaults},
        ]
        # The folded search copies were filled in for the old rows.
        found = await http.get("/api/alice/tasks?q=écrire le rapport", headers=auth("alice"))
        assert [task["title"] for task in found.json()] == ["Écrire le RAPPORT"]
        found = await http.get("/api/alice/tasks?q=STRASSE", headers=auth("alice"))
        assert [task["title"] for task in found.json()] == ["Écrire le RAPPORT"]
        # New fields work on old rows.
        patched = await http.patch(
            f"/api/alice/tasks/{listed[1]['id']}",
            json={"priority": "high", "tags": ["work"]},
            headers=auth("alice"),
        )
        assert patched.status_code == 200, patched.text

    await _run_alembic(fresh_settings, "downgrade", "0001")

    def old_rows(conn: Connection) -> list[tuple[Any, ...]]:
        columns = [c["name"] for c in inspect(conn).get_columns("task")]
        assert columns == [
            "id",
            "user_id",
            "title",
            "description",
            "completed",
            "created_at",
            "updated_at",
        ]
        query = text("SELECT user_id, title, completed FROM task ORDER BY id")
        return [tuple(row) for row in conn.execute(query)]

    assert await inspect_db(fresh_settings, old_rows) == [
        ("alice", "Écrire le RAPPORT", False),
        ("alice", "Paid", True),
        ("bob", "Bob's", False),
    ]
    await db.migrate(fresh_settings)
    assert await inspect_db(fresh_settings, model_differences) == []


async def test_sync_migration_numbers_existing_tasks_and_downgrades(
    fresh_settings: Settings, auth: Callable[..., dict[str, str]]
) -> None:
    # A database as the organise release left it, with two users' tasks interleaved.
    await _run_alembic(fresh_settings, "upgrade", "0002")
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    if fresh_settings.db_url.startswith("sqlite"):
        now = now.replace(tzinfo=None)  # SQLite's DateTime stores naive UTC
    insert_old = text(
        "INSERT INTO task (user_id, title, completed, created_at, updated_at) "
        "VALUES (:user_id, :title, false, :now, :now)"
    )
    owners = ["alice", "bob", "alice", "bob", "alice"]
    engine = db.make_engine(fresh_settings, for_requests=False)
    try:
        async with engine.begin() as conn:
            for n, user_id in enumerate(owners):
                await conn.execute(insert_old, {"user_id": user_id, "title": f"t{n}", "now": now})
    finally:
        await engine.dispose()

    await db.migrate(fresh_settings)
    assert await inspect_db(fresh_settings, versions) == [head_revision()]

    def numbering(conn: Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        tasks = conn.execute(text("SELECT user_id, version, change_seq FROM task ORDER BY id"))
        states = conn.execute(
            text("SELECT user_id, seq, purged_seq FROM sync_state ORDER BY user_id")
        )
        return [tuple(row) for row in tasks], [tuple(row) for row in states]

    # Version 1 each, numbered per owner in id order; each owner's sequence at their last one.
    assert await inspect_db(fresh_settings, numbering) == (
        [("alice", 1, 1), ("bob", 1, 1), ("alice", 1, 2), ("bob", 1, 2), ("alice", 1, 3)],
        [("alice", 3, 0), ("bob", 2, 0)],
    )
    async with app_client(fresh_settings) as http:
        base = "/api/alice/tasks"
        listed = await http.get(f"{base}?sort=title", headers=auth("alice"))
        assert listed.headers["x-sync-token"] == "3"
        alices = listed.json()
        assert [(t["title"], t["version"]) for t in alices] == [("t0", 1), ("t2", 1), ("t4", 1)]
        feed = (await http.get(f"{base}/changes", headers=auth("alice"))).json()
        assert feed == {"changed": alices, "deleted": [], "next": "3", "has_more": False}
        feed = (await http.get(f"{base}/changes?since=1", headers=auth("alice"))).json()
        assert [t["title"] for t in feed["changed"]] == ["t2", "t4"]
        # The triggers carry each owner's sequence on from the migrated numbers.
        url = f"{base}/{alices[0]['id']}"
        patched = await http.patch(url, json={"title": "t0 edited"}, headers=auth("alice"))
        assert patched.json()["version"] == 2
        deleted = await http.delete(f"{base}/{alices[1]['id']}", headers=auth("alice"))
        assert deleted.status_code == 200, deleted.text
        feed = (await http.get(f"{base}/changes?since=3", headers=auth("alice"))).json()
        assert feed == {
            "changed": [patched.json()],
            "deleted": [alices[1]["id"]],
            "next": "5",
            "has_more": False,
        }
        bobs = await http.get("/api/bob/tasks", headers=auth("bob"))
        assert bobs.headers["x-sync-token"] == "2"
        # A user with no tasks before the migration gets a sequence of their own.
        created = await http.post("/api/carol/tasks", json={"title": "c"}, headers=auth("carol"))
        assert created.json()["version"] == 1
        carols = await http.get("/api/carol/tasks", headers=auth("carol"))
        assert carols.headers["x-sync-token"] == "1"

    await _run_alembic(fresh_settings, "downgrade", "0002")

    def columns(conn: Connection) -> list[str]:
        return [c["name"] for c in inspect(conn).get_columns("task")]

    assert await inspect_db(fresh_settings, table_names) == ["alembic_version", "task"]
    assert {"version", "change_seq"}.isdisjoint(await inspect_db(fresh_settings, columns))
    # The triggers went too: tasks are written at 0002 as they were.
    engine = db.make_engine(fresh_settings, for_requests=False)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert_old, {"user_id": "bob", "title": "at 0002", "now": now})
            await conn.execute(text("UPDATE task SET title = 'renamed' WHERE title = 't1'"))
            await conn.execute(text("DELETE FROM task WHERE title = 't3'"))
    finally:
        await engine.dispose()
    await db.migrate(fresh_settings)
    assert await inspect_db(fresh_settings, model_differences) == []
    # Upgraded again, the tasks left are numbered afresh, per owner in id order.
    assert await inspect_db(fresh_settings, numbering) == (
        [("alice", 1, 1), ("bob", 1, 1), ("alice", 1, 2), ("carol", 1, 1), ("bob", 1, 2)],
        [("alice", 2, 0), ("bob", 2, 0), ("carol", 1, 0)],
    )


async def test_ids_are_never_reused_across_migrations(
    fresh_settings: Settings, auth: Callable[..., dict[str, str]]
) -> None:
    # SQLite rebuilds the table to alter it: the copy must stay AUTOINCREMENT and keep the
    # sequence, or the ids of tasks deleted before the migration would be handed out again.
    await _run_alembic(fresh_settings, "upgrade", "0001")
    insert_old = text(
        "INSERT INTO task (user_id, title, completed, created_at, updated_at) "
        "VALUES ('alice', :title, false, :now, :now)"
    )
    now = datetime(2026, 11, 20, tzinfo=UTC)
    if fresh_settings.db_url.startswith("sqlite"):
        now = now.replace(tzinfo=None)  # SQLite's DateTime stores naive UTC
    engine = db.make_engine(fresh_settings, for_requests=False)
    try:
        async with engine.begin() as conn:
            for n in range(3):
                await conn.execute(insert_old, {"title": f"old {n}", "now": now})
            await conn.execute(text("DELETE FROM task WHERE title IN ('old 1', 'old 2')"))
    finally:
        await engine.dispose()
    await db.migrate(fresh_settings)  # ids 2 and 3 were deleted before the migration
    await _run_alembic(fresh_settings, "downgrade", "0001")
    await db.migrate(fresh_settings)
    async with app_client(fresh_settings) as http:
        first = await http.post("/api/alice/tasks", json={"title": "new"}, headers=auth("alice"))
        assert first.status_code == 201, first.text
        assert first.json()["id"] == 4
        deleted = await http.delete(f"/api/alice/tasks/{first.json()['id']}", headers=auth("alice"))
        assert deleted.status_code == 200
        second = await http.post("/api/alice/tasks", json={"title": "next"}, headers=auth("alice"))
        assert second.json()["id"] == 5


async def test_quota_migration_counts_existing_tasks_and_downgrades(
    fresh_settings: Settings,
) -> None:
    # A database as the sync release left it: its triggers number the tasks written here.
    await _run_alembic(fresh_settings, "upgrade", "0003")
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    if fresh_settings.db_url.startswith("sqlite"):
        now = now.replace(tzinfo=None)  # SQLite's DateTime stores naive UTC
    insert = text(
        "INSERT INTO task (user_id, title, completed, created_at, updated_at) "
        "VALUES (:user_id, :title, false, :now, :now)"
    )

    owners = ["alice", "bob", "alice", "alice", "carol"]
    engine = db.make_engine(fresh_settings, for_requests=False)
    try:
        async with engine.begin() as conn:
            for n, user_id in enumerate(owners):
                await conn.execute(insert, {"user_id": user_id, "title": f"t{n}", "now": now})
            # carol had a task and has none now
            await conn.execute(text("DELETE FROM task WHERE user_id = 'carol'"))
    finally:
        await engine.dispose()

    await db.migrate(fresh_settings)
    assert await inspect_db(fresh_settings, versions) == [head_revision()]

    def counts(conn: Connection) -> list[tuple[Any, ...]]:
        query = text("SELECT user_id, seq, task_count FROM sync_state ORDER BY user_id")
        return [tuple(row) for row in conn.execute(query)]

    assert await inspect_db(fresh_settings, counts) == [
        ("alice", 3, 3),
        ("bob", 1, 1),
        ("carol", 2, 0),
    ]
    # From here on the triggers keep the count: +1 an insert (a new user too), -1 a delete,
    # nothing an update.
    engine = db.make_engine(fresh_settings, for_requests=False)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert, {"user_id": "dave", "title": "d", "now": now})
            await conn.execute(insert, {"user_id": "bob", "title": "b", "now": now})
            await conn.execute(text("DELETE FROM task WHERE title = 't0'"))
            await conn.execute(text("UPDATE task SET version = 2 WHERE title = 't2'"))
    finally:
        await engine.dispose()
    assert await inspect_db(fresh_settings, counts) == [
        ("alice", 5, 2),
        ("bob", 2, 2),
        ("carol", 2, 0),
        ("dave", 1, 1),
    ]
    assert await inspect_db(fresh_settings, model_differences) == []

    await _run_alembic(fresh_settings, "downgrade", "0003")

    def columns(conn: Connection) -> list[str]:
        return [c["name"] for c in inspect(conn).get_columns("sync_state")]

    assert await inspect_db(fresh_settings, columns) == ["user_id", "seq", "purged_seq"]
    # The 0003 triggers are back, and still number changes.
    engine = db.make_engine(fresh_settings, for_requests=False)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert, {"user_id": "bob", "title": "at 0003", "now": now})
            await conn.execute(text("DELETE FROM task WHERE title = 't2'"))
    finally:
        await engine.dispose()

    def sequences(conn: Connection) -> list[tuple[Any, ...]]:
        query = text("SELECT user_id, seq FROM sync_state ORDER BY user_id")
        return [tuple(row) for row in conn.execute(query)]

    assert await inspect_db(fresh_settings, sequences) == [
        ("alice", 6),
        ("bob", 3),
        ("carol", 2),
        ("dave", 1),
    ]
    await db.migrate(fresh_settings)
    assert await inspect_db(fresh_settings, counts) == [
        ("alice", 6, 1),
        ("bob", 3, 3),
        ("carol", 2, 0),
        ("dave", 1, 1),
    ]


def test_the_tombstone_bound_of_the_triggers_is_the_model_s() -> None:
    # A migration is frozen (it cannot import the constant); the number in its SQL must agree.
    script = ScriptDirectory.from_config(db.alembic_config()).get_revision("0005")
    assert script is not None
    assert script.path is not None
    sql = Path(script.path).read_text()
    assert set(re.findall(r"\b\d{5,}\b", sql)) == {str(TOMBSTONE_CHANGES)}


async def test_deletion_bookkeeping_migration_counts_per_statement_and_downgrades(
    fresh_settings: Settings,
) -> None:
    # 0005 turns PostgreSQL's per-row delete trigger into one per statement and bounds the
    # tombstones a user keeps: a database at 0004 with tasks keeps counting exactly.
    await _run_alembic(fresh_settings, "upgrade", "0004")
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    if fresh_settings.db_url.startswith("sqlite"):
        now = now.replace(tzinfo=None)  # SQLite's DateTime stores naive UTC
    insert = text(
        "INSERT INTO task (user_id, title, completed, created_at, updated_at) "
        "VALUES (:user_id, :title, :completed, :now, :now)"
    )

    async def write(*statements: tuple[Any, dict[str, Any]]) -> None:
        engine = db.make_engine(fresh_settings, for_requests=False)
        try:
            async with engine.begin() as conn:
                for statement, values in statements:
                    await conn.execute(statement, values)
        finally:
            await engine.dispose()

    def state(conn: Connection) -> list[tuple[Any, ...]]:
        query = text(
            "SELECT s.user_id, s.seq, s.task_count, s.purged_seq, "
            "(SELECT count(*) FROM task_tombstone t WHERE t.user_id = s.user_id) "
            "FROM sync_state s ORDER BY s.user_id"
        )
        return [tuple(row) for row in conn.execute(query)]

    owners = ["alice", "bob", "alice", "alice", "bob"]
    await write(
        *(
            (insert, {"user_id": user, "title": f"t{n}", "completed": n % 2 == 0, "now": now})
            for n, user in enumerate(owners)
        )
    )
    await db.migrate(fresh_settings)
    assert await inspect_db(fresh_settings, versions) == [head_revision()]
    assert await inspect_db(fresh_settings, model_differences) == []
    # One statement deleting for two owners: each owner's counter once, tombstones numbered.
    await write((text("DELETE FROM task WHERE completed"), {}))
    assert await inspect_db(fresh_settings, state) == [
        ("alice", 5, 1, 0, 2),
        ("bob", 3, 1, 0, 1),
    ]

    def tombstones(conn: Connection) -> list[tuple[Any, ...]]:
        query = text("SELECT user_id, change_seq FROM task_tombstone ORDER BY change_seq")
        return [tuple(row) for row in conn.execute(query)]

    assert await inspect_db(fresh_settings, tombstones) == [("bob", 3), ("alice", 4), ("alice", 5)]

    await _run_alembic(fresh_settings, "downgrade", "0004")
    await write((text("DELETE FROM task WHERE user_id = 'bob'"), {}))
    assert await inspect_db(fresh_settings, state) == [
        ("alice", 5, 1, 0, 2),
        ("bob", 4, 0, 0, 2),
    ]
    await db.migrate(fresh_settings)
    assert await inspect_db(fresh_settings, model_differences) == []
