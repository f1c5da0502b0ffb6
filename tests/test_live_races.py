"""Safe edits raced over real sockets: uvicorn in its own process, and `taskapi serve --workers 2`
on PostgreSQL, where two processes share nothing but the database.

Concurrent requests here really are concurrent: each goes over a connection of its own, opened
(and, with two workers, placed on a known worker) before the race starts, so the requests leave
together instead of queueing behind connection set-up. Which worker serves a connection is read
from /proc, so a test that says "both workers" knows it.

The live server shares one database whose tables are not emptied for it: every test works under
a user id of its own. Opening connections on known workers is tests/fixtures/servers.py's.
"""

import asyncio
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any
from uuid import uuid4

import httpx
import pytest

from tests.fixtures.databases import database_kinds
from tests.fixtures.servers import (
    TIMEOUT,
    LiveServer,
    Served,
    connections,
    served_by,
    taskapi_serve,
)
from tests.helpers import Auth, Task, create, list_all, new_user

pytestmark = pytest.mark.live  # it starts processes: servers of its own


@pytest.fixture(scope="module")
def two_workers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """`taskapi serve --workers 2` on the session's PostgreSQL database."""
    if "postgresql" not in database_kinds():
        pytest.skip("needs PostgreSQL, which TEST_DATABASES does not select")
    database_url = str(request.getfixturevalue("postgresql_database_url"))
    with taskapi_serve(database_url, tmp_path_factory.mktemp("workers"), workers=2) as server:
        yield server


# --- Idempotency-Key ------------------------------------------------------------------------------


async def _duplicate_posts(
    base_url: str, auth: Auth, *, rounds: int, copies: int, spread: Served | None = None
) -> None:
    """`rounds` times, `copies` identical POSTs with one Idempotency-Key, all at once over
    connections of their own: one task, one answer, replayed to all but one."""
    user = new_user()
    async with AsyncExitStack() as stack:
        clients = await connections(base_url, user, auth, copies, stack, spread=spread)
        created: list[Task] = []
        for n in range(rounds):
            body = {"title": f"once {n}", "tags": ["retry"], "priority": "high"}
            headers = {**auth(user), "Idempotency-Key": f"create-{n}-{uuid4()}"}
            responses = await asyncio.gather(
                *(http.post(f"/api/{user}/tasks", json=body, headers=headers) for http in clients)
            )
            assert [r.status_code for r in responses] == [201] * copies, [r.text for r in responses]
            assert len({r.content for r in responses}) == 1, [r.text for r in responses]
            replayed = [r.headers.get("Idempotent-Replayed") for r in responses]
            assert (replayed.count(None), replayed.count("true")) == (1, copies - 1), replayed
            task: Task = responses[0].json()
            assert {r.headers["ETag"] for r in responses} == {'"1"'}
            assert {r.headers["Location"] for r in responses} == {f"/api/{user}/tasks/{task['id']}"}
            assert (task["title"], task["version"]) == (f"once {n}", 1)
            created.append(task)
            if spread is not None:  # the copies really were served by both workers
                workers = {served_by(spread.workers, spread.port, r) for r in responses}
                assert workers == set(spread.workers)
        listed = await list_all(clients[0], auth, user)
    assert sorted(listed, key=lambda task: task["id"]) == created


async def test_concurrent_duplicate_posts_create_one_task(
    live_server: LiveServer, auth: Auth
) -> None:
    await _duplicate_posts(live_server.base_url, auth, rounds=3, copies=20)


async def test_concurrent_duplicate_posts_create_one_task_across_two_workers(
    two_workers: Served, auth: Auth
) -> None:
    await _duplicate_posts(two_workers.base_url, auth, rounds=3, copies=20, spread=two_workers)


async def test_concurrent_duplicate_toggles_toggle_once_across_two_workers(
    two_workers: Served, auth: Auth
) -> None:
    # PATCH …/complete is the other write that takes a key: a retried toggle must not toggle
    # back, however many copies race, in whichever process.
    user = new_user()
    async with AsyncExitStack() as stack:
        clients = await connections(two_workers.base_url, user, auth, 10, stack, spread=two_workers)
        task = await create(clients[0], auth, {"title": "toggle once"}, user=user)
        headers = {**auth(user), "Idempotency-Key": f"toggle-{uuid4()}"}
        url = f"/api/{user}/tasks/{task['id']}/complete"
        responses = await asyncio.gather(*(http.patch(url, headers=headers) for http in clients))
        assert [r.status_code for r in responses] == [200] * 10, [r.text for r in responses]
        assert len({r.content for r in responses}) == 1
        assert [r.headers.get("Idempotent-Replayed") for r in responses].count(None) == 1
        final = (await clients[0].get(f"/api/{user}/tasks/{task['id']}", headers=auth(user))).json()
    assert final == responses[0].json()
    assert (final["completed"], final["version"]) == (True, 2)


