"""A database that fails is a 503 with Retry-After in bounded time: never a 500, never a hang,
and the service recovers by itself when the database does.

Everything here is real: rows locked by another connection, a SQLite file held by another
writer, PostgreSQL clusters of the test's own that are restarted, frozen with SIGSTOP or run out
of connections while the app serves requests. Timeouts are configured small (1 s) so that the
tests are quick; the bounds asserted on the clock are loose (seconds), since what is tested is
"bounded", not "fast".
"""

import asyncio
import logging
import signal
import socket
from collections.abc import Callable

import asyncpg
import pytest
from sqlalchemy import text

from backend import db
from tests.fixtures.app import running_app
from tests.fixtures.databases import make_settings
from tests.fixtures.failures import (
    BOUND,
    assert_unavailable,
    fast_settings,
    postgres_row_lock,
    sqlite_write_lock,
    timed,
    until_nobody_waits_for_a_lock,
)
from tests.fixtures.postgres import PostgresCluster
from tests.helpers import Auth


def database_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What was logged at WARNING or above (the app logs an unavailable database once)."""
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_locked_task_is_503_within_the_statement_timeout_then_works(
    database_url: str, auth: Auth, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_app(fast_settings(database_url)) as (_, http):
        created = await http.post(
            "/api/alice/tasks", json={"title": "private words"}, headers=auth("alice")
        )
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        toggle = f"/api/alice/tasks/{task_id}/complete"
        if database_url.startswith("sqlite"):
            lock = sqlite_write_lock(database_url)
            async with asyncio.timeout(BOUND * 4):
                with lock:
                    caplog.clear()
                    response, elapsed = await timed(http.patch(toggle, headers=auth("alice")))
                    # WAL: readers go on while another connection writes.
                    read = await http.get(f"/api/alice/tasks/{task_id}", headers=auth("alice"))
                    assert read.status_code == 200, read.text
        else:
            async with postgres_row_lock(database_url, task_id):
                caplog.clear()
                response, elapsed = await timed(http.patch(toggle, headers=auth("alice")))
                # Cancelled on the server before the lock goes: the toggle never applies.
                await until_nobody_waits_for_a_lock(database_url)
        assert_unavailable(response)
        assert elapsed < BOUND
        # Logged once, as a warning that says why, with no SQL and none of the task's values.
        [record] = database_records(caplog)
        assert record.levelno == logging.WARNING
        assert record.name == "backend.errors"
        message = record.getMessage()
        assert "DB_STATEMENT_TIMEOUT" in message
        for leaked in ("UPDATE", "task", "private words", "alice"):
            assert leaked not in message

        # The lock is gone: the same request works, and the task was never half-changed.
        response = await http.patch(toggle, headers=auth("alice"))
        assert response.status_code == 200, response.text
        assert response.json()["completed"] is True


def test_unavailable_sqlstates() -> None:
    # The driver's exceptions as asyncpg raises them (each carries its SQLSTATE).
    unavailable = [
        asyncpg.AdminShutdownError,  # 57P01: pg_ctl stop/restart
        asyncpg.CrashShutdownError,  # 57P02: another backend crashed
        asyncpg.CannotConnectNowError,  # 57P03: starting up, recovering
        asyncpg.TooManyConnectionsError,  # 53300
        asyncpg.QueryCanceledError,  # 57014: statement_timeout
        asyncpg.LockNotAvailableError,  # 55P03: lock_timeout
        asyncpg.ConnectionFailureError,  # 08006
        asyncpg.ProtocolViolationError,  # 08P01: PgBouncer refusing a startup parameter
        asyncpg.DeadlockDetectedError,  # 40P01: the victim may be sent again
        asyncpg.SerializationError,  # 40001
    ]
    for error in unavailable:
        assert db.unavailable_reason(error("x")) is not None, error
    # A bug, bad data or a refused login stays what it is (500, logged with its traceback).
    for error in (
        asyncpg.UndefinedTableError,
        asyncpg.UniqueViolationError,
        asyncpg.InvalidPasswordError,
        asyncpg.NumericValueOutOfRangeError,
        asyncpg.InvalidSQLStatementNameError,  # 26000: prepared statement does not exist
    ):
        assert db.unavailable_reason(error("x")) is None, error


# --- PostgreSQL clusters of the test's own ------------------------------------------------------


async def _migrated(cluster: PostgresCluster) -> str:
    url = cluster.url("postgres")
    await db.migrate(make_settings(url))
    return url


async def test_a_restart_under_load_is_503_never_500_and_recovers(
    spare_postgres: Callable[..., PostgresCluster], auth: Auth, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = spare_postgres()
    url = await _migrated(cluster)
    statuses: list[int] = []
    slowest = 0.0
    stop = asyncio.Event()
    progress = asyncio.Condition()

    async def served(more: int) -> None:
        """Wait until `more` requests beyond those served so far have succeeded."""
        async with progress:
            target = sum(1 for status in statuses if status != 503) + more
            await progress.wait_for(lambda: sum(1 for s in statuses if s != 503) >= target)

    async with running_app(fast_settings(url, db_pool_size=4)) as (_, http):

        async def client(n: int) -> None:
            nonlocal slowest
            user = f"user{n}"
            while not stop.is_set():
                for request in (
                    http.post(f"/api/{user}/tasks", json={"title": "t"}, headers=auth(user)),
                    http.get(f"/api/{user}/tasks?limit=5", headers=auth(user)),
                ):
                    response, elapsed = await timed(request)
                    slowest = max(slowest, elapsed)
                    async with progress:
                        statuses.append(response.status_code)
                        progress.notify_all()
                    if response.status_code == 503:
                        assert_unavailable(response)
                        await asyncio.sleep(
                            0.05
                        )  # as a client honouring Retry-After would, briefly
                    else:
                        assert response.status_code in (200, 201), response.text

        clients = [asyncio.create_task(client(n)) for n in range(8)]
        try:
            async with asyncio.timeout(120):
                for mode in ("fast", "immediate"):  # a clean restart, then a crash and recovery
                    await served(20)
                    await asyncio.to_thread(cluster.restart, mode)
                # Recovery without restarting the service: requests succeed again by themselves.
                await served(50)
        finally:
            stop.set()
            await asyncio.gather(*clients)

    assert set(statuses) <= {200, 201, 503}
    assert slowest < BOUND
    for record in database_records(caplog):  # no 500 was logged, only the 503s' warnings
        assert record.name == "backend.errors"
        assert record.levelno == logging.WARNING
        assert record.getMessage().startswith("database unavailable: ")


async def test_a_request_right_after_a_restart_draws_a_fresh_connection(
    spare_postgres: Callable[..., PostgresCluster], auth: Auth
) -> None:
    # The restart closed every pooled connection; the pool replaces them at checkout (asyncpg
    # already knows they are closed), so nobody gets a 503 once the server is back.
    cluster = spare_postgres()
    url = await _migrated(cluster)
    async with running_app(fast_settings(url, db_pool_size=3)) as (_, http):
        listed = [http.get("/api/alice/tasks", headers=auth("alice")) for _ in range(3)]
        assert [r.status_code for r in await asyncio.gather(*listed)] == [200] * 3
        await asyncio.to_thread(cluster.restart, "fast")
        listed = [http.get("/api/alice/tasks", headers=auth("alice")) for _ in range(3)]
        responses = await asyncio.gather(*listed)
        assert [r.status_code for r in responses] == [200] * 3, [r.text for r in responses]


async def test_a_frozen_postgres_is_503_within_the_bound_then_recovers(
    spare_postgres: Callable[..., PostgresCluster], auth: Auth
) -> None:
    cluster = spare_postgres()
    url = await _migrated(cluster)
    async with running_app(fast_settings(url, db_pool_size=2)) as (_, http):
        warm = [http.get("/api/alice/tasks", headers=auth("alice")) for _ in range(2)]
        assert [r.status_code for r in await asyncio.gather(*warm)] == [200, 200]

        frozen = cluster.processes()
        cluster.signal(frozen, signal.SIGSTOP)
        try:
            # Two requests on the pooled connections (no answer to their statements), then
            # two more that need new connections (no answer to the connect).
            for _ in range(2):
                results = await asyncio.gather(
                    *(timed(http.get("/api/alice/tasks", headers=auth("alice"))) for _ in range(2))
                )
                for response, elapsed in results:
                    assert_unavailable(response)
                    assert elapsed < BOUND
        finally:
            cluster.signal(frozen, signal.SIGCONT)

        async with asyncio.timeout(60):
            while True:
                response = await http.get("/api/alice/tasks", headers=auth("alice"))
                if response.status_code == 200:
                    break
                assert_unavailable(response)
                await asyncio.sleep(0.1)


async def test_a_server_that_never_answers_is_503_within_the_connect_timeout(
    auth: Auth, postgres: PostgresCluster
) -> None:
    # A TCP listener that accepts (the kernel completes the handshake) and never says a word:
    # what a host whose database process hangs looks like to a new connection.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        settings = fast_settings(f"postgresql://postgres@127.0.0.1:{port}/postgres")
        async with running_app(settings) as (_, http):
            for _ in range(2):
                response, elapsed = await timed(http.get("/api/alice/tasks", headers=auth("alice")))
                assert_unavailable(response)
                assert elapsed < BOUND


async def test_more_connections_than_the_server_allows_is_503_not_500(
    spare_postgres: Callable[..., PostgresCluster], auth: Auth
) -> None:
    cluster = spare_postgres({"max_connections": "4", "superuser_reserved_connections": "0"})
    url = await _migrated(cluster)
    async with running_app(fast_settings(url, db_pool_size=10)) as (_, http):
        others = [await asyncpg.connect(url.replace("postgresql", "postgres")) for _ in range(4)]
        try:
            response, elapsed = await timed(http.get("/api/alice/tasks", headers=auth("alice")))
            assert_unavailable(response)  # "sorry, too many clients already" (53300)
            assert elapsed < BOUND
            await others.pop().close()
            await others.pop().close()
            # A burst larger than what is left: some get a connection, the others a 503.
            responses = await asyncio.gather(
                *(
                    http.post("/api/alice/tasks", json={"title": "t"}, headers=auth("alice"))
                    for _ in range(20)
                )
            )
            for response in responses:
                if response.status_code != 201:
                    assert_unavailable(response)
        finally:
            for other in others:
                await other.close()
        response = await http.get("/api/alice/tasks", headers=auth("alice"))
        assert response.status_code == 200, response.text


async def test_the_pool_gate_is_not_leaked_by_failures(
    spare_postgres: Callable[..., PostgresCluster],
) -> None:
    # Every failed connect gives its place back: with one connection allowed, ten failures in
    # a row leave the gate open for the eleventh, which succeeds once the server is there.
    cluster = spare_postgres()
    url = await _migrated(cluster)
    database = db.Database(fast_settings(url, db_pool_size=1))
    try:
        await asyncio.to_thread(cluster.stop)
        for _ in range(10):
            with pytest.raises(db.DatabaseUnavailable):
                async with database.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        await asyncio.to_thread(cluster.start)
        async with database.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await database.dispose()
