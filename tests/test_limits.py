"""Limits, in one process on both databases: the per-user rate limit (RATE_LIMIT, counted in
memory, or in Redis with RATE_LIMIT_STORAGE), the per-address budget of refused requests
(RATE_LIMIT_ANONYMOUS), and the task quota (MAX_TASKS_PER_USER, enforced by the database).
Across two worker processes: `test_limits_live.py`.

No test waits for the clock: a rate limit's window is a minute from a key's first request, and
each test sends its requests within a few seconds, for users (and addresses) of its own; the
limiter's clock for retrying Redis is injected.
"""

import asyncio
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from typing import Any
from uuid import uuid4

import httpx
import pytest
from sqlalchemy import text

from backend.config import Settings
from backend.middleware.rate_limit import (
    REDIS_TIMEOUT_SECONDS,
    RETRY_STORAGE_SECONDS,
    RateLimiter,
    address_key,
)
from backend.web.state import app_state
from tests.fixtures.app import app_client, running_app
from tests.fixtures.databases import make_settings
from tests.fixtures.processes import free_port
from tests.fixtures.redis import RedisServer
from tests.helpers import Auth, check_rate_headers, new_user

LIMIT = 30


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


class HungPeer:
    """A loopback TCP server that accepts connections and never answers: a hung Redis (what a
    SIGSTOPped redis-server looks like to a client). It counts what it is sent."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        self.connections: list[socket.socket] = []
        self.received: list[bytes] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with suppress(OSError):  # the listener closed
            while True:
                connection, _ = self.listener.accept()
                with self.lock:
                    self.connections.append(connection)
                threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        with suppress(OSError):
            while data := connection.recv(65536):
                with self.lock:
                    self.received.append(data)

    def seen(self) -> tuple[int, bytes]:
        """Connections accepted, and every byte received, so far."""
        with self.lock:
            return len(self.connections), b"".join(self.received)

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            for connection in self.connections:
                connection.close()


def commands(sent: bytes) -> int:
    """How many Redis commands (RESP arrays: a line starting with `*`) these bytes hold."""
    return sum(line.startswith(b"*") for line in sent.split(b"\r\n"))


@contextmanager
def hung_peer() -> Iterator[HungPeer]:
    peer = HungPeer()
    try:
        yield peer
    finally:
        peer.close()


async def test_a_hung_redis_costs_a_request_one_deadline_then_memory_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]  # the limiter's clock, for when it tries Redis again
    with hung_peer() as peer, caplog.at_level(logging.WARNING, logger="backend.rate_limit"):
        settings = make_settings(
            "sqlite:///unused.db", rate_limit=LIMIT, rate_limit_storage=peer.url
        )
        limiter = RateLimiter(settings, clock=lambda: now[0])
        try:
            started = time.monotonic()
            first = await limiter.hit("alice")
            waited = time.monotonic() - started
            # One connection and one command sent, no retry: the client gave up at the deadline
            # and the request was counted in memory.
            connections, sent = peer.seen()
            assert connections == 1, sent
            assert commands(sent) == 1, sent
            assert first is not None
            assert (first.allowed, first.remaining) == (True, LIMIT - 1)
            assert waited < REDIS_TIMEOUT_SECONDS + 2, waited  # loose: about 1 s, not 3-5 s
            # Until RETRY_STORAGE_SECONDS have passed, requests count in memory and Redis is
            # not asked.
            for remaining in range(LIMIT - 2, LIMIT - 7, -1):
                quota = await limiter.hit("alice")
                assert quota is not None
                assert quota.remaining == remaining
            assert peer.seen() == (1, sent)
            # Then Redis is tried again, on a new connection (the hung one was dropped): one
            # more deadline, and memory goes on counting.
            now[0] += RETRY_STORAGE_SECONDS
            quota = await limiter.hit("alice")
            assert quota is not None
            assert quota.remaining == LIMIT - 7
            assert peer.seen()[0] == 2
        finally:
            limiter.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "backend.rate_limit"]
    assert len(warnings) == 2, warnings
    assert all(w.startswith("rate limit storage unreachable") for w in warnings), warnings


async def test_a_request_over_a_hung_redis_is_answered(database_url: str, auth: Auth) -> None:
    with hung_peer() as peer:
        settings = make_settings(database_url, rate_limit=LIMIT, rate_limit_storage=peer.url)
        user = new_user()
        async with app_client(settings) as http:
            started = time.monotonic()
            response = await http.get(f"/api/{user}/tasks", headers=auth(user))
            waited = time.monotonic() - started
        assert response.status_code == 200, response.text
        assert response.headers["RateLimit-Remaining"] == str(LIMIT - 1)
        assert peer.seen()[0] == 1
        assert waited < REDIS_TIMEOUT_SECONDS + 4, waited  # loose: one deadline and a request


# --- the budget of refused requests per client address ---------------------------------------


@asynccontextmanager
async def clients(settings: Settings, *hosts: str) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One app, and a client calling it from each of these addresses (scope["client"], as
    uvicorn gives it)."""
    async with running_app(settings) as (app, _), AsyncExitStack() as stack:
        made = []
        for host in hosts:
            transport = httpx.ASGITransport(
                app=app, raise_app_exceptions=False, client=(host, 50000)
            )
            http = httpx.AsyncClient(transport=transport, base_url="http://testserver")
            made.append(await stack.enter_async_context(http))
        yield made


