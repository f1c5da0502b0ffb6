"""Limits, in one process on both databases: the per-user rate limit (RATE_LIMIT, counted in
memory, or in Redis with RATE_LIMIT_STORAGE) and the task quota (MAX_TASKS_PER_USER, enforced
by the database). Across two worker processes: `test_limits_live.py`.

No test waits for the clock: the rate limit's window is a minute from a user's first request,
and each test sends its requests within a few seconds, for users of its own.
"""

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import RedisServer, app_client, free_port, make_settings, running_app

Auth = Callable[..., dict[str, str]]
LIMIT = 30


def new_user() -> str:
    return f"user-{uuid4().hex}"


def check_rate_headers(responses: list[httpx.Response], limit: int) -> None:
    """`limit` of them succeeded, each with its own RateLimit-Remaining, and the rest are 429s
    with the contract's body and headers."""
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert (len(ok), len(refused)) == (limit, len(responses) - limit), [
        r.status_code for r in responses
    ]
    assert sorted(int(r.headers["RateLimit-Remaining"]) for r in ok) == list(range(limit))
    for response in ok + refused:
        assert response.headers["RateLimit-Limit"] == str(limit)
        assert 1 <= int(response.headers["RateLimit-Reset"]) <= 60
    for response in refused:
        assert response.json() == {
            "detail": f"More than {limit} requests a minute (RATE_LIMIT): retry in "
            f"{response.headers['Retry-After']} s",
            "code": "RATE_LIMITED",
        }
        assert response.headers["Retry-After"].isdigit()
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert response.headers["RateLimit-Remaining"] == "0"
        assert response.headers["RateLimit-Reset"] == response.headers["Retry-After"]


# --- the rate limit -------------------------------------------------------------------------------


async def test_rate_limit_in_memory(database_url: str, auth: Auth) -> None:
    settings = make_settings(database_url, rate_limit=LIMIT)
    alice, bob = new_user(), new_user()
    async with app_client(settings) as http:
        url = f"/api/{alice}/tasks"
        sequential = [await http.get(url, headers=auth(alice)) for _ in range(LIMIT - 10)]
        assert [int(r.headers["RateLimit-Remaining"]) for r in sequential] == list(
            range(LIMIT - 1, 9, -1)
        )
        # Requests that fail authentication are not counted against the path's user.
        for _ in range(5):
            assert (await http.get(url)).status_code == 401
            assert (await http.get(url, headers=auth(bob))).status_code == 403
        concurrent = await asyncio.gather(*(http.get(url, headers=auth(alice)) for _ in range(15)))
        check_rate_headers([*sequential, *concurrent], LIMIT)
        # Counted before the body is read: a refused request is a 429 whatever its body.
        refused = await http.post(
            url, content=b"{not json", headers={**auth(alice), "Content-Type": "application/json"}
        )
        assert refused.status_code == 429
        # Another user has a budget of their own (bob's 403s above were alice's path).
        mine = await http.get(f"/api/{bob}/tasks", headers=auth(bob))
        assert mine.status_code == 200
        assert mine.headers["RateLimit-Remaining"] == str(LIMIT - 1)


async def test_rate_limit_zero_is_off(database_url: str, auth: Auth) -> None:
    user = new_user()
    async with app_client(make_settings(database_url, rate_limit=0)) as http:
        for _ in range(5):
            response = await http.get(f"/api/{user}/tasks", headers=auth(user))
            assert response.status_code == 200
            assert "RateLimit-Limit" not in response.headers


async def test_rate_limit_in_redis_is_shared_by_apps(
    database_url: str, auth: Auth, redis_server: RedisServer
) -> None:
    # Two apps (as two processes would be) count one budget in Redis.
    settings = make_settings(database_url, rate_limit=LIMIT, rate_limit_storage=redis_server.url)
    user = new_user()
    url = f"/api/{user}/tasks"
    async with app_client(settings) as one, app_client(settings) as two:
        responses = await asyncio.gather(
            *(http.get(url, headers=auth(user)) for http in [one, two] * 20)
        )
    check_rate_headers(list(responses), LIMIT)


async def test_unreachable_redis_fails_over_to_memory(
    database_url: str, auth: Auth, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings = make_settings(database_url, rate_limit=LIMIT, rate_limit_storage=dead)
    user = new_user()
    with caplog.at_level(logging.WARNING, logger="backend.rate_limit"):
        async with app_client(settings) as http:
            url = f"/api/{user}/tasks"
            responses = [await http.get(url, headers=auth(user)) for _ in range(LIMIT + 3)]
    check_rate_headers(responses, LIMIT)
    warnings = [r.getMessage() for r in caplog.records if r.name == "backend.rate_limit"]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("rate limit storage unreachable")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("redis://cache:6379/2", "async+redis://cache:6379/2"),
        ("rediss://:pw@cache:6380/0", "async+rediss://:pw@cache:6380/0"),
        ("memory://", "async+memory://"),
    ],
)
def test_storage_uri(given: str, expected: str) -> None:
    from backend.middleware.rate_limit import storage_uri

    assert storage_uri(given) == expected


def test_storage_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="rate_limit_storage"):
        make_settings("sqlite:///x.db", rate_limit_storage="memcached://cache:11211")


async def test_429_is_in_openapi_of_every_api_route(database_url: str) -> None:
    async with app_client(make_settings(database_url)) as http:
        spec = (await http.get("/openapi.json")).json()
    operations = [
        (path, method, operation)
        for path, methods in spec["paths"].items()
        if path.startswith("/api/")
        for method, operation in methods.items()
    ]
    assert operations
    for path, method, operation in operations:
        assert "429" in operation["responses"], (method, path)
    create = spec["paths"]["/api/{user_id}/tasks"]["post"]["responses"]
    assert "409" in create


