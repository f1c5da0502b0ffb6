"""`taskapi serve` against PostgreSQL, over real sockets: what a deployment sees when the
process is told to stop, and when the database goes away and comes back.

- SIGTERM: requests in flight finish (and their changes stay); new connections are refused;
  the process exits 0.
- An outage of the whole cluster under looping clients: 503 SERVICE_UNAVAILABLE with
  Retry-After within the configured timeouts, never a 500 or a dropped connection; service
  resumes without a restart, and every task acknowledged with 201 is there at the end.
- Neon-style idle disconnects (every idle connection of the service terminated between
  requests): the next requests succeed, as the pool replaces the dead connections.

Every wait is bounded by a loose deadline; the assertions are on what the service answered.
"""

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
import pytest

from tests.fixtures.databases import database_kinds
from tests.fixtures.postgres import PostgresCluster
from tests.fixtures.servers import taskapi_serve
from tests.helpers import Auth

# The shared venv's editable install points at another checkout: serve this one's code.
# A database that is away is noticed within two seconds.
SHORT_TIMEOUTS = {"DB_CONNECT_TIMEOUT": "2", "DB_POOL_TIMEOUT": "2", "DB_STATEMENT_TIMEOUT": "2"}

DEADLINE = 30.0
# Requests must be answered within this even while the database is down: the waits are set
# to 2 s (connect, pool, statement: DB_*_TIMEOUT below), and this leaves room for a busy machine.
BOUND = 15.0

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        "postgresql" not in database_kinds(), reason="PostgreSQL is not among TEST_DATABASES"
    ),
]


def plain_url(url: str) -> str:
    return url.replace("postgresql://", "postgres://", 1)


