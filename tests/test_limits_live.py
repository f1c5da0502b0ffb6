"""The limits across `taskapi serve --workers 2` on PostgreSQL, where the processes share
nothing but the database and Redis: one rate-limit budget per user (RATE_LIMIT_STORAGE=redis://…)
and one task quota, whichever worker serves each request.

Every request goes over a connection of its own, opened before the race and placed on a known
worker (read from /proc), with an unauthenticated request that the rate limit does not count.
"""

import asyncio
from collections.abc import Iterator
from contextlib import AsyncExitStack

import httpx
import pytest

from tests.fixtures.databases import database_kinds
from tests.fixtures.redis import RedisServer
from tests.fixtures.servers import TIMEOUT, Served, served_by, taskapi_serve
from tests.helpers import Auth, check_rate_headers, new_user

pytestmark = pytest.mark.live  # it starts processes: servers of its own

LIMIT = 30  # a minute: far longer than the test; its window cannot close under it
QUOTA = 5


@pytest.fixture(scope="module")
def limited_workers(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
) -> Iterator[Served]:
    if "postgresql" not in database_kinds():
        pytest.skip("needs PostgreSQL, which TEST_DATABASES does not select")
    database_url = str(request.getfixturevalue("postgresql_database_url"))
    with taskapi_serve(
        database_url,
        tmp_path_factory.mktemp("limited"),
        workers=2,
        RATE_LIMIT=str(LIMIT),
        RATE_LIMIT_STORAGE=redis_server.url,
        MAX_TASKS_PER_USER=str(QUOTA),
    ) as server:
        yield server


async def spread_connections(
    server: Served, count: int, stack: AsyncExitStack
) -> list[httpx.AsyncClient]:
    """`count` clients, each with one new connection, half of them on each worker."""
    wanted = dict.fromkeys(server.workers, count // 2)
    wanted[server.workers[0]] += count % 2
    clients: list[httpx.AsyncClient] = []
    for _ in range(count * 20):
        if len(clients) == count:
            return clients
        http = httpx.AsyncClient(
            base_url=server.base_url, timeout=TIMEOUT, limits=httpx.Limits(max_connections=1)
        )
        stack.push_async_callback(http.aclose)
        opened = await http.get("/api/nobody/tasks")  # 401: not counted against anyone
        assert opened.status_code == 401
        worker = served_by(server.workers, server.port, opened)
        if wanted[worker] == 0:
            await http.aclose()
            continue
        wanted[worker] -= 1
        clients.append(http)
    raise AssertionError(f"could not spread {count} connections over the workers: {wanted}")


async def test_rate_limit_is_one_budget_across_two_workers(
    limited_workers: Served, auth: Auth
) -> None:
    user, other = new_user(), new_user()
    extra = 8
    async with AsyncExitStack() as stack:
        clients = await spread_connections(limited_workers, LIMIT + extra, stack)
        url = f"/api/{user}/tasks"
        responses = await asyncio.gather(*(http.get(url, headers=auth(user)) for http in clients))
        workers = {served_by(limited_workers.workers, limited_workers.port, r) for r in responses}
        assert workers == set(limited_workers.workers)
        # Each worker served (LIMIT + extra) / 2 < LIMIT of them: counting on its own, neither
        # would have refused any.
        check_rate_headers(list(responses), LIMIT)
        mine = await clients[0].get(f"/api/{other}/tasks", headers=auth(other))
        assert mine.status_code == 200
        assert mine.headers["RateLimit-Remaining"] == str(LIMIT - 1)


async def test_quota_holds_across_two_workers(limited_workers: Served, auth: Auth) -> None:
    user = new_user()
    async with AsyncExitStack() as stack:
        clients = await spread_connections(limited_workers, 20, stack)
        responses = await asyncio.gather(
            *(
                http.post(f"/api/{user}/tasks", json={"title": f"t{n}"}, headers=auth(user))
                for n, http in enumerate(clients)
            )
        )
        assert sorted(r.status_code for r in responses) == [201] * QUOTA + [409] * (20 - QUOTA)
        assert {r.json()["code"] for r in responses if r.status_code == 409} == {"QUOTA_EXCEEDED"}
        workers = {served_by(limited_workers.workers, limited_workers.port, r) for r in responses}
        assert workers == set(limited_workers.workers)
        listed = await clients[0].get(f"/api/{user}/tasks", headers=auth(user))
        assert listed.headers["X-Total-Count"] == str(QUOTA)