# --- the task quota -------------------------------------------------------------------------------


async def create(http: httpx.AsyncClient, user: str, auth: Auth, **headers: str) -> httpx.Response:
    return await http.post(
        f"/api/{user}/tasks", json={"title": "t"}, headers={**auth(user), **headers}
    )


async def test_quota_holds_under_concurrent_creates(database_url: str, auth: Auth) -> None:
    settings = make_settings(database_url, max_tasks_per_user=5)
    user, other = new_user(), new_user()
    async with app_client(settings) as http:
        # The first creates of a user who has never had a task: no counter row to lock yet.
        responses = await asyncio.gather(*(create(http, user, auth) for _ in range(20)))
        assert sorted(r.status_code for r in responses) == [201] * 5 + [409] * 15
        refused = next(r for r in responses if r.status_code == 409)
        assert refused.json() == {
            "detail": "This user has 5 tasks, the most allowed (MAX_TASKS_PER_USER): "
            "delete some to create more",
            "code": "QUOTA_EXCEEDED",
        }
        listed = await http.get(f"/api/{user}/tasks", headers=auth(user))
        assert listed.headers["X-Total-Count"] == "5"
        # A second round, on the counter row that exists now, changes nothing.
        again = await asyncio.gather(*(create(http, user, auth) for _ in range(10)))
        assert [r.status_code for r in again] == [409] * 10
        # Another user has a quota of their own.
        assert (await create(http, other, auth)).status_code == 201


async def test_deleting_frees_a_place(database_url: str, auth: Auth) -> None:
    settings = make_settings(database_url, max_tasks_per_user=3)
    user = new_user()
    async with app_client(settings) as http:
        ids = [(await create(http, user, auth)).json()["id"] for _ in range(3)]
        assert (await create(http, user, auth)).status_code == 409
        deleted = await http.delete(f"/api/{user}/tasks/{ids[0]}", headers=auth(user))
        assert deleted.status_code in (200, 204)
        assert (await create(http, user, auth)).status_code == 201
        assert (await create(http, user, auth)).status_code == 409
        # Deleting many at once frees as many places.
        cleared = await http.delete(f"/api/{user}/tasks?status=all", headers=auth(user))
        assert cleared.status_code == 200, cleared.text
        created = await asyncio.gather(*(create(http, user, auth) for _ in range(5)))
        assert sorted(r.status_code for r in created) == [201] * 3 + [409] * 2


async def test_idempotent_replay_at_the_quota_still_replays(database_url: str, auth: Auth) -> None:
    settings = make_settings(database_url, max_tasks_per_user=2)
    user = new_user()
    async with app_client(settings) as http:
        first = await create(http, user, auth, **{"Idempotency-Key": "k1"})
        assert (await create(http, user, auth)).status_code == 201  # now at the quota
        replay = await create(http, user, auth, **{"Idempotency-Key": "k1"})
        assert replay.status_code == 201
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.content == first.content
        # A new key is a new request, and is refused; so is its retry (nothing was stored).
        for _ in range(2):
            refused = await create(http, user, auth, **{"Idempotency-Key": "k2"})
            assert refused.status_code == 409


async def test_at_the_quota_a_recurring_task_completes_without_its_next_occurrence(
    database_url: str, auth: Auth
) -> None:
    # Completing the newest occurrence of a recurring task always made another: a user with a
    # quota of 5 reached 55. Now a completion at the quota completes the task, says so, and
    # makes no occurrence; completed again below the quota, the task makes it.
    settings = make_settings(database_url, max_tasks_per_user=5)
    user = new_user()
    body: dict[str, Any] = {
        "title": "water the plants",
        "due_at": "2026-12-01T09:00:00Z",
        "recurrence": {"frequency": "daily", "interval": 1},
    }
    url = f"/api/{user}/tasks"

    async def count() -> int:
        listed = await http.get(url, headers=auth(user))
        return int(listed.headers["X-Total-Count"])

    async with running_app(settings) as (app, http):
        task = (await http.post(url, json=body, headers=auth(user))).json()
        for _ in range(3):
            assert (await create(http, user, auth)).status_code == 201
        # Below the quota (4 tasks): the next occurrence is made, and says nothing.
        done = await http.patch(f"{url}/{task['id']}/complete", headers=auth(user))
        assert done.status_code == 200, done.text
        assert "X-Next-Occurrence-Skipped" not in done.headers
        assert await count() == 5
        # At the quota, every way of completing the newest occurrence, again and again.
        newest = max((await http.get(url, headers=auth(user))).json(), key=lambda t: t["id"])
        completions = [
            ("PATCH", "/complete", None),
            ("PATCH", "", {"completed": True}),
            ("PUT", "", {"title": "water the plants", "completed": True}),
        ]
        for method, suffix, sent in completions * 4:
            done = await http.request(
                method, f"{url}/{newest['id']}{suffix}", json=sent, headers=auth(user)
            )
            assert done.status_code == 200, done.text
            assert done.json()["completed"] is True
            assert done.headers["X-Next-Occurrence-Skipped"] == "quota"
            assert await count() == 5
            undone = await http.patch(f"{url}/{newest['id']}/complete", headers=auth(user))
            assert undone.json()["completed"] is False
        assert await count() == 5
        # One place freed: completing it again makes its occurrence, which fills the place.
        await http.delete(f"{url}/{task['id']}", headers=auth(user))
        done = await http.patch(f"{url}/{newest['id']}/complete", headers=auth(user))
        assert "X-Next-Occurrence-Skipped" not in done.headers
        assert await count() == 5
        async with app.state.db.connect() as conn:
            kept = await conn.scalar(
                text("SELECT task_count FROM sync_state WHERE user_id = :u"), {"u": user}
            )
        assert kept == 5