async def test_one_key_with_two_bodies_at_once_serves_one_of_them(
    live_server: LiveServer, auth: Auth
) -> None:
    # Ten copies each of two different bodies under one key, all at once: whichever body got
    # the key first is created once and replayed to its copies; every copy of the other body
    # is refused, and creates nothing.
    user = new_user()
    bodies = [{"title": "first body"}, {"title": "second body"}]
    headers = {**auth(user), "Idempotency-Key": f"two-bodies-{uuid4()}"}
    async with AsyncExitStack() as stack:
        clients = await connections(live_server.base_url, user, auth, 20, stack)
        responses = await asyncio.gather(
            *(
                http.post(f"/api/{user}/tasks", json=bodies[n % 2], headers=headers)
                for n, http in enumerate(clients)
            )
        )
        listed = await list_all(clients[0], auth, user)
    assert len(listed) == 1, listed
    task = listed[0]
    won = bodies.index({"title": task["title"]})
    for n, response in enumerate(responses):
        if n % 2 == won:
            assert response.status_code == 201, response.text
            assert response.json() == task
        else:
            assert response.status_code == 422, response.text
            assert response.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    replayed = [r.headers.get("Idempotent-Replayed") for r in responses]
    assert (replayed.count(None), replayed.count("true")) == (11, 9)  # 10 refusals, 1 original


async def test_concurrent_completions_of_a_recurring_task_across_two_workers(
    two_workers: Served, auth: Auth
) -> None:
    # `{"completed": true}` sent ten times at once through both workers: one change (version
    # 2), the others find it done and change nothing, and one next occurrence exists.
    user = new_user()
    body = {
        "title": "pay rent",
        "due_at": "2026-12-31T09:00:00Z",
        "recurrence": {"frequency": "monthly", "interval": 1},
    }
    async with AsyncExitStack() as stack:
        clients = await connections(two_workers.base_url, user, auth, 10, stack, spread=two_workers)
        task = await create(clients[0], auth, body, user=user)
        url = f"/api/{user}/tasks/{task['id']}/complete"
        responses = await asyncio.gather(
            *(http.patch(url, json={"completed": True}, headers=auth(user)) for http in clients)
        )
        assert [r.status_code for r in responses] == [200] * 10, [r.text for r in responses]
        workers = {served_by(two_workers.workers, two_workers.port, r) for r in responses}
        listed = await list_all(clients[0], auth, user)
    assert workers == set(two_workers.workers)
    assert len({r.content for r in responses}) == 1
    done = responses[0].json()
    assert (done["completed"], done["version"]) == (True, 2)
    assert sorted((t["due_at"], t["completed"]) for t in listed) == [
        ("2026-12-31T09:00:00Z", True),
        ("2027-01-31T09:00:00Z", False),
    ]


# --- atomic writes without If-Match ---------------------------------------------------------------


@pytest.mark.parametrize("toggles", [25, 26])
async def test_concurrent_toggles_count_every_toggle_once(
    live_server: LiveServer, auth: Auth, toggles: int
) -> None:
    user = new_user()
    async with AsyncExitStack() as stack:
        clients = await connections(live_server.base_url, user, auth, toggles, stack)
        task = await create(clients[0], auth, {"title": "toggle me"}, user=user)
        url = f"/api/{user}/tasks/{task['id']}/complete"
        responses = await asyncio.gather(*(http.patch(url, headers=auth(user)) for http in clients))
        assert [r.status_code for r in responses] == [200] * toggles, [r.text for r in responses]
        final = (await clients[0].get(f"/api/{user}/tasks/{task['id']}", headers=auth(user))).json()
    answers = sorted((r.json() for r in responses), key=lambda answer: answer["version"])
    # Each toggle was a step of its own: versions 2..N+1, and the one at version v says
    # completed exactly when it was the (v-1)th toggle of a task that started pending.
    assert [a["version"] for a in answers] == list(range(2, toggles + 2))
    assert [a["completed"] for a in answers] == [v % 2 == 0 for v in range(2, toggles + 2)]
    assert [a["completed_at"] is not None for a in answers] == [a["completed"] for a in answers]
    assert [r.headers["ETag"] for r in responses] == [f'"{r.json()["version"]}"' for r in responses]
    assert final == answers[-1]
    assert final["completed"] is (toggles % 2 == 1)
    assert final["version"] == 1 + toggles


