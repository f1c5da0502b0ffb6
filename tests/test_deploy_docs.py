"""docs/deploy.md as written: its production settings are accepted (ENV=production included), and
its start command, run by a shell as a host runs it, serves a ready service that stops cleanly."""

import contextlib
import os
import re
import signal
import sys
from pathlib import Path

import httpx
import pytest

from backend import db
from backend.config import Settings
from tests.fixtures.processes import free_port, launched
from tests.helpers import SECRET

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


@pytest.mark.live
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

    def ready() -> bool:
        # Ready, through both workers (WEB_CONCURRENCY=2) once each has started.
        if log.read_text().count("Application startup complete") < 2:
            return False
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200
        return False

    with launched(
        ["sh", "-c", command],
        log=log,
        ready=ready,
        what="the start command",
        seconds=START_SECONDS,
        new_session=True,
        env=environment,
        cwd=tmp_path,
    ) as process:
        assert httpx.get(f"http://127.0.0.1:{port}/health").json() == {"status": "ok"}
        os.killpg(process.pid, signal.SIGTERM)
        code = process.wait(timeout=60)
    assert code == 0, log.read_text()