def check_address_refused(response: httpx.Response, limit: int) -> None:
    assert response.status_code == 429, response.text
    assert response.json() == {
        "detail": f"More than {limit} unauthenticated or refused requests a minute from this "
        f"address (RATE_LIMIT_ANONYMOUS): retry in {response.headers['Retry-After']} s",
        "code": "RATE_LIMITED",
    }
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["RateLimit-Limit"] == str(limit)
    assert response.headers["RateLimit-Remaining"] == "0"


async def test_refused_and_unrouted_requests_count_against_the_client_address(
    database_url: str, auth: Auth, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(database_url, rate_limit=LIMIT, rate_limit_anonymous=10)
    alice, bob = new_user(), new_user()
    tasks = f"/api/{alice}/tasks"
    counted: list[tuple[str, str, dict[str, str], int]] = [
        ("GET", tasks, {}, 401),  # no token
        ("GET", tasks, {"Authorization": "Bearer not-a-jwt"}, 401),
        ("GET", tasks, auth(alice, exp=int(time.time()) - 3600), 401),  # expired
        ("GET", tasks, auth(bob), 403),  # bob's token on alice's path
        ("POST", tasks, auth(bob), 403),
        ("GET", "/no/such/path", {}, 404),
        ("GET", f"{tasks}/1/nothing", auth(alice), 404),  # a token changes nothing here
        ("PUT", tasks, {}, 405),
        ("GET", "/docs/assets/nothing.js", {}, 404),
    ]
    async with clients(settings, "203.0.113.7", "203.0.113.8") as (http, neighbour):
        # The probes count against nothing, not even a wrong method on them.
        for _ in range(3):
            for path in ("/health", "/ready", "/metrics"):
                assert (await http.get(path)).status_code in (200, 503)
            assert (await http.delete("/health")).status_code == 405
        statuses = [
            (await http.request(method, path, headers=headers)).status_code
            for method, path, headers, _ in counted
        ]
        assert statuses == [status for *_, status in counted]
        assert (await http.get(tasks)).status_code == 401  # the 10th: within the budget
        caplog.clear()
        with caplog.at_level(logging.INFO):
            for method, path, headers, _ in counted:
                check_address_refused(await http.request(method, path, headers=headers), 10)
        # Said once, when the address went over; the refusals beyond are not logged each.
        logged = [
            (r.name, r.getMessage())
            for r in caplog.records
            if r.name.startswith("backend.") and r.name != "backend.access"
        ]
        assert len(logged) == 1, logged
        assert logged[0][0] == "backend.rate_limit"
        assert logged[0][1].startswith(
            "a client address went over RATE_LIMIT_ANONYMOUS (10 a minute): its refused "
            "requests are answered 429 for "
        )
        # An authenticated request counts against its user's budget only, as before.
        mine = await http.get(tasks, headers=auth(alice))
        assert mine.status_code == 200, mine.text
        assert mine.headers["RateLimit-Remaining"] == str(LIMIT - 1)
        assert (await http.get("/health")).status_code == 200
        # Another address has a budget of its own.
        assert (await neighbour.get(tasks)).status_code == 401


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:0db8:0001:0002:ffff:ffff:ffff:fffe", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),  # IPv4 reached over IPv6
        ("::1", "::/64"),
        ("unknown", "unknown"),  # a proxy's header may name no address
        ("x" * 500, "x" * 64),
    ],
)
def test_address_key(host: str, key: str) -> None:
    assert address_key(host) == key


