"""Fixtures: the whole suite runs once on SQLite and once on a real PostgreSQL.

PostgreSQL is a throwaway cluster (initdb + pg_ctl, run as the `postgres` user when we are
root, since PostgreSQL refuses to run as root) on a free loopback port, started once per test
session and removed afterwards. With CI set, a PostgreSQL that cannot start fails the run;
elsewhere its half of the suite is skipped with the reason. TEST_DATABASES=sqlite (or
postgresql) runs one half only.

A third kind, `pgbouncer`, is the same PostgreSQL through a real PgBouncer in transaction mode
(Neon's pooled connection): the modules that matter most there ask for it themselves
(`database_kinds("pgbouncer")`), and TEST_DATABASES=pgbouncer runs the whole suite through it.
Settings made by `make_settings` for a pooled URL say DB_POOLER=transaction, as a deployment's
would. Tests that break a database (restart it, freeze it, exhaust it) start clusters of their
own with `spare_postgres`.
"""

import asyncio
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import jwt
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import text

from backend import db
from backend.config import Settings
from backend.main import create_app
from backend.web.state import app_state

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
ALL_DATABASES = ("sqlite", "postgresql")
DATABASE_KINDS = (*ALL_DATABASES, "pgbouncer")
PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin")
PGBOUNCER = "/usr/sbin/pgbouncer"
# URLs that lead through the test PgBouncer: settings for them say DB_POOLER=transaction.
POOLED_URLS: set[str] = set()


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pg_tool(name: str) -> str:
    for directory in PG_BIN_DIRS:
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"PostgreSQL's {name} is not installed")
    return found


def _as_postgres() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """End a server the tests started: politely, then for sure."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _owned_temp_folder(prefix: str) -> Path:
    """A new folder under the system temp dir, owned by `postgres` when we are root (the
    servers the tests start refuse to run as root)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        postgres_user = pwd.getpwnam("postgres")
        os.chown(folder, postgres_user.pw_uid, postgres_user.pw_gid)
    return folder


