"""The same app however it is started: `uvicorn backend.main:app` (how most teams and hosts run a
FastAPI app) behaves as `taskapi serve` does. Real processes, both ways: with LOG_FORMAT=json
every line is JSON (uvicorn's own included) and a request has one access line, the app's; a
configuration that is refused is one line on stderr and a non-zero exit, never a traceback."""

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest

from tests.fixtures.processes import free_port, launched, port_open
from tests.helpers import SECRET, sign

pytestmark = pytest.mark.live  # it starts processes: servers of its own

ROOT = Path(__file__).resolve().parent.parent
START_SECONDS = 60  # a busy machine; the servers start in a second or two when it is not
UVICORN = [sys.executable, "-m", "uvicorn", "backend.main:app"]
TASKAPI = [str(Path(sys.executable).with_name("taskapi")), "serve"]


def _environment(folder: Path, **settings: str) -> dict[str, str]:
    return {
        **{key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"},
        "DATABASE_URL": f"sqlite:///{folder / 'tasks.db'}",
        "BETTER_AUTH_SECRET": SECRET,
        "DATA_DIR": str(folder),
        "PYTHONPATH": str(ROOT),  # this checkout's code, whichever one the venv came from
        **settings,
    }


@contextmanager
def serving(command: list[str], folder: Path, **settings: str) -> Iterator[tuple[str, Path]]:
    """The command serving on a free loopback port until the block ends; (base URL, its log)."""
    port = free_port()
    log = folder / "server.log"
    with launched(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        log=log,
        ready=lambda: port_open(port),
        what=" ".join(command),
        seconds=START_SECONDS,
        env=_environment(folder, **settings),
        cwd=folder,  # no .env here
    ):
        yield f"http://127.0.0.1:{port}", log


@pytest.mark.parametrize("command", [UVICORN, TASKAPI], ids=["uvicorn", "taskapi-serve"])
def test_every_line_is_json_and_a_request_has_one_access_line(
    command: list[str], tmp_path: Path
) -> None:
    with serving(command, tmp_path, LOG_FORMAT="json") as (base, log):
        headers = {"Authorization": f"Bearer {sign('alice')}", "X-Request-ID": "one-request"}
        created = httpx.post(f"{base}/api/alice/tasks", json={"title": "t"}, headers=headers)
        assert created.status_code == 201, created.text
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = [orjson.loads(line) for line in lines]  # fails on any line that is not JSON
    loggers = {record["logger"] for record in records}
    assert "uvicorn.error" in loggers, lines  # uvicorn's own lines, as JSON
    assert "uvicorn.access" not in loggers, lines  # its access line would be a second one
    access = [r for r in records if r.get("request_id") == "one-request"]
    assert [(r["logger"], r["route"], r["status"]) for r in access] == [
        ("backend.access", "/api/{user_id}/tasks", 201)
    ]
    assert "t" not in {r["message"] for r in records}  # no task text


@pytest.mark.parametrize("command", [UVICORN, TASKAPI], ids=["uvicorn", "taskapi-serve"])
@pytest.mark.parametrize(
    ("settings", "line"),
    [
        pytest.param(
            {"ENV": "production", "BETTER_AUTH_SECRET": ""},
            "taskapi: invalid configuration: ENV=production needs BETTER_AUTH_SECRET or "
            "BETTER_AUTH_URL (or JWT_JWKS_URL): the development secret is for local use only",
            id="production-without-secret",
        ),
        pytest.param(
            {"BETTER_AUTH_SECRET": "short"},
            "taskapi: invalid configuration: BETTER_AUTH_SECRET: BETTER_AUTH_SECRET must be at "
            "least 32 bytes and not blank (generate one with: openssl rand -base64 32)",
            id="weak-secret",
        ),
        pytest.param(
            {"DATABASE_URL": "sqlite://x"},
            "taskapi: DATABASE_URL is not a database URL this service takes (a SQLite URL has "
            "three slashes and a file path, no host); write sqlite:///relative/path/tasks.db, "
            "sqlite:////absolute/path/tasks.db, or "
            "postgresql://user:password@host[:port]/database[?sslmode=require] (postgres:// too)",
            id="malformed-database-url",
        ),
    ],
)
def test_a_refused_configuration_is_one_line_and_a_non_zero_exit(
    command: list[str], settings: dict[str, str], line: str, tmp_path: Path
) -> None:
    environment = _environment(tmp_path, **settings)
    environment = {key: value for key, value in environment.items() if value}
    result = subprocess.run(
        [*command, "--port", str(free_port())],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.splitlines() == [line]


def test_cors_says_what_it_allows_and_whom_it_refused(tmp_path: Path) -> None:
    allowed, foreign = "http://localhost:3000", "http://localhost:5173"
    preflight = {
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    with serving(UVICORN, tmp_path, CORS_ORIGINS=allowed) as (base, log):
        ok = httpx.options(f"{base}/api/alice/tasks", headers={"Origin": allowed, **preflight})
        refused = httpx.options(f"{base}/api/alice/tasks", headers={"Origin": foreign, **preflight})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == allowed
    assert refused.status_code == 400
    assert refused.json()["code"] == "CORS_REFUSED"
    assert f'"{foreign}"' in refused.json()["detail"]
    assert "CORS_ORIGINS" in refused.json()["detail"]
    text = log.read_text()
    assert f"CORS: browsers on these origins may call this API: {allowed}" in text
    assert f'CORS: refused a preflight from the origin "{foreign}"' in text


def test_without_cors_origins_the_start_up_log_says_browsers_are_refused(tmp_path: Path) -> None:
    with serving(UVICORN, tmp_path) as (_, log):
        pass
    assert "CORS: no browser origin is allowed (CORS_ORIGINS is not set)" in log.read_text()