async def test_concurrent_patches_of_different_fields_count_each_change_once(
    live_server: LiveServer, auth: Auth
) -> None:
    # Four writers, each changing only its own field, each with its own connection, 12 times in
    # a row and all at the same time as each other: every change survives and moves the version
    # exactly once (a change lost or counted twice shows in the versions the answers carry).
    user = new_user()
    rounds = 12
    priorities = ["high", "low", "medium"]  # each differs from the one before ("medium" first)
    values: dict[str, list[Any]] = {
        "title": [f"title {n}" for n in range(rounds)],
        "description": [f"description {n}" for n in range(rounds)],
        "priority": [priorities[n % 3] for n in range(rounds)],
        "tags": [[f"tag-{n}", "same"] for n in range(rounds)],
    }
    async with AsyncExitStack() as stack:
        clients = await connections(live_server.base_url, user, auth, len(values), stack)
        task = await create(clients[0], auth, {"title": "start"}, user=user)
        url = f"/api/{user}/tasks/{task['id']}"

        async def writer(http: httpx.AsyncClient, field: str) -> list[Task]:
            answers = []
            for value in values[field]:
                response = await http.patch(url, json={field: value}, headers=auth(user))
                assert response.status_code == 200, response.text
                answer: Task = response.json()
                assert answer[field] == value  # its own change is in the row it wrote
                answers.append(answer)
            return answers

        written = await asyncio.gather(
            *(writer(http, field) for http, field in zip(clients, values, strict=True))
        )
        final = (await clients[0].get(url, headers=auth(user))).json()
    versions = sorted(answer["version"] for answers in written for answer in answers)
    assert versions == list(range(2, 2 + rounds * len(values)))
    for field, changes in values.items():
        assert final[field] == changes[-1]
    assert final["version"] == 1 + rounds * len(values)
    assert final["created_at"] == task["created_at"]


# --- If-Match -------------------------------------------------------------------------------------


def _write(kind: str, url: str, n: int) -> tuple[str, str, dict[str, Any] | None]:
    """A conditional write of this kind to the task at `url`: method, path, JSON body."""
    if kind == "patch":
        return "PATCH", url, {"title": f"patched {n}", "description": f"by patch {n}"}
    if kind == "put":
        return "PUT", url, {"title": f"put {n}", "priority": ["low", "high"][n % 2]}
    return "PATCH", f"{url}/complete", None  # a toggle


async def _if_match_rounds(
    base_url: str,
    auth: Auth,
    user: str,
    task: Task,
    rounds: int,
    pairs: list[tuple[str, str]],
) -> Task:
    """Each round, two writers send one If-Match at once (the writes of `pairs`, in turn): one
    200, one 412 whose `current` is the winner's answer. Returns the task as it ends."""
    url = f"/api/{user}/tasks/{task['id']}"
    etag = f'"{task["version"]}"'
    async with AsyncExitStack() as stack:
        clients = await connections(base_url, user, auth, 2, stack)
        for n in range(rounds):
            writes = [_write(kind, url, 2 * n + i) for i, kind in enumerate(pairs[n % len(pairs)])]
            headers = {**auth(user), "If-Match": etag}
            responses = await asyncio.gather(
                *(
                    http.request(method, path, json=body, headers=headers)
                    for http, (method, path, body) in zip(clients, writes, strict=True)
                )
            )
            statuses = [r.status_code for r in responses]
            assert sorted(statuses) == [200, 412], [r.text for r in responses]
            winner, loser = (responses[0], responses[1]) if statuses[0] == 200 else responses[::-1]
            task = winner.json()
            assert task["version"] == int(etag.strip('"')) + 1
            refused = loser.json()
            assert refused["code"] == "PRECONDITION_FAILED"
            assert refused["current"] == task
            assert loser.headers["ETag"] == winner.headers["ETag"] == f'"{task["version"]}"'
            etag = winner.headers["ETag"]
        final = (await clients[0].get(url, headers=auth(user))).json()
    assert final == task
    return task


async def test_if_match_race_has_one_winner_each_round(live_server: LiveServer, auth: Auth) -> None:
    user = new_user()
    rounds = 20
    async with httpx.AsyncClient(base_url=live_server.base_url, timeout=TIMEOUT) as http:
        task = await create(http, auth, {"title": "contested"}, user=user)
    pairs = [("patch", "patch"), ("patch", "toggle"), ("put", "toggle"), ("put", "patch")]
    final = await _if_match_rounds(live_server.base_url, auth, user, task, rounds, pairs)
    assert final["version"] == 1 + rounds


async def test_if_match_race_on_a_recurring_task_makes_one_occurrence(
    live_server: LiveServer, auth: Auth
) -> None:
    # A recurring task's toggles take the locked path (lock the row, compare the version): the
    # race still has one winner a round, and completing it, however often, makes one occurrence.
    user = new_user()
    rounds = 12
    body = {
        "title": "water the plants",
        "due_at": "2026-12-01T08:00:00Z",
        "recurrence": {"frequency": "daily", "interval": 1},
    }
    async with httpx.AsyncClient(base_url=live_server.base_url, timeout=TIMEOUT) as http:
        task = await create(http, auth, body, user=user)
        # The first round is two toggles: whichever wins completes the task.
        pairs = [("toggle", "toggle"), ("patch", "toggle"), ("toggle", "put")]
        final = await _if_match_rounds(live_server.base_url, auth, user, task, rounds, pairs)
        listed = await list_all(http, auth, user)
    assert final["version"] == 1 + rounds
    others = [other for other in listed if other["id"] != task["id"]]
    assert [(other["due_at"], other["completed"], other["version"]) for other in others] == [
        ("2026-12-02T08:00:00Z", False, 1)
    ]
