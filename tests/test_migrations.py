"""The schema changes only through Alembic: an empty database upgrades to head, the result is
exactly the models, and every way the service migrates (CLI, startup, racing workers) is safe.

Each test runs once per database kind on a fresh, empty database of that kind.
"""

import asyncio
import os
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

import backend.models.task  # noqa: F401 - registers the table on the metadata
from backend import db
from backend.config import Settings
from backend.main import create_app
from backend.services.tasks import task_table
from tests.conftest import SECRET, PostgresCluster, make_settings

INDEX = "ix_task_user_id_created_at_id"


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
    assert await inspect_db(fresh_settings, table_names) == ["alembic_version", "task"]
    assert await inspect_db(fresh_settings, versions) == [head_revision()]


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

    def indexes(conn: Connection) -> list[tuple[str | None, list[str | None], bool]]:
        return sorted(
            (i["name"], i["column_names"], bool(i["unique"]))
            for i in inspect(conn).get_indexes("task")
        )

    assert await inspect_db(fresh_settings, indexes) == [
        (INDEX, ["user_id", "created_at", "id"], False),
        ("ix_task_user_id_created_at_id_pending", ["user_id", "created_at", "id"], False),
        ("ix_task_user_id_due_at_id", ["user_id", "due_at", "id"], False),
        ("ix_task_user_id_due_at_pending", ["user_id", "due_at"], False),
        ("ix_task_user_id_remind_at", ["user_id", "remind_at"], False),
        ("ix_task_user_id_updated_at_id", ["user_id", "updated_at", "id"], False),
    ]


async def test_concurrent_migrations_leave_one_head(fresh_settings: Settings) -> None:
    results = await asyncio.wait_for(
        asyncio.gather(*(db.migrate(fresh_settings) for _ in range(4)), return_exceptions=True),
        timeout=60,
    )
    assert results == [None, None, None, None]
    assert await inspect_db(fresh_settings, versions) == [head_revision()]
    assert await inspect_db(fresh_settings, model_differences) == []


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
    assert await inspect_db(fresh_settings, table_names) == ["alembic_version", "task"]
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
        async with app.state.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(task_table.c.created_at, task_table.c.updated_at).where(
                        task_table.c.id == sent["id"]
                    )
                )
            ).one()
    finally:
        await app.state.db.dispose()
    for stored in (row.created_at, row.updated_at):
        assert isinstance(stored, datetime)
        assert stored.tzinfo is not None
        assert stored.utcoffset() == timedelta(0)
    assert row.created_at == datetime.fromisoformat(sent["created_at"])