def _running(pid: int) -> bool:
    """Whether a process exists and has not exited (a zombie has closed its sockets)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


async def wait_for(condition: Callable[[], Any], what: str, seconds: float = DEADLINE) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(0.05)
    pytest.fail(f"{what}: not within {seconds:g} s")


async def test_sigterm_lets_a_request_in_flight_finish_and_exits_0(
    postgresql_database_url: str, tmp_path: Path, auth: Auth
) -> None:
    user = f"user-{uuid4().hex}"
    # A lock wait longer than the shutdown takes must not time out on its own.
    with taskapi_serve(
        postgresql_database_url,
        tmp_path,
        MIGRATE_ON_START="false",
        DB_STATEMENT_TIMEOUT="60",
    ) as served:
        async with httpx.AsyncClient(base_url=served.base_url, timeout=DEADLINE) as http:
            created = await http.post(
                f"/api/{user}/tasks", json={"title": "before"}, headers=auth(user)
            )
            assert created.status_code == 201, created.text
            task_id = created.json()["id"]

            locker = await asyncpg.connect(plain_url(postgresql_database_url))
            try:
                lock = locker.transaction()
                await lock.start()
                await locker.execute("SELECT 1 FROM task WHERE id = $1 FOR UPDATE", task_id)
                patch = asyncio.create_task(
                    http.patch(
                        f"/api/{user}/tasks/{task_id}", json={"title": "after"}, headers=auth(user)
                    )
                )

                async def blocked() -> bool:
                    waiting = await locker.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database() AND pid <> pg_backend_pid()"
                    )
                    return bool(waiting)

                await wait_for(blocked, "the PATCH waiting for the row lock")
                os.kill(served.process.pid, signal.SIGTERM)

                async def refused() -> bool:
                    # A new connection is refused (or, before the listener closes, answered; or,
                    # accepted in the instant the listener closed, closed unanswered by the
                    # shutdown): never left hanging.
                    try:
                        async with httpx.AsyncClient(timeout=5) as other:
                            await other.get(f"{served.base_url}/health")
                    except (httpx.ConnectError, httpx.RemoteProtocolError):
                        return True
                    return False

                await wait_for(refused, "new connections refused after SIGTERM")
                assert not patch.done(), "the PATCH ended before its lock was released"
                await lock.commit()
            finally:
                await locker.close()
            response = await asyncio.wait_for(patch, DEADLINE)
            assert response.status_code == 200, response.text
            assert response.json()["title"] == "after"

        assert served.process.wait(timeout=DEADLINE) == 0, served.log.read_text()
    check = await asyncpg.connect(plain_url(postgresql_database_url))
    try:
        assert await check.fetchval("SELECT title FROM task WHERE id = $1", task_id) == "after"
    finally:
        await check.close()


@dataclass
class Record:
    """What the looping clients saw."""

    statuses: dict[int, int] = field(default_factory=dict)
    slowest: float = 0.0
    failures: list[str] = field(default_factory=list)  # anything but 200/201/503 as specified
    acknowledged: list[str] = field(default_factory=list)  # ids of tasks answered 201
    successes_since: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, kind: str, response: httpx.Response, seconds: float) -> None:
        with self.lock:
            self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
            self.slowest = max(self.slowest, seconds)
            if response.status_code in (200, 201):
                self.successes_since[kind] = time.monotonic()
                if response.status_code == 201:
                    self.acknowledged.append(response.json()["id"])
            elif response.status_code == 503:
                body = response.json()
                if body.get("code") != "SERVICE_UNAVAILABLE" or "retry-after" not in (
                    response.headers
                ):
                    self.failures.append(f"503 without the contract: {response.text}")
            else:
                self.failures.append(f"{kind}: {response.status_code} {response.text[:200]}")


async def loop_clients(
    base_url: str, user: str, headers: dict[str, str], record: Record, stop: asyncio.Event
) -> None:
    async def client(kind: str, n: int) -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=DEADLINE * 2) as http:
            for i in range(100_000):  # bounded; ends when `stop` is set
                if stop.is_set():
                    return
                started = time.monotonic()
                try:
                    if kind == "write":
                        response = await http.post(
                            f"/api/{user}/tasks", json={"title": f"w{n}-{i}"}, headers=headers
                        )
                    else:
                        response = await http.get(f"/api/{user}/tasks?limit=5", headers=headers)
                except httpx.HTTPError as exc:
                    with record.lock:
                        record.failures.append(f"{kind}: {type(exc).__name__} {exc}")
                    await asyncio.sleep(0.05)
                    continue
                record.note(kind, response, time.monotonic() - started)
                await asyncio.sleep(0.01)

    await asyncio.gather(*(client(kind, n) for n in range(3) for kind in ("write", "read")))


async def test_a_database_outage_is_503_then_recovers_and_keeps_every_acknowledged_write(
    spare_postgres: Callable[..., PostgresCluster], tmp_path: Path, auth: Auth
) -> None:
    cluster = spare_postgres()
    url = cluster.url("postgres")
    user = f"user-{uuid4().hex}"
    with taskapi_serve(
        url,
        tmp_path,
        settings=SHORT_TIMEOUTS,
    ) as served:
        record = Record()
        stop = asyncio.Event()
        clients = asyncio.create_task(loop_clients(served.base_url, user, auth(user), record, stop))
        try:

            async def served_some() -> bool:
                return len(record.acknowledged) >= 10

            await wait_for(served_some, "writes before the outage")
            await asyncio.to_thread(cluster.stop)

            async def answered_503() -> bool:
                return record.statuses.get(503, 0) >= 6

            await wait_for(answered_503, "503s while the database is down")
            await asyncio.sleep(2)  # the clients keep going against a database that is down
            await asyncio.to_thread(cluster.start)
            restarted_at = time.monotonic()

            async def recovered() -> bool:
                since = record.successes_since
                return all(since.get(kind, 0) > restarted_at for kind in ("write", "read"))

            await wait_for(recovered, "reads and writes succeeding again after the restart")
            await asyncio.sleep(1)
        finally:
            stop.set()
            await asyncio.wait_for(clients, DEADLINE * 2)

        assert record.failures == [], record.failures[:10]
        assert record.statuses.get(503, 0) > 0, record.statuses
        assert record.slowest < BOUND, f"a request took {record.slowest:.1f} s"
        async with httpx.AsyncClient(base_url=served.base_url, timeout=DEADLINE) as http:
            listed = await http.get(f"/api/{user}/tasks?limit=500", headers=auth(user))
            assert listed.status_code == 200, listed.text
            have = {task["id"] for task in listed.json()}
            total = int(listed.headers["x-total-count"])
            if total > 500:  # a slow machine made more writes: look them up one by one
                missing = []
                for task_id in set(record.acknowledged) - have:
                    one = await http.get(f"/api/{user}/tasks/{task_id}", headers=auth(user))
                    if one.status_code != 200:
                        missing.append(task_id)
            else:
                missing = sorted(set(record.acknowledged) - have)
        assert missing == [], f"{len(missing)} acknowledged tasks are gone"


async def test_idle_connections_killed_by_the_server_are_replaced_unnoticed(
    spare_postgres: Callable[..., PostgresCluster], tmp_path: Path, auth: Auth
) -> None:
    """What Neon's compute does when it suspends (and what an idle timeout of a proxy does):
    every idle connection of the service is terminated between requests."""
    cluster = spare_postgres()
    url = cluster.url("postgres")
    user = f"user-{uuid4().hex}"
    with taskapi_serve(
        url,
        tmp_path,
        settings=SHORT_TIMEOUTS,
    ) as served:
        admin = await asyncpg.connect(plain_url(url))
        try:
            async with httpx.AsyncClient(base_url=served.base_url, timeout=DEADLINE) as http:
                statuses: list[int] = []
                for round_ in range(5):
                    # Several at once, so that the pool holds several connections to kill.
                    responses = await asyncio.gather(
                        *(
                            http.post(
                                f"/api/{user}/tasks",
                                json={"title": f"r{round_}-{i}"},
                                headers=auth(user),
                            )
                            for i in range(4)
                        ),
                        http.get(f"/api/{user}/tasks", headers=auth(user)),
                    )
                    statuses += [r.status_code for r in responses]
                    killed = await admin.fetch(
                        "WITH idle AS MATERIALIZED (SELECT pid FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        " AND backend_type = 'client backend' AND state = 'idle')"
                        " SELECT pid FROM idle WHERE pg_terminate_backend(pid)"
                    )
                    assert killed, "no idle connection of the service to terminate"
                    pids = [row["pid"] for row in killed]

                    async def gone(pids: list[int] = pids) -> bool:
                        # Exited, not only out of pg_stat_activity (a backend leaves it before
                        # its process ends and its socket closes): the service can know.
                        return not any(_running(pid) for pid in pids)

                    await wait_for(gone, "the terminated connections gone")
                    # As when Neon suspends, time passes before the next request: the service
                    # reads the ends of those connections (sent when the server processes
                    # exited) no later than this request, so it knows them closed by the next.
                    # Without it, a request landing in the same instant drew a dead one (503).
                    assert (await http.get("/health")).status_code == 200
                listed = await http.get(f"/api/{user}/tasks", headers=auth(user))
        finally:
            await admin.close()
    assert set(statuses) == {200, 201}, statuses
    assert listed.status_code == 200
    assert len(listed.json()) == 20
