"""The request engine's gate: first come, first served, and a full pool is a 503, not a hang."""

import asyncio
from collections.abc import Callable

import pytest
from sqlalchemy import text

from backend import db
from backend.web.state import app_state
from tests.fixtures.app import running_app
from tests.fixtures.databases import make_settings


async def test_waiting_requests_get_connections_in_arrival_order(database_url: str) -> None:
    database = db.Database(make_settings(database_url, db_pool_size=1))
    order: list[int] = []

    async def use(n: int) -> None:
        async with database.connect() as conn:
            order.append(n)
            await conn.execute(text("SELECT 1"))
            await asyncio.sleep(0)  # give a later arrival every chance to jump the queue

    try:
        async with database.connect():
            waiters = []
            for n in range(20):
                waiters.append(asyncio.create_task(use(n)))
                await asyncio.sleep(0)  # arrive one after the other
            for _ in range(20):
                await asyncio.sleep(0)  # every waiter has run up to the gate, with no clock
            assert order == []  # all of them wait for the one connection
        await asyncio.gather(*waiters)
        assert order == list(range(20))
    finally:
        await database.dispose()


async def test_no_free_connection_in_time_is_unavailable(database_url: str) -> None:
    database = db.Database(make_settings(database_url, db_pool_size=1, db_pool_timeout=0.2))
    try:
        async with database.connect():
            with pytest.raises(db.DatabaseUnavailable, match="DB_POOL_TIMEOUT"):
                async with database.connect():
                    pass
        async with database.connect() as conn:  # the gate was not leaked by the timeout
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await database.dispose()


async def test_a_full_pool_answers_503_then_recovers(
    database_url: str, auth: Callable[..., dict[str, str]]
) -> None:
    settings = make_settings(database_url, db_pool_size=1, db_pool_timeout=0.2)
    async with running_app(settings) as (app, http):
        async with app_state(app).db.connect():
            response = await http.get("/api/alice/tasks", headers=auth("alice"))
        assert response.status_code == 503
        assert response.json() == {
            "detail": "The service is temporarily unavailable; try again shortly",
            "code": "SERVICE_UNAVAILABLE",
        }
        assert response.headers["retry-after"] == "1"
        response = await http.get("/api/alice/tasks", headers=auth("alice"))
        assert response.status_code == 200


def test_pool_size_defaults_per_database() -> None:
    assert db.pool_size(make_settings("sqlite:///x.db")) == 1
    assert db.pool_size(make_settings("postgresql://u@h/d")) == 10
    assert db.pool_size(make_settings("postgresql://u@h/d", db_pool_size=4)) == 4
