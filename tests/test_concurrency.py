"""Concurrency and robustness over a real server: uvicorn in its own process, real sockets.

The live-server tests share one database whose table is not emptied for them, so every test
works under its own user id. They run through PgBouncer in transaction mode too (Neon's pooled
URL): concurrent requests are what spread one client's statements over its server connections.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.fixtures.databases import database_kinds
from tests.fixtures.servers import LiveServer
from tests.helpers import Auth, create, list_all, new_user, parse_time

pytestmark = pytest.mark.live  # it starts processes: servers of its own

TIMEOUT = httpx.Timeout(30.0)
TWO_MIB = 2 * 1024 * 1024


@pytest.fixture(scope="module", params=database_kinds("pgbouncer"))
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_database_url"))


def live_client(server: LiveServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT)


def assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    assert response.json() == {
        "detail": "The request body is larger than 1048576 bytes",
        "code": "PAYLOAD_TOO_LARGE",
    }


async def test_50_concurrent_creates_for_one_user(live_server: LiveServer, auth: Auth) -> None:
    user = new_user()
    async with live_client(live_server) as http:
        responses = await asyncio.gather(
            *(
                http.post(f"/api/{user}/tasks", json={"title": f"t{i}"}, headers=auth(user))
                for i in range(50)
            )
        )
        assert [r.status_code for r in responses] == [201] * 50, [r.text for r in responses]
        created = [r.json() for r in responses]
        assert len({task["id"] for task in created}) == 50
        assert sorted(task["title"] for task in created) == sorted(f"t{i}" for i in range(50))
        for response, task in zip(responses, created, strict=True):
            assert response.headers["location"] == f"/api/{user}/tasks/{task['id']}"
        listed = await list_all(http, auth, user)
    assert len(listed) == 50
    assert sorted(task["id"] for task in listed) == sorted(task["id"] for task in created)
    assert {task["user_id"] for task in listed} == {user}


async def test_concurrent_patches_of_different_fields_all_survive(
    live_server: LiveServer, auth: Auth
) -> None:
    # Ten tasks, each sent four PATCHes of different fields at the same moment (40 in flight): a
    # read-modify-write anywhere would let one of them put back a field another just changed.
    user = new_user()

    def bodies(k: int) -> list[dict[str, Any]]:
        title, description = f"title {k}", f"description {k}"
        return [
            {"title": title},
            {"description": description},
            {"completed": True},
            {"title": title, "description": description},
        ]

    async with live_client(live_server) as http:
        tasks = [await create(http, auth, {"title": "start"}, user=user) for _ in range(10)]
        urls = [f"/api/{user}/tasks/{task['id']}" for task in tasks]
        responses = await asyncio.gather(
            *(
                http.patch(url, json=body, headers=auth(user))
                for k, url in enumerate(urls)
                for body in bodies(k)
            )
        )
        assert [r.status_code for r in responses] == [200] * 40, [r.text for r in responses]
        finals = [(await http.get(url, headers=auth(user))).json() for url in urls]
    for k, (task, final) in enumerate(zip(tasks, finals, strict=True)):
        assert final["id"] == task["id"]
        assert final["title"] == f"title {k}"
        assert final["description"] == f"description {k}"
        assert final["completed"] is True
        assert final["created_at"] == task["created_at"]
        assert parse_time(final["updated_at"]) > parse_time(task["updated_at"])


async def test_concurrent_patches_of_the_same_field_never_fail(
    live_server: LiveServer, auth: Auth
) -> None:
    user = new_user()
    titles = [f"title {i}" for i in range(40)]
    async with live_client(live_server) as http:
        task = await create(http, auth, {"title": "start", "description": "kept"}, user=user)
        url = f"/api/{user}/tasks/{task['id']}"
        responses = await asyncio.gather(
            *(http.patch(url, json={"title": title}, headers=auth(user)) for title in titles)
        )
        assert [r.status_code for r in responses] == [200] * 40, [r.text for r in responses]
        # Each PATCH is one UPDATE … RETURNING: it answers with the title it wrote.
        assert [r.json()["title"] for r in responses] == titles
        final = (await http.get(url, headers=auth(user))).json()
    assert final["title"] in titles
    assert final["description"] == "kept"
    assert final["completed"] is False


async def test_concurrent_toggles_leave_the_parity(live_server: LiveServer, auth: Auth) -> None:
    user = new_user()
    toggles = 31
    async with live_client(live_server) as http:
        task = await create(http, auth, {"title": "toggle me"}, user=user)
        url = f"/api/{user}/tasks/{task['id']}/complete"
        responses = await asyncio.gather(
            *(http.patch(url, headers=auth(user)) for _ in range(toggles))
        )
        assert [r.status_code for r in responses] == [200] * toggles, [r.text for r in responses]
        # Every toggle saw a different state: as many answers say true as the parity allows.
        completed = [r.json()["completed"] for r in responses]
        assert completed.count(True) == (toggles + 1) // 2
        assert completed.count(False) == toggles // 2
        final = (await http.get(f"/api/{user}/tasks/{task['id']}", headers=auth(user))).json()
    assert final["completed"] is (toggles % 2 == 1)


async def test_interleaved_creates_of_two_users_stay_isolated(
    live_server: LiveServer, auth: Auth
) -> None:
    alice, bob = new_user(), new_user()
    async with live_client(live_server) as http:
        responses = await asyncio.gather(
            *(
                http.post(f"/api/{user}/tasks", json={"title": f"{user} {i}"}, headers=auth(user))
                for i in range(25)
                for user in (alice, bob)
            )
        )
        assert [r.status_code for r in responses] == [201] * 50, [r.text for r in responses]
        for user in (alice, bob):
            listed = await list_all(http, auth, user)
            assert sorted(task["title"] for task in listed) == sorted(
                f"{user} {i}" for i in range(25)
            )
            assert {task["user_id"] for task in listed} == {user}


async def test_body_over_the_limit_with_content_length_is_413(
    live_server: LiveServer, auth: Auth
) -> None:
    user = new_user()
    body = b'{"title": "' + b"x" * TWO_MIB + b'"}'
    async with live_client(live_server) as http:
        response = await http.post(
            f"/api/{user}/tasks",
            content=body,
            headers={**auth(user), "Content-Type": "application/json"},
        )
        assert response.request.headers["content-length"] == str(len(body))
        assert_too_large(response)
        # The same client (its pooled connection, if the server kept it) still works.
        task = await create(http, auth, {"title": "after"}, user=user)
    async with live_client(live_server) as http:  # and so does a new connection
        await create(http, auth, {"title": "after, new connection"}, user=user)
        listed = await list_all(http, auth, user)
    assert [t["title"] for t in listed] == ["after, new connection", "after"]
    assert listed[1]["id"] == task["id"]
    assert live_server.process.poll() is None


async def test_chunked_body_over_the_limit_is_413(live_server: LiveServer, auth: Auth) -> None:
    user = new_user()
    chunk = b"x" * 64 * 1024

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"title": "'
        for _ in range(TWO_MIB // len(chunk)):
            yield chunk
        yield b'"}'

    async with live_client(live_server) as http:
        response = await http.post(
            f"/api/{user}/tasks",
            content=chunks(),
            headers={**auth(user), "Content-Type": "application/json"},
        )
        assert response.request.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.request.headers
        assert_too_large(response)
        await create(http, auth, {"title": "after"}, user=user)
    async with live_client(live_server) as http:
        await create(http, auth, {"title": "after, new connection"}, user=user)
        listed = await list_all(http, auth, user)
    assert [t["title"] for t in listed] == ["after, new connection", "after"]
    assert live_server.process.poll() is None
