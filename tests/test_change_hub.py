"""The fan-out behind the event stream (services.events.ChangeHub), against real databases: who
is woken by whose changes, PostgreSQL's notifications from any connection, the one listening
connection coming back after it is killed, and polling behind a pooler with no session URL."""

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import text

from backend import db
from backend.config import Settings
from backend.services.events import ChangeHub
from backend.web.state import app_state
from tests.fixtures.app import running_app
from tests.fixtures.databases import make_settings
from tests.fixtures.postgres import PostgresCluster
from tests.helpers import Auth, create, until

DEADLINE = 20.0  # seconds: loose, for a busy machine; the waits end as soon as it happens


def new_hub(settings: Settings, **options: Any) -> ChangeHub:
    # The wake-ups alone: these tests open no stream, so the hub's database is never used.
    return ChangeHub(settings, db.Database(settings), **options)


async def test_sqlite_wakes_the_writer_s_user_only(sqlite_database_url: str, auth: Auth) -> None:
    async with running_app(make_settings(sqlite_database_url)) as (app, http):
        hub: ChangeHub = app_state(app).changes
        assert hub.live
        with hub.subscribe("alice") as alice, hub.subscribe("bob") as bob:
            await create(http, auth, user="bob")
            assert bob.is_set()
            assert not alice.is_set()
            bob.clear()
            task = await create(http, auth, user="alice")
            assert alice.is_set()
            alice.clear()
            # Every kind of write wakes, and a request that changes nothing need not.
            for method, path, body in (
                ("PATCH", f"/api/alice/tasks/{task['id']}", {"title": "x"}),
                ("PUT", f"/api/alice/tasks/{task['id']}", {"title": "y"}),
                ("PATCH", f"/api/alice/tasks/{task['id']}/complete", None),
                ("DELETE", "/api/alice/tasks?status=completed", None),
            ):
                response = await http.request(method, path, json=body, headers=auth("alice"))
                assert response.status_code == 200, response.text
                assert alice.is_set(), (method, path)
                alice.clear()
            assert not bob.is_set()


async def _insert_from_elsewhere(url: str, user: str) -> None:
    """A change made by another process: a connection of its own, plain SQL."""
    engine = db.make_engine(make_settings(url), for_requests=False)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO task (user_id, title, created_at, updated_at) "
                    "VALUES (:user, 't', now(), now())"
                ),
                {"user": user},
            )
    finally:
        await engine.dispose()


async def test_postgresql_notifies_whichever_connection_wrote(
    postgresql_database_url: str,
) -> None:
    hub = new_hub(make_settings(postgresql_database_url))
    try:
        with hub.subscribe("alice") as alice, hub.subscribe("bob") as bob:
            await until(lambda: hub.live, "the listener")
            alice.clear()
            bob.clear()
            await _insert_from_elsewhere(postgresql_database_url, "bob")
            await until(bob.is_set, "bob's notification")
            await _insert_from_elsewhere(postgresql_database_url, "alice")
            await until(alice.is_set, "alice's notification")
    finally:
        await hub.aclose()


async def test_one_listening_connection_however_many_subscribers(
    postgresql_database_url: str, postgres: PostgresCluster
) -> None:
    settings = make_settings(postgresql_database_url)
    hub = new_hub(settings)
    admin = db.make_engine(make_settings(postgres.url("postgres")))
    listening = text("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'")
    try:
        async with admin.connect() as conn:
            before = (await conn.execute(listening)).scalar_one()
            with hub.subscribe("a"), hub.subscribe("a"), hub.subscribe("b"), hub.subscribe("c"):
                await until(lambda: hub.live, "the listener")
                assert (await conn.execute(listening)).scalar_one() == before + 1
    finally:
        await hub.aclose()
        await admin.dispose()


async def test_the_listening_connection_closes_when_no_stream_is_left(
    postgresql_database_url: str, postgres: PostgresCluster
) -> None:
    hub = new_hub(make_settings(postgresql_database_url), linger_seconds=0.05)
    admin = db.make_engine(make_settings(postgres.url("postgres")))
    listening = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE query LIKE 'LISTEN%' AND datname = 'taskapi_test'"
    )

    async def listeners() -> int:
        async with admin.connect() as conn:
            count: int = (await conn.execute(listening)).scalar_one()
            return count

    try:
        for _ in range(2):  # and it opens again for the next stream
            with hub.subscribe("alice"):
                await until(lambda: hub.live, "the listener")
                assert await listeners() == 1
            deadline = time.monotonic() + DEADLINE
            while await listeners() != 0:
                assert time.monotonic() < deadline, "the listener stayed open"
                await asyncio.sleep(0.05)
            assert not hub.live
    finally:
        await hub.aclose()
        await admin.dispose()


async def test_the_listener_comes_back_after_its_connection_is_killed(
    postgresql_database_url: str, postgres: PostgresCluster
) -> None:
    hub = new_hub(make_settings(postgresql_database_url))
    admin = db.make_engine(make_settings(postgres.url("postgres")))
    try:
        with hub.subscribe("alice") as alice:
            await until(lambda: hub.live, "the listener")
            alice.clear()
            async with admin.connect() as conn:
                killed = await conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE query LIKE 'LISTEN%' AND datname = 'taskapi_test'"
                    )
                )
                assert killed.scalars().all() == [True]
            # Back again, it wakes everyone (a change may have been missed meanwhile) ...
            await until(alice.is_set, "the wake-up after reconnecting")
            await until(lambda: hub.live, "the listener to be back")
            alice.clear()
            # ... and notifications flow again.
            await _insert_from_elsewhere(postgresql_database_url, "alice")
            await until(alice.is_set, "a notification after reconnecting")
    finally:
        await hub.aclose()
        await admin.dispose()


@pytest.mark.parametrize("direct", [False, True])
async def test_behind_a_pooler_it_listens_on_the_direct_url_or_polls(
    pgbouncer_database_url: str, postgres: PostgresCluster, direct: bool
) -> None:
    direct_url = postgres.url("taskapi_pooled") if direct else None
    hub = new_hub(make_settings(pgbouncer_database_url, database_direct_url=direct_url))
    try:
        with hub.subscribe("alice") as alice:
            if not direct:
                # No session to LISTEN on: nothing is started, and streams poll.
                await asyncio.sleep(0)
                assert not hub.live
                return
            await until(lambda: hub.live, "the listener on the direct URL")
            alice.clear()
            await _insert_from_elsewhere(pgbouncer_database_url, "alice")
            await until(alice.is_set, "alice's notification")
    finally:
        await hub.aclose()
