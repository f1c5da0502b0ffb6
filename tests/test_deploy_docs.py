"""docs/deploy.md as written: its production settings are accepted (ENV=production included), and
its start command, run by a shell as a host runs it, serves a ready service that stops cleanly."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from backend import db
from backend.config import Settings
from tests.conftest import SECRET, free_port

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "deploy.md"
BLOCK = re.compile(r'^```(\w+) title="([^"]+)"\n(.*?)^```$', re.MULTILINE | re.DOTALL)
START_SECONDS = 90  # two workers on a busy machine


def block(title: str) -> str:
    found = [body for _, name, body in BLOCK.findall(GUIDE.read_text()) if name == title]
    assert len(found) == 1, title
    return str(found[0])


def test_the_production_settings_are_accepted() -> None:
    values = dict(
        line.split("=", 1) for line in block("production environment").splitlines() if line
    )
    settings = Settings.model_validate({name.lower(): value for name, value in values.items()})
    assert settings.env == "production"
    db.check_urls(settings)  # both Neon URLs, as Neon shows them
    assert db.normalize_url(settings.db_url).host is not None
    assert settings.cors_origin_regex is not None
    assert re.fullmatch(settings.cors_origin_regex, "https://my-app-git-x-y.vercel.app")


def test_the_start_command_serves_a_ready_service_that_stops_cleanly(
    database_url: str, tmp_path: Path
) -> None:
    command = block("start command").strip()
    port = free_port()
    log = tmp_path / "server.log"
    environment = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HOST": "127.0.0.1",  # tests listen on loopback only; the platform's default is 0.0.0.0
        "PORT": str(port),
        "ENV": "production",
        "DATABASE_URL": database_url,
        "BETTER_AUTH_SECRET": SECRET,
        "CORS_ORIGINS": "https://app.example.com",
        "DATA_DIR": str(tmp_path),
        "LOG_FORMAT": "json",
        "PYTHONPATH": str(ROOT),  # this checkout's code, whichever one the venv came from
    }
    environment.pop("DB_POOLER", None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["sh", "-c", command],
            env=environment,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_SECONDS
        ready = None
        # Ready, through both workers (WEB_CONCURRENCY=2) once each has started.
        while (
            ready is None
            or ready.status_code != 200
            or log.read_text().count("Application startup complete") < 2
        ):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the start command did not serve:\n{log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5)
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/health").json() == {"status": "ok"}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
    assert code == 0, log.read_text()
