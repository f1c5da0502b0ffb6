"""Fixtures: the whole suite runs once on SQLite and once on a real PostgreSQL.

PostgreSQL is a throwaway cluster (initdb + pg_ctl, run as the `postgres` user when we are
root, since PostgreSQL refuses to run as root) on a free loopback port, started once per test
session and removed afterwards. With CI set, a PostgreSQL that cannot start fails the run;
elsewhere its half of the suite is skipped with the reason. TEST_DATABASES=sqlite (or
postgresql) runs one half only.
"""

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import text

from backend import db
from backend.config import Settings
from backend.main import create_app

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
ALL_DATABASES = ("sqlite", "postgresql")
PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin")


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


@dataclass
class PostgresCluster:
    port: int
    folder: Path

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


def _start_postgres() -> PostgresCluster:
    folder = Path(tempfile.mkdtemp(prefix="taskapi-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        postgres_user = pwd.getpwnam("postgres")
        os.chown(folder, postgres_user.pw_uid, postgres_user.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    port = free_port()
    subprocess.run(
        [
            *as_postgres,
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
    options = (
        f"-p {port} -c listen_addresses=127.0.0.1 -k {folder} -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    subprocess.run(
        [
            *as_postgres,
            _pg_tool("pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(folder / "log"),
            "-w",
            "-t",
            "60",
            "start",
        ],
        check=True,
        capture_output=True,
        timeout=90,
    )
    return PostgresCluster(port=port, folder=folder)


def _stop_postgres(cluster: PostgresCluster) -> None:
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(
        [
            *as_postgres,
            _pg_tool("pg_ctl"),
            "-D",
            str(cluster.folder / "data"),
            "-m",
            "fast",
            "-w",
            "stop",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    shutil.rmtree(cluster.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    try:
        cluster = _start_postgres()
    except (OSError, subprocess.SubprocessError, KeyError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        message = f"PostgreSQL could not start: {exc} {detail.decode(errors='replace')}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield cluster
    finally:
        _stop_postgres(cluster)


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
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)


def _selected_databases() -> list[str]:
    wanted = os.environ.get("TEST_DATABASES", ",".join(ALL_DATABASES))
    return [name for name in ALL_DATABASES if name in wanted.split(",")]


@pytest.fixture(scope="session", params=_selected_databases())
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated database of each kind, shared by the tests (each starts from an empty table)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'tasks.db'}"
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        asyncio.run(_create_database(cluster.url("postgres"), "taskapi_test"))
        url = cluster.url("taskapi_test")
    asyncio.run(db.migrate(make_settings(url)))
    return url


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
        await app.state.verifier.aclose()
        await app.state.db.dispose()


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings) as (_, http):
        yield http


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real ASGI app on an empty task table, through httpx."""
    async with running_app(settings) as (app, http):
        async with app.state.db.engine.connect() as conn:
            await conn.execute(text("DELETE FROM task"))
        yield http


@dataclass
class LiveServer:
    base_url: str
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def live_server(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """The service under uvicorn in its own process, on a free loopback port; one per module
    and database, so its tests use user ids of their own (the table is not emptied for them)."""
    port = free_port()
    tmp_path = tmp_path_factory.mktemp("live")
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BETTER_AUTH_SECRET": SECRET,
        "MIGRATE_ON_START": "false",
        "DATA_DIR": str(tmp_path),
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
            http.post(f"http://127.0.0.1:{port}/", timeout=5)  # warm: first request imports lazily
        yield LiveServer(base_url=f"http://127.0.0.1:{port}", process=process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
