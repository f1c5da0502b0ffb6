"""Start-up with a database that cannot be used: `taskapi migrate` and `taskapi serve` end with
one line on stderr that names the problem and the host (never the password) and a non-zero
exit, not a traceback. The main cases run the real command in a process of its own; the rest
call the same entry point in this process (a second each saved).
"""

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from backend import cli
from backend.db import ACCEPTED_URLS
from tests.fixtures.postgres import PostgresCluster
from tests.fixtures.processes import free_port
from tests.helpers import SECRET

PASSWORD = "Pa55-word-never-printed"
TASKAPI = str(Path(sys.executable).with_name("taskapi"))


def taskapi(
    command: str, database_url: str, tmp_path: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TASKAPI, command],
        env={
            **os.environ,
            "DATABASE_URL": database_url,
            "BETTER_AUTH_SECRET": SECRET,
            "DATA_DIR": str(tmp_path),
            "DB_CONNECT_TIMEOUT": "1",
            **env,
        },
        cwd=tmp_path,  # no .env here
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert PASSWORD not in result.stderr
    return lines[0]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose listener accepts connections and never says a word."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        yield silent.getsockname()[1]


@pytest.mark.live
@pytest.mark.parametrize("command", ["migrate", "serve"])
def test_connection_refused(command: str, tmp_path: Path) -> None:
    port = free_port()
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/tasks"
    assert one_line(taskapi(command, url, tmp_path)) == (
        f'taskapi: PostgreSQL at 127.0.0.1:{port} (database "tasks", user "app") refused the '
        "connection: is PostgreSQL running and listening there?"
    )


def exit_line(
    argv: list[str], database_url: str, monkeypatch: pytest.MonkeyPatch, **env: str
) -> str:
    """`taskapi ARGV` in this process: the message it exits with."""
    for name, value in {
        "DATABASE_URL": database_url,
        "BETTER_AUTH_SECRET": SECRET,
        "DB_CONNECT_TIMEOUT": "1",
        **env,
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert isinstance(exited.value.code, str)
    assert PASSWORD not in exited.value.code
    return exited.value.code


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    for name in ("DATABASE_DIRECT_URL", "DB_POOLER", "MIGRATE_ON_START"):
        monkeypatch.delenv(name, raising=False)


def test_no_answer_within_the_connect_timeout(
    silent_port: int, cli_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:{silent_port}/tasks"
    assert exit_line(["migrate"], url, monkeypatch) == (
        f'taskapi: PostgreSQL at 127.0.0.1:{silent_port} (database "tasks", user "app") did not '
        "answer within DB_CONNECT_TIMEOUT (1 s)"
    )


@pytest.mark.live
def test_wrong_password(spare_postgres: Callable[..., PostgresCluster], tmp_path: Path) -> None:
    cluster = spare_postgres(
        {"password_encryption": "scram-sha-256"},
        hba=("host all app 127.0.0.1/32 scram-sha-256",),
    )

    async def create_role() -> None:
        admin = await asyncpg.connect(cluster.url("postgres").replace("postgresql", "postgres"))
        try:
            await admin.execute("CREATE ROLE app LOGIN PASSWORD 'the-right-one'")
        finally:
            await admin.close()

    asyncio.run(create_role())
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:{cluster.port}/postgres"
    assert one_line(taskapi("migrate", url, tmp_path)) == (
        f'taskapi: PostgreSQL at 127.0.0.1:{cluster.port} (database "postgres", user "app") '
        'refused the login: password authentication failed for user "app" '
        "(check the user and password in DATABASE_URL)"
    )


@pytest.mark.live
def test_tls_required_by_the_url_but_not_offered_by_the_server(
    postgres: PostgresCluster, tmp_path: Path
) -> None:
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{postgres.port}/postgres?sslmode=require"
    assert one_line(taskapi("migrate", url, tmp_path)) == (
        f'taskapi: PostgreSQL at 127.0.0.1:{postgres.port} (database "postgres", user '
        '"postgres") does not accept TLS, but DATABASE_URL requires it (sslmode=require or '
        "stricter)"
    )


def refused_url(name: str, problem: str) -> str:
    return f"taskapi: {name} is not a database URL this service takes ({problem}); " + (
        f"write {ACCEPTED_URLS}"
    )


@pytest.mark.live
@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (
            f"mysql://app:{PASSWORD}@db.example.com/tasks",
            "the scheme is mysql://, not postgresql:// or sqlite://",
        ),
        ("sqlite://x", "a SQLite URL has three slashes and a file path, no host"),
        ("sqlite:///", "a SQLite URL needs a file path"),
        ("sqlite:///:memory:", "a SQLite URL needs a file path"),
        (
            f"postgresql://u:{PASSWORD}@h:port/db",
            "it cannot be parsed: scheme://… with a numeric port, if any",
        ),
        ("postgres//h/db", "it cannot be parsed: scheme://… with a numeric port, if any"),
        ("tasks.db", "it cannot be parsed: scheme://… with a numeric port, if any"),
        (f"postgresql://u:{PASSWORD}@/db", "a PostgreSQL URL needs a host"),
        (
            f"postgresql://u:{PASSWORD}@db.example.com",
            "a PostgreSQL URL needs a database name after the host",
        ),
    ],
)
def test_a_url_that_is_not_one_is_one_line_listing_the_forms(
    tmp_path: Path, url: str, problem: str
) -> None:
    # sqlite://x printed a 40-line traceback.
    result = taskapi("migrate", url, tmp_path)
    assert one_line(result) == refused_url("DATABASE_URL", problem)
    assert PASSWORD not in result.stderr


def test_serve_without_migrating_still_checks_the_url(
    cli_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"mysql://app:{PASSWORD}@db.example.com/tasks"
    assert exit_line(["serve"], url, monkeypatch, MIGRATE_ON_START="false") == refused_url(
        "DATABASE_URL", "the scheme is mysql://, not postgresql:// or sqlite://"
    )


def test_a_direct_url_of_another_database(
    postgres: PostgresCluster, cli_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = f"mysql://app:{PASSWORD}@db.example.com/tasks"
    line = exit_line(["migrate"], postgres.url("postgres"), monkeypatch, DATABASE_DIRECT_URL=direct)
    assert line == refused_url(
        "DATABASE_DIRECT_URL", "the scheme is mysql://, not postgresql:// or sqlite://"
    )