@dataclass
class PostgresCluster:
    port: int
    folder: Path
    options: str = ""  # the postgres command-line options it was started with

    def url(self, database: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def pg_ctl(self, *args: str, timeout: float = 90) -> None:
        subprocess.run(
            [*_as_postgres(), _pg_tool("pg_ctl"), "-D", str(self.data), *args],
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def start(self) -> None:
        log = str(self.folder / "log")
        self.pg_ctl("-o", self.options, "-l", log, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        # Not `pg_ctl restart`: it cannot be given the log file, so the new postmaster would
        # inherit our pipes and the call would never return.
        self.stop(mode)
        self.start()

    def processes(self) -> list[int]:
        """The postmaster and every process it started (backends, writers, autovacuum)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(
            ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
        ).stdout.split()
        return [postmaster, *map(int, children)]

    def signal(self, pids: list[int], signum: signal.Signals) -> None:
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signum)


def start_postgres(
    settings: dict[str, str] | None = None, hba: tuple[str, ...] = ()
) -> PostgresCluster:
    """A new cluster on a free loopback port; `settings` are extra `-c` options, `hba` lines
    put before the default (trust) ones of pg_hba.conf."""
    folder = _owned_temp_folder("taskapi-pg-")
    data = folder / "data"
    port = free_port()
    subprocess.run(
        [
            *_as_postgres(),
            _pg_tool("initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    if hba:
        hba_file = data / "pg_hba.conf"
        stat = hba_file.stat()
        hba_file.write_text("\n".join(hba) + "\n" + hba_file.read_text())
        os.chown(hba_file, stat.st_uid, stat.st_gid)
    options = {
        "listen_addresses": "127.0.0.1",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "200",
        **(settings or {}),
    }
    flags = " ".join(f"-c {name}={value}" for name, value in options.items())
    cluster = PostgresCluster(port=port, folder=folder, options=f"-p {port} -k {folder} {flags}")
    cluster.start()
    return cluster


def stop_postgres(cluster: PostgresCluster) -> None:
    # A test that froze the cluster may have failed before thawing it.
    with suppress(OSError, ValueError, IndexError):
        cluster.signal(cluster.processes(), signal.SIGCONT)
    with suppress(OSError, subprocess.SubprocessError):
        cluster.stop()
    shutil.rmtree(cluster.folder, ignore_errors=True)


def _unavailable(what: str, exc: BaseException) -> NoReturn:
    detail = getattr(exc, "stderr", b"") or b""
    if isinstance(detail, bytes):
        detail = detail.decode(errors="replace")
    message = f"{what} could not start: {exc} {detail}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    try:
        cluster = start_postgres()
    except (OSError, subprocess.SubprocessError, KeyError) as exc:
        _unavailable("PostgreSQL", exc)
    try:
        yield cluster
    finally:
        stop_postgres(cluster)


@pytest.fixture
def spare_postgres(postgres: PostgresCluster) -> Iterator[Callable[..., PostgresCluster]]:
    """spare_postgres(settings={...}, hba=(...)) -> a cluster of the test's own, to restart,
    freeze or exhaust; each one is stopped and removed after the test. (It asks for the session
    cluster only so that a machine without PostgreSQL skips or fails the same way.)"""
    started: list[PostgresCluster] = []

    def start(settings: dict[str, str] | None = None, hba: tuple[str, ...] = ()) -> PostgresCluster:
        cluster = start_postgres(settings, hba)
        started.append(cluster)
        return cluster

    try:
        yield start
    finally:
        for cluster in started:
            stop_postgres(cluster)


@dataclass
class PgBouncer:
    port: int
    process: subprocess.Popen[bytes]

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


def start_pgbouncer(cluster: PostgresCluster, folder: Path) -> PgBouncer:
    """Debian's PgBouncer in transaction mode (as Neon runs it) in front of `cluster`, on a free
    loopback port, as `postgres` when we are root (it refuses to run as root)."""
    binary = PGBOUNCER if Path(PGBOUNCER).exists() else shutil.which("pgbouncer")
    if binary is None:
        raise FileNotFoundError("PgBouncer is not installed (make test installs it)")
    port = free_port()
    users = folder / "users.txt"
    users.write_text('"postgres" ""\n')
    config = folder / "pgbouncer.ini"
    config.write_text(
        f"""[databases]
* = host=127.0.0.1 port={cluster.port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {users}
pool_mode = transaction
max_client_conn = 500
default_pool_size = 20
"""
    )
    user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    log = (folder / "pgbouncer.log").open("wb")
    process = subprocess.Popen(
        [binary, str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        user=user.pw_uid if user else None,
        group=user.pw_gid if user else None,
        extra_groups=[] if user else None,
    )
    log.close()
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return PgBouncer(port=port, process=process)
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise RuntimeError(
                    "PgBouncer did not start: " + (folder / "pgbouncer.log").read_text()
                ) from None
            time.sleep(0.05)


@pytest.fixture(scope="session")
def pgbouncer(postgres: PostgresCluster) -> Iterator[PgBouncer]:
    folder = _owned_temp_folder("taskapi-pgbouncer-")
    try:
        bouncer = start_pgbouncer(postgres, folder)
    except (OSError, RuntimeError, KeyError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        _unavailable("PgBouncer", exc)
    try:
        yield bouncer
    finally:
        stop_process(bouncer.process)
        shutil.rmtree(folder, ignore_errors=True)


async def _create_database(admin_url: str, name: str) -> None:
    engine = db.make_engine(make_settings(admin_url))
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await engine.dispose()


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "better_auth_secret": SecretStr(SECRET),
        "migrate_on_start": False,
        "db_pooler": "transaction" if database_url in POOLED_URLS else None,
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)


def database_kinds(*extra: str) -> list[str]:
    """The kinds TEST_DATABASES selects (default: sqlite and postgresql), plus `extra` kinds
    that run on PostgreSQL (pgbouncer) when PostgreSQL is selected."""
    wanted = os.environ.get("TEST_DATABASES", ",".join(ALL_DATABASES)).split(",")
    if "postgresql" in wanted:
        wanted += extra
    return [name for name in DATABASE_KINDS if name in wanted]


@pytest.fixture(scope="session")
def sqlite_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'tasks.db'}"
    asyncio.run(db.migrate(make_settings(url)))
    return url


@pytest.fixture(scope="session")
def postgresql_database_url(postgres: PostgresCluster) -> str:
    asyncio.run(_create_database(postgres.url("postgres"), "taskapi_test"))
    url = postgres.url("taskapi_test")
    asyncio.run(db.migrate(make_settings(url)))
    return url


@pytest.fixture(scope="session")
def pgbouncer_database_url(postgres: PostgresCluster, pgbouncer: PgBouncer) -> str:
    """A database of its own on the session cluster, reached through PgBouncer (migrated on
    a direct connection, as DATABASE_DIRECT_URL does it)."""
    asyncio.run(_create_database(postgres.url("postgres"), "taskapi_pooled"))
    asyncio.run(db.migrate(make_settings(postgres.url("taskapi_pooled"))))
    url = pgbouncer.url("taskapi_pooled")
    POOLED_URLS.add(url)
    return url


@pytest.fixture(scope="session", params=database_kinds())
def database_url(request: pytest.FixtureRequest) -> str:
    """A migrated database of each kind, shared by the tests (each starts from an empty table)."""
    return str(request.getfixturevalue(f"{request.param}_database_url"))


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
def token() -> Callable[..., str]:
    """token("alice") -> a valid HS256 JWT; keyword arguments override or add claims
    (a value of None removes the claim); `secret=` and `algorithm=` change the signing."""

    def make(sub: Any, *, secret: str = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + 3600, **claims}
        payload = {key: value for key, value in payload.items() if value is not None}
        return jwt.encode(payload, secret, algorithm=algorithm)

    return make


@pytest.fixture
def auth(token: Callable[..., str]) -> Callable[..., dict[str, str]]:
    """auth("alice") -> {"Authorization": "Bearer <valid token for alice>"}."""

    def make(sub: str, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {token(sub, **claims)}"}

    return make


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The real app with these settings, driven through httpx; closed like its lifespan would."""
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield app, http
    finally:
        await app_state(app).aclose()


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings) as (_, http):
        yield http


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real ASGI app on an empty task table, through httpx."""
    async with running_app(settings) as (app, http):
        async with app_state(app).db.connect() as conn:
            for table in ("task", "task_tombstone", "sync_state", "idempotency_key"):
                await conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608 - fixed names
        yield http


@dataclass
class LiveServer:
    base_url: str
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def live_server(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[LiveServer]:
    """The service under uvicorn in its own process, on a free loopback port; one per module
    and database, so its tests use user ids of their own (the table is not emptied for them).
    A module's `LIVE_SERVER_ENV` (a dict) adds to or overrides the server's environment."""
    port = free_port()
    tmp_path = tmp_path_factory.mktemp("live")
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DB_POOLER": "transaction" if database_url in POOLED_URLS else "none",
        "BETTER_AUTH_SECRET": SECRET,
        "MIGRATE_ON_START": "false",
        "DATA_DIR": str(tmp_path),
        # Its modules send hundreds of requests a minute as one user, and unauthenticated ones
        # from one address; the rate limits have tests of their own (test_limits*.py).
        "RATE_LIMIT": "0",
        "RATE_LIMIT_ANONYMOUS": "0",
        **getattr(request.module, "LIVE_SERVER_ENV", {}),
    }
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "backend.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            # The tests open many connections before they use them: on a busy machine the
            # first could idle past uvicorn's 5 s keep-alive, and be closed under a request.
            "--timeout-keep-alive",
            "120",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "the live server did not start: " + (tmp_path / "server.log").read_text()
                    ) from None
                time.sleep(0.05)
        with httpx.Client() as http:
            http.post(f"http://127.0.0.1:{port}/", timeout=30)  # warm: first request imports lazily
        yield LiveServer(base_url=f"http://127.0.0.1:{port}", process=process)
    finally:
        stop_process(process)
        log.close()


# --- Redis, for the rate limit shared by workers ------------------------------------------------

REDIS_SERVER = "/usr/bin/redis-server"


@dataclass
class RedisServer:
    url: str  # redis://127.0.0.1:port/0, as RATE_LIMIT_STORAGE takes it
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A throwaway redis-server (Debian's; `make test-services` installs it) on a free loopback
    port, keeping nothing on disk: a child of the test session, stopped at its end."""
    binary = shutil.which("redis-server") or REDIS_SERVER
    if not Path(binary).exists():
        _unavailable("redis-server", FileNotFoundError(binary))
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    command += ["no", "--daemonize", "no", "--dir", str(folder)]
    log = (folder / "redis.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                _unavailable("redis-server", RuntimeError((folder / "redis.log").read_text()))
            time.sleep(0.05)
        yield RedisServer(f"redis://127.0.0.1:{port}/0", process)
    finally:
        stop_process(process)
        log.close()