async def test_an_ipv6_client_counts_by_its_64(database_url: str) -> None:
    settings = make_settings(database_url, rate_limit_anonymous=3)
    hosts = ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:3::1")
    async with clients(settings, *hosts) as (one, same_64, next_64):
        statuses = [(await http.get("/nowhere")).status_code for http in (one, same_64, one)]
        assert statuses == [404, 404, 404]
        # A new address in the same /64 is the same budget; the next /64 has its own.
        check_address_refused(await same_64.get("/nowhere"), 3)
        assert (await next_64.get("/nowhere")).status_code == 404


async def test_rate_limit_anonymous_zero_is_off(database_url: str) -> None:
    async with clients(make_settings(database_url, rate_limit_anonymous=0), "203.0.113.7") as (
        http,
    ):
        statuses = {(await http.get("/api/alice/tasks")).status_code for _ in range(20)}
    assert statuses == {401}


async def test_the_address_budget_in_redis_is_shared_by_apps(
    database_url: str, redis_server: RedisServer
) -> None:
    settings = make_settings(
        database_url, rate_limit_anonymous=6, rate_limit_storage=redis_server.url
    )
    host = f"198.51.100.{uuid4().int % 250 + 1}"  # Redis outlives the test: an address of its own
    async with clients(settings, host) as (one,), clients(settings, host) as (two,):
        statuses = [(await http.get("/nowhere")).status_code for http in [one, two] * 4]
    assert statuses == [404] * 6 + [429] * 2


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


async def post_task(
    http: httpx.AsyncClient, user: str, auth: Auth, **headers: str
) -> httpx.Response:
    return await http.post(
        f"/api/{user}/tasks", json={"title": "t"}, headers={**auth(user), **headers}
    )


async def test_quota_holds_under_concurrent_creates(database_url: str, auth: Auth) -> None:
    settings = make_settings(database_url, max_tasks_per_user=5)
    user, other = new_user(), new_user()
    async with app_client(settings) as http:
        # The first creates of a user who has never had a task: no counter row to lock yet.
        responses = await asyncio.gather(*(post_task(http, user, auth) for _ in range(20)))
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
        again = await asyncio.gather(*(post_task(http, user, auth) for _ in range(10)))
        assert [r.status_code for r in again] == [409] * 10
        # Another user has a quota of their own.
        assert (await post_task(http, other, auth)).status_code == 201


async def test_deleting_frees_a_place(database_url: str, auth: Auth) -> None:
    settings = make_settings(database_url, max_tasks_per_user=3)
    user = new_user()
    async with app_client(settings) as http:
        ids = [(await post_task(http, user, auth)).json()["id"] for _ in range(3)]
        assert (await post_task(http, user, auth)).status_code == 409
        deleted = await http.delete(f"/api/{user}/tasks/{ids[0]}", headers=auth(user))
        assert deleted.status_code in (200, 204)
        assert (await post_task(http, user, auth)).status_code == 201
        assert (await post_task(http, user, auth)).status_code == 409
        # Deleting many at once frees as many places.
        cleared = await http.delete(f"/api/{user}/tasks?status=all", headers=auth(user))
        assert cleared.status_code == 200, cleared.text
        created = await asyncio.gather(*(post_task(http, user, auth) for _ in range(5)))
        assert sorted(r.status_code for r in created) == [201] * 3 + [409] * 2


async def test_idempotent_replay_at_the_quota_still_replays(database_url: str, auth: Auth) -> None:
    settings = make_settings(database_url, max_tasks_per_user=2)
    user = new_user()
    async with app_client(settings) as http:
        first = await post_task(http, user, auth, **{"Idempotency-Key": "k1"})
        assert (await post_task(http, user, auth)).status_code == 201  # now at the quota
        replay = await post_task(http, user, auth, **{"Idempotency-Key": "k1"})
        assert replay.status_code == 201
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.content == first.content
        # A new key is a new request, and is refused; so is its retry (nothing was stored).
        for _ in range(2):
            refused = await post_task(http, user, auth, **{"Idempotency-Key": "k2"})
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
            assert (await post_task(http, user, auth)).status_code == 201
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
        async with app_state(app).db.connect() as conn:
            kept = await conn.scalar(
                text("SELECT task_count FROM sync_state WHERE user_id = :u"), {"u": user}
            )
        assert kept == 5
