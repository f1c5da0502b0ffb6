"""Behind a transaction-mode pooler: a real PgBouncer (Debian's 1.18, pool_mode=transaction, as
Neon's `-pooler` host runs it) in front of the session's PostgreSQL.

With DB_POOLER=transaction the service keeps nothing on a server connection between statements
(no named prepared statements, no SET), its statements are still bounded (asyncpg's timeout,
which cancels them through PgBouncer), and migrations go to DATABASE_DIRECT_URL. The
concurrency suite (tests/test_concurrency.py) runs through the same PgBouncer.
"""

import asyncio
from uuid import uuid4

import asyncpg
import pytest
from sqlalchemy import text

from backend import db
from backend.config import Settings
from backend.db.urls import target
from tests.fixtures.app import running_app
from tests.fixtures.databases import database_kinds, make_settings
from tests.fixtures.failures import (
    BOUND,
    assert_unavailable,
    fast_settings,
    postgres_row_lock,
    timed,
    until_nobody_waits_for_a_lock,
)
from tests.fixtures.pgbouncer import PgBouncer
from tests.fixtures.postgres import PostgresCluster
from tests.fixtures.processes import free_port
from tests.helpers import Auth, new_user

NEON_POOLED = "postgresql://u:p@ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech/neondb"
NEON_DIRECT = "postgresql://u:p@ep-cool-darkness-123456.us-east-2.aws.neon.tech/neondb"

pytestmark = pytest.mark.skipif(
    "pgbouncer" not in database_kinds("pgbouncer"), reason="PostgreSQL is not selected"
)


async def test_crud_through_pgbouncer(pgbouncer_database_url: str, auth: Auth) -> None:
    user = new_user()
    headers = auth(user)
    settings = make_settings(pgbouncer_database_url)
    assert target(settings, direct=False) == (db.normalize_url(pgbouncer_database_url), True)
    async with running_app(settings) as (_, http):
        # Concurrent requests spread each pooled client connection's statements over
        # PgBouncer's server connections: what broke asyncpg's named statements.
        created = await asyncio.gather(
            *(
                http.post(f"/api/{user}/tasks", json={"title": f"t{i}"}, headers=headers)
                for i in range(30)
            )
        )
        assert [r.status_code for r in created] == [201] * 30, [r.text for r in created]
        task = created[0].json()
        url = f"/api/{user}/tasks/{task['id']}"

        listed = await http.get(f"/api/{user}/tasks", headers=headers)
        assert listed.status_code == 200
        assert sorted(t["title"] for t in listed.json()) == sorted(f"t{i}" for i in range(30))

        response = await http.put(
            url, json={"title": "renamed", "description": "d", "completed": False}, headers=headers
        )
        assert response.status_code == 200, response.text
        assert (response.json()["title"], response.json()["description"]) == ("renamed", "d")

        response = await http.patch(url, json={"description": None}, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["description"] is None

        toggles = await asyncio.gather(
            *(http.patch(f"{url}/complete", headers=headers) for _ in range(9))
        )
        assert [r.status_code for r in toggles] == [200] * 9
        response = await http.get(url, headers=headers)
        assert response.json()["completed"] is True  # nine toggles: odd

        response = await http.delete(url, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["title"] == "renamed"
        response = await http.get(url, headers=headers)
        assert response.status_code == 404
        assert response.json()["code"] == "TASK_NOT_FOUND"


async def test_a_locked_task_through_pgbouncer_is_503_and_the_connection_stays_usable(
    pgbouncer_database_url: str, postgres: PostgresCluster, auth: Auth
) -> None:
    # No server-side timeout behind the pooler: asyncpg's own fires, and its cancel request
    # reaches the statement's server connection through PgBouncer. One pooled connection only,
    # so the request after the lock uses the very connection whose statement was cancelled.
    user = new_user()
    settings = fast_settings(pgbouncer_database_url, db_pool_size=1)
    async with running_app(settings) as (_, http):
        created = await http.post(f"/api/{user}/tasks", json={"title": "t"}, headers=auth(user))
        assert created.status_code == 201, created.text
        toggle = f"/api/{user}/tasks/{created.json()['id']}/complete"
        direct = postgres.url("taskapi_pooled")
        async with postgres_row_lock(direct, created.json()["id"]):
            response, elapsed = await timed(http.patch(toggle, headers=auth(user)))
            assert_unavailable(response)
            assert elapsed < BOUND
            # The cancel went through PgBouncer to the server: the toggle stops waiting for the
            # lock (and so will never apply), while the lock is still held.
            await until_nobody_waits_for_a_lock(direct)
        response = await http.patch(toggle, headers=auth(user))
        assert response.status_code == 200, response.text
        assert response.json()["completed"] is True


async def test_pgbouncer_refuses_timeouts_as_startup_parameters(pgbouncer: PgBouncer) -> None:
    # Why the service sets its server-side timeouts with SET after connecting (and behind a
    # transaction-mode pooler not at all), never as startup parameters.
    with pytest.raises(asyncpg.ProtocolViolationError, match="unsupported startup parameter"):
        await asyncpg.connect(
            pgbouncer.url("postgres").replace("postgresql", "postgres"),
            server_settings={"statement_timeout": "5000"},
        )


async def test_the_server_side_timeouts_are_set_on_a_direct_connection(
    postgresql_database_url: str,
) -> None:
    database = db.Database(make_settings(postgresql_database_url, db_statement_timeout=2.5))
    try:
        async with database.connect() as conn:
            shown = [
                (await conn.execute(text(f"SHOW {name}"))).scalar_one()
                for name in ("statement_timeout", "lock_timeout")
            ]
    finally:
        await database.dispose()
    assert shown == ["2500ms", "2500ms"]


def pooled(settings: Settings) -> bool:
    return target(settings, direct=False)[1]


def test_the_pooler_mode_is_assumed_for_neon_pooler_hosts() -> None:
    assert pooled(make_settings(NEON_POOLED))
    assert not pooled(make_settings(NEON_DIRECT))
    assert not pooled(make_settings(NEON_POOLED, db_pooler="none"))  # said explicitly
    assert pooled(make_settings("postgresql://u@pgbouncer.internal/d", db_pooler="transaction"))
    assert not pooled(make_settings("sqlite:///x.db", db_pooler="transaction"))


async def test_migrations_run_on_the_direct_url(postgres: PostgresCluster, auth: Auth) -> None:
    # DATABASE_URL leads nowhere (nothing listens there): the migrations can only have used
    # DATABASE_DIRECT_URL, a fresh database that ends up at head.
    name = f"direct_{uuid4().hex}"
    admin = db.make_engine(make_settings(postgres.url("postgres")))
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        settings = make_settings(
            f"postgresql://postgres@127.0.0.1:{free_port()}/{name}",
            db_pooler="transaction",
            database_direct_url=postgres.url(name),
        )
        await db.migrate(settings)
        direct = await asyncpg.connect(postgres.url(name).replace("postgresql", "postgres"))
        try:
            assert await direct.fetchval("SELECT count(*) FROM alembic_version") == 1
            assert await direct.fetchval("SELECT count(*) FROM task") == 0
        finally:
            await direct.close()
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.dispose()
