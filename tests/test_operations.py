"""Running it in production: probes, request ids, access lines, metrics, the headers every
response carries, logs that never hold a secret, repeated failures counted, and the settings
that ENV=production refuses."""

import asyncio
import gc
import io
import json
import logging
import logging.config
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import text

from backend import db
from backend.config import Settings
from backend.logs import (
    JsonFormatter,
    RepeatFilter,
    RequestIdFilter,
    TextFormatter,
    logging_config,
)
from backend.main import create_app
from backend.services.health import head_revision
from backend.web.state import app_state
from tests.fixtures.app import running_app
from tests.fixtures.databases import create_database, make_settings
from tests.fixtures.postgres import PostgresCluster
from tests.fixtures.processes import free_port
from tests.helpers import SECRET, Auth

Token = Callable[..., str]
HEX_ID = re.compile(r"[0-9a-f]{32}")
ORIGIN = "https://app.example"
ROOT = Path(__file__).resolve().parent.parent


# --- /health and /ready ---------------------------------------------------------------------------


async def test_health_and_ready_need_no_token(client: httpx.AsyncClient) -> None:
    health = await client.get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}
    for response in (health, ready):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert HEX_ID.fullmatch(response.headers["x-request-id"])


@pytest.fixture
def empty_database_url(database_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database of the same kind as `database_url` that nothing has migrated."""
    if database_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'empty.db'}"
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    name = f"empty_{tmp_path.name.lower().replace('-', '_')[-40:]}"
    asyncio.run(create_database(cluster.url("postgres"), name))
    return cluster.url(name)


def assert_unavailable(response: httpx.Response) -> str:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    body = response.json()
    assert set(body) == {"detail", "code"}
    assert body["code"] == "SERVICE_UNAVAILABLE"
    detail: str = body["detail"]
    return detail


def test_ready_refuses_a_database_that_is_not_migrated(empty_database_url: str) -> None:
    async def check() -> None:
        async with running_app(make_settings(empty_database_url)) as (app, http):
            assert (await http.get("/health")).status_code == 200
            assert assert_unavailable(await http.get("/ready")) == (
                "the database is not migrated: it has no alembic_version table (expected "
                f"revision {head_revision()}); run `taskapi migrate`"
            )
            async with app_state(app).db.connect() as conn:
                await conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
                await conn.execute(text("INSERT INTO alembic_version VALUES ('0001_old')"))
            assert assert_unavailable(await http.get("/ready")) == (
                "the database is not migrated to this version: it is at revision 0001_old, "
                f"expected {head_revision()}; run `taskapi migrate`"
            )
            async with app_state(app).db.connect() as conn:
                await conn.execute(text("DROP TABLE alembic_version"))
        await db.migrate(make_settings(empty_database_url))
        async with running_app(make_settings(empty_database_url)) as (_, http):
            assert (await http.get("/ready")).json() == {"status": "ready"}

    asyncio.run(check())


async def test_ready_refuses_an_unreachable_database() -> None:
    settings = make_settings(
        f"postgresql://app@127.0.0.1:{free_port()}/tasks", db_connect_timeout=2
    )
    async with running_app(settings) as (_, http):
        assert (await http.get("/health")).json() == {"status": "ok"}
        detail = assert_unavailable(await http.get("/ready"))
    assert detail == "the database is unreachable: cannot connect to the database " + (
        "(ConnectionRefusedError)"
    )


# --- X-Request-ID and the headers of every response ----------------------------------------------


@pytest.fixture
async def app_with_boom(settings: Settings) -> Any:
    """The app with CORS on and a route under /api that fails (a bug)."""
    async with running_app(settings.model_copy(update={"cors_origins": [ORIGIN]})) as (app, http):

        async def boom() -> None:
            raise RuntimeError("a bug")

        app.add_api_route("/api/boom/explode", boom)
        yield app, http


async def test_a_sane_request_id_is_kept_and_any_other_replaced(
    app_with_boom: tuple[Any, httpx.AsyncClient], auth: Auth
) -> None:
    _, http = app_with_boom
    kept = "Abc-123_x.y"
    cases: list[tuple[bytes, bool]] = [
        (kept.encode(), True),
        (b"a" * 128, True),
        (b"a" * 129, False),
        (b"", False),
        (b"has space", False),
        (b"semi;colon", False),
        ("é".encode(), False),
    ]
    for incoming, keep in cases:
        response = await http.get("/health", headers={b"X-Request-ID": incoming})
        if keep:
            assert response.headers["x-request-id"] == incoming.decode()
        else:
            assert HEX_ID.fullmatch(response.headers["x-request-id"]), incoming
    # Echoed on every kind of answer: success, errors of each layer, a 500, a preflight.
    requests: list[tuple[str, str, dict[str, str], int]] = [
        ("GET", "/api/alice/tasks", auth("alice"), 200),
        ("GET", "/api/alice/tasks", {}, 401),
        ("GET", "/api/alice/tasks/1", auth("alice"), 404),
        ("GET", "/api/alice/tasks/abc", auth("alice"), 422),
        ("PUT", "/api/alice/tasks", auth("alice"), 405),
        ("GET", "/nowhere", {}, 404),
        ("GET", "/api/boom/explode", {}, 500),
        (
            "OPTIONS",
            "/api/alice/tasks",
            {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
            200,
        ),
        (
            "OPTIONS",
            "/api/alice/tasks",
            {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
            400,
        ),
    ]
    for method, path, headers, status in requests:
        response = await http.request(
            method, path, headers={**headers, "X-Request-ID": kept, "Origin": ORIGIN} | headers
        )
        assert response.status_code == status, (method, path, response.text)
        assert response.headers["x-request-id"] == kept, (method, path)
        assert response.headers["x-content-type-options"] == "nosniff", (method, path)
        if path.startswith("/api/"):
            assert response.headers["cache-control"] == "no-store", (method, path)
    response = await http.get("/api/alice/tasks", headers={**auth("alice"), "Origin": ORIGIN})
    exposed = {h.strip() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {"X-Request-ID", "Location", "ETag", "Link", "X-Total-Count", "X-Sync-Token"} <= exposed


# --- Logs --------------------------------------------------------------------------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []
        self.addFilter(RequestIdFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def captured() -> Iterator[Records]:
    root = logging.getLogger()
    handler = Records()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_every_line_of_a_request_names_it_and_the_access_line_names_the_template(
    client: httpx.AsyncClient, auth: Auth, token: Token
) -> None:
    created = await client.post("/api/alice/tasks", json={"title": "x"}, headers=auth("alice"))
    task_id = created.json()["id"]
    with captured() as logs:
        response = await client.get(
            f"/api/alice/tasks/{task_id}/", headers={**auth("alice"), "X-Request-ID": "req-1"}
        )
        assert response.status_code == 200
        refused = await client.get(
            "/api/alice/tasks",
            headers={"Authorization": f"Bearer {token('alice', secret='x' * 40)}"},
        )
        assert refused.status_code == 401
        await client.get("/api/alice/nothing/here")
        await client.get("/health")
    rid = refused.headers["x-request-id"]
    # The service's lines (not the test client's, nor aiosqlite's from its own thread).
    by_request = [
        (r.name, getattr(r, "request_id", None))
        for r in logs.records
        if r.name.startswith("backend")
    ]
    assert ("backend.auth", rid) in by_request  # the 401's reason, logged while it is served
    assert all(request_id is not None for _, request_id in by_request)
    access = [r for r in logs.records if r.name == "backend.access"]
    assert [(r.levelno, r.getMessage().rsplit(" ", 2)[0]) for r in access] == [
        (logging.INFO, "GET /api/{user_id}/tasks/{task_id} 200"),
        (logging.INFO, "GET /api/{user_id}/tasks 401"),
        (logging.INFO, "GET <unmatched> 404"),
        (logging.DEBUG, "GET /health 200"),  # load-balancer probes are not worth an INFO line
    ]
    first = access[0]
    assert first.__dict__["request_id"] == "req-1"
    assert (first.__dict__["method"], first.__dict__["route"], first.__dict__["status"]) == (
        "GET",
        "/api/{user_id}/tasks/{task_id}",
        200,
    )
    assert isinstance(first.__dict__["duration_ms"], float)
    assert "alice" not in " ".join(r.getMessage() for r in access)
    line = json.loads(JsonFormatter().format(first))
    assert line["request_id"] == "req-1"
    assert line["route"] == "/api/{user_id}/tasks/{task_id}"
    assert line["status"] == 200
    assert line["logger"] == "backend.access"
    assert TextFormatter().format(first).endswith(" request_id=req-1")


@contextmanager
def configured_logging(settings: Settings, stream: io.StringIO) -> Iterator[None]:
    """Logging configured as `taskapi serve` configures it, writing to `stream`; put back after."""
    root = logging.getLogger()
    config = logging_config(settings)
    names = list(config["loggers"])
    saved = (root.handlers[:], root.level)
    saved_loggers = {
        name: (lg.level, lg.handlers[:], lg.propagate, lg.disabled)
        for name in names
        for lg in [logging.getLogger(name)]
    }
    config["handlers"]["default"]["stream"] = stream
    logging.config.dictConfig(config)
    try:
        yield
    finally:
        root.handlers[:], root.level = saved
        for name, (level, handlers, propagate, disabled) in saved_loggers.items():
            logger = logging.getLogger(name)
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.propagate = propagate
            logger.disabled = disabled


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_logs_never_hold_tokens_secrets_or_task_text(
    settings: Settings, auth: Auth, token: Token, log_format: str
) -> None:
    marker = "MARKER-7f3a91c2"
    valid = token("alice")
    forged = token("alice", secret="another-secret-that-is-long-enough-0123456789")
    settings = settings.model_copy(update={"log_level": "DEBUG", "log_format": log_format})
    stream = io.StringIO()
    unreachable = make_settings(
        f"postgresql://app@127.0.0.1:{free_port()}/tasks", db_connect_timeout=2
    )
    with configured_logging(settings, stream):
        async with running_app(settings) as (app, http):

            async def boom() -> None:
                raise RuntimeError("a bug")

            app.add_api_route("/api/boom/explode", boom)
            bearer = {"Authorization": f"Bearer {valid}"}
            created = await http.post(
                "/api/alice/tasks",
                json={"title": f"title {marker}", "description": f"description {marker}"},
                headers=bearer,
            )
            assert created.status_code == 201
            path = f"/api/alice/tasks/{created.json()['id']}"
            assert (await http.patch(path, json={"title": marker}, headers=bearer)).is_success
            listed = await http.get("/api/alice/tasks", params={"q": marker}, headers=bearer)
            assert listed.status_code == 200
            too_long = {"title": marker * 50}
            assert (await http.post("/api/alice/tasks", json=too_long, headers=bearer)).status_code
            bad = {"Authorization": f"Bearer {forged}"}
            assert (await http.get("/api/alice/tasks", headers=bad)).status_code == 401
            foreign = {"Authorization": f"Bearer {token('bob')}"}
            assert (await http.get("/api/alice/tasks", headers=foreign)).status_code == 403
            assert (await http.get("/api/boom/explode", headers=bearer)).status_code == 500
            await http.delete("/api/alice/tasks?status=all", headers=bearer)
        async with running_app(unreachable) as (_, http):
            response = await http.get("/api/alice/tasks", headers=bearer)
            assert response.status_code == 503
    output = stream.getvalue()
    # What was meant to be there is there...
    assert "unhandled error" in output
    assert "Traceback" in output
    assert "RuntimeError: a bug" in output
    assert "database unavailable" in output
    assert "backend.access" in output
    # ...and nothing that must not be.
    for leak in (marker, valid, forged, SECRET, valid.split(".")[2], forged.split(".")[2]):
        assert leak not in output, leak
    if log_format == "json":
        lines = [json.loads(line) for line in output.splitlines()]
        assert {"time", "level", "logger", "message"} <= set(lines[0])
        assert any(line.get("route") == "/api/{user_id}/tasks/{task_id}" for line in lines)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_distinct_unhandled_errors_each_keep_their_traceback() -> None:
    # Every 500 is logged as "unhandled error": keyed by the message alone, a second bug in
    # the same minute was only counted, and its traceback never written.
    clock = FakeClock()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    handler.addFilter(RepeatFilter(handler, clock=clock))
    logger = logging.getLogger("tests.unhandled")
    logger.addHandler(handler)
    logger.propagate = False

    def first_bug() -> None:
        raise KeyError("first")

    def second_bug() -> None:
        raise KeyError("second")

    def third_bug() -> None:
        raise ZeroDivisionError

    try:
        for bug in (first_bug, second_bug, third_bug, first_bug, first_bug, third_bug):
            try:
                bug()
            except Exception as exc:
                logger.error("unhandled error", exc_info=exc)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    written = stream.getvalue()
    assert written.count("ERROR tests.unhandled: unhandled error") == 3
    assert "KeyError: 'first'" in written
    assert "KeyError: 'second'" in written
    assert "ZeroDivisionError" in written


def test_a_repeated_failure_is_logged_once_then_counted() -> None:
    clock = FakeClock()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    handler.addFilter(RepeatFilter(handler, clock=clock))
    logger = logging.getLogger("tests.repeats")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        for _ in range(5435):
            logger.warning("database unavailable: %s", "the database server is shutting down")
            clock.now += 0.001
        logger.info("an info line is never held back")
        logger.error("another failure: %s", 1)  # another template: a key of its own
        logger.error("another failure: %s", 2)
        clock.now += 4.6  # 10 s after the first record of the first key
        logger.info("the next record, of any kind, writes the summary first")
        for _ in range(3):
            logger.warning("database unavailable: %s", "the connection to the database failed")
        clock.now += 10
        logger.error("another failure: %s", 3)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    assert stream.getvalue().splitlines() == [
        "WARNING tests.repeats: database unavailable: the database server is shutting down",
        "INFO tests.repeats: an info line is never held back",
        "ERROR tests.repeats: another failure: 1",
        "WARNING tests.repeats: database unavailable: %s … repeated 5434 times in the last 10 s",
        "INFO tests.repeats: the next record, of any kind, writes the summary first",
        "WARNING tests.repeats: database unavailable: the connection to the database failed",
        "WARNING tests.repeats: another failure: %s … repeated 1 times in the last 10 s",
        "WARNING tests.repeats: database unavailable: %s … repeated 2 times in the last 10 s",
        "ERROR tests.repeats: another failure: 3",
    ]


# --- /metrics ------------------------------------------------------------------------------------


def samples(exposition: str, name: str) -> dict[str, float]:
    found = {}
    for line in exposition.splitlines():
        if line.startswith(name):
            series, value = line.rsplit(" ", 1)
            found[series] = float(value)
    return found


async def test_metrics_count_requests_by_template_with_bounded_labels(
    client: httpx.AsyncClient, auth: Auth, settings: Settings
) -> None:
    created = await client.post("/api/alice/tasks", json={"title": "x"}, headers=auth("alice"))
    await client.get(f"/api/alice/tasks/{created.json()['id']}", headers=auth("alice"))
    await client.get(f"/api/bob/tasks/{created.json()['id']}", headers=auth("bob"))
    await client.get("/unknown/0")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    counts = samples(response.text, "http_requests_total")
    route = '"/api/{user_id}/tasks/{task_id}"'
    assert counts[f'http_requests_total{{method="GET",route={route},status="200"}}'] == 1
    assert counts[f'http_requests_total{{method="GET",route={route},status="404"}}'] == 1
    assert counts['http_requests_total{method="POST",route="/api/{user_id}/tasks",status="201"}']
    assert counts['http_requests_total{method="GET",route="<unmatched>",status="404"}'] == 1
    assert not any("alice" in series or "bob" in series for series in counts)
    latency = samples(response.text, "http_request_duration_seconds_count")
    assert (
        latency[f'http_request_duration_seconds_count{{method="GET",route={route},status="200"}}']
        == 1
    )
    before = set(samples(response.text, "http_request"))
    for n in range(100):
        await client.request("GET" if n % 2 else "BREW", f"/unknown/{n}/path-{n}")
    after = (await client.get("/metrics")).text
    new = set(samples(after, "http_request")) - before
    # Only the BREW method's one series (methods are bounded too: OTHER) and /metrics' own.
    assert all('route="/metrics"' in s or 'method="OTHER"' in s for s in new), new
    assert (
        samples(after, "http_requests_total")[
            'http_requests_total{method="GET",route="<unmatched>",status="404"}'
        ]
        == 51
    )
    assert (
        samples(after, "http_requests_total")[
            'http_requests_total{method="OTHER",route="<unmatched>",status="404"}'
        ]
        == 50
    )
    pool = samples(after, "db_pool_")
    assert pool["db_pool_size"] == db.pool_size(settings)
    assert pool["db_pool_connections_in_use"] == 0
    assert "db_pool_overflow" in pool


async def test_metrics_see_the_connections_in_use(client: httpx.AsyncClient) -> None:
    app_db: db.Database = app_state(client._transport.app).db  # type: ignore[attr-defined]
    async with app_db.connect():
        pool = samples((await client.get("/metrics")).text, "db_pool_")
    assert pool["db_pool_connections_in_use"] == 1


# --- ENV=production ------------------------------------------------------------------------------


def production(**values: Any) -> Settings:
    return Settings(_env_file=None, env="production", **values)


def test_production_refuses_what_is_only_safe_locally() -> None:
    with pytest.raises(ValidationError, match="the development secret is for local use only"):
        production()
    with pytest.raises(ValidationError, match="refuses CORS_ORIGINS=\\*"):
        production(better_auth_secret=SECRET, cors_origins="*")
    with pytest.raises(ValidationError, match="refuses an http:// BETTER_AUTH_URL"):
        production(better_auth_url="http://auth.example.com")
    # What it accepts:
    assert production(better_auth_secret=SECRET, cors_origins="https://app.example").env == (
        "production"
    )
    assert production(better_auth_url="https://auth.example.com").jwks_url
    assert production(better_auth_url="http://localhost:3000").jwks_url
    assert production(jwt_jwks_url="http://auth.internal:3000/api/auth/jwks").jwks_url
    # Development accepts all of it, as before.
    assert Settings(_env_file=None, cors_origins="*").cors_origins == ["*"]


def taskapi_without_secret(
    command: str, tmp_path: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """`taskapi COMMAND` on a SQLite file in `tmp_path`, with no way to verify tokens set
    unless `env` sets one."""
    unset = ("BETTER_AUTH_SECRET", "BETTER_AUTH_URL", "JWT_JWKS_URL", "CORS_ORIGINS", "ENV")
    # `python -m backend.cli` from this checkout: the venv's `taskapi` script may import
    # another checkout's package (an editable install is shared between worktrees).
    return subprocess.run(
        [sys.executable, "-m", "backend.cli", command],
        env={
            **{k: v for k, v in os.environ.items() if k not in unset},
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": f"sqlite:///{tmp_path / 't.db'}",
            "DATA_DIR": str(tmp_path),
            **env,
        },
        cwd=tmp_path,  # no .env here
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.live
@pytest.mark.parametrize("command", ["serve", "migrate"])
@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {},
            "ENV=production needs BETTER_AUTH_SECRET or BETTER_AUTH_URL (or JWT_JWKS_URL): the "
            "development secret is for local use only",
        ),
        (
            {"BETTER_AUTH_SECRET": SECRET, "CORS_ORIGINS": "*"},
            "ENV=production refuses CORS_ORIGINS=*: credentials are allowed, so list the "
            "frontend origins (e.g. https://app.example.com)",
        ),
        (
            {"BETTER_AUTH_URL": "http://auth.example.com"},
            "ENV=production refuses an http:// BETTER_AUTH_URL: sign-in and the keys that "
            "verify tokens would cross the network unencrypted; use https://",
        ),
    ],
)
def test_the_cli_refuses_an_unsafe_production_start(
    command: str, env: dict[str, str], message: str, tmp_path: Path
) -> None:
    result = taskapi_without_secret(command, tmp_path, {"ENV": "production", **env})
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"taskapi: invalid configuration: {message}"]
    assert not (tmp_path / "t.db").exists()  # refused before anything was touched
    assert not (tmp_path / "dev-secret").exists()


@pytest.mark.live
def test_the_cli_migrates_a_safe_production_configuration(tmp_path: Path) -> None:
    env = {"ENV": "production", "BETTER_AUTH_SECRET": SECRET, "CORS_ORIGINS": ORIGIN}
    result = taskapi_without_secret("migrate", tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "t.db").exists()


async def test_while_serving_start_up_objects_are_out_of_the_collectors_sight(
    tmp_path: Path,
) -> None:
    app = create_app(make_settings(f"sqlite:///{tmp_path / 'tasks.db'}"))
    threshold = gc.get_threshold()
    frozen = gc.get_freeze_count()
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > frozen  # the app and everything built so far
        assert gc.get_threshold()[0] > threshold[0]  # young objects collected less often
    assert gc.get_threshold() == threshold
    assert gc.get_freeze_count() == 0  # all collectable again once it stopped
