"""Configuration: secrets too weak to use are refused, a zero-config run works, CORS and database
URLs are read as people write them, and the CLI mints tokens the service accepts."""

import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
from pydantic import SecretStr, ValidationError
from sqlalchemy.engine import URL

from backend import db
from backend.cli import main as cli
from backend.config import Settings, with_development_secret
from backend.db.urls import pg_connect_args
from backend.middleware.jwt_auth import TokenVerifier
from tests.fixtures.app import app_client
from tests.fixtures.databases import make_settings
from tests.fixtures.processes import free_port
from tests.helpers import SECRET

NEON = (
    "postgresql://u:p@ep-x-pooler.us-east-2.aws.neon.tech/neondb"
    "?sslmode=require&channel_binding=require"
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting comes from the environment of whoever runs the tests."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name, raising=False)


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, database_url="sqlite:///unused.db", **values)  # type: ignore[arg-type]


def _rendered(url: URL) -> str:
    return url.render_as_string(hide_password=False)


# --- the secret ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param("", id="empty"),
        pytest.param("x" * 31, id="31-bytes"),
        pytest.param("é" * 15 + "x", id="16-chars-31-bytes"),
        pytest.param(" " * 40, id="40-spaces"),
        pytest.param("\t\n " * 20, id="white-space-only"),
        pytest.param("\u3000" * 20, id="ideographic-spaces"),
    ],
)
def test_short_or_blank_secret_is_refused(clean_env: None, secret: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _settings(better_auth_secret=secret)
    assert [e["loc"] for e in caught.value.errors()] == [("better_auth_secret",)]
    assert "BETTER_AUTH_SECRET" in caught.value.errors()[0]["msg"]


def test_short_secret_from_the_environment_is_refused(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BETTER_AUTH_SECRET", "x" * 31)
    with pytest.raises(ValidationError) as caught:
        _settings()
    assert [e["loc"] for e in caught.value.errors()] == [("better_auth_secret",)]


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param("x" * 32, id="32-ascii"),
        pytest.param("é" * 16, id="16-chars-32-bytes"),
        pytest.param("🔑" * 8, id="8-chars-32-bytes"),
        pytest.param(SECRET, id="long"),
    ],
)
def test_secret_of_32_bytes_or_more_is_accepted(clean_env: None, secret: str) -> None:
    settings = _settings(better_auth_secret=secret)
    assert len(secret.encode()) >= 32
    assert settings.hs256_secret == secret.encode()  # the key is the secret's UTF-8 bytes


def test_secret_from_the_environment(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BETTER_AUTH_SECRET", SECRET)
    settings = _settings()
    assert settings.hs256_secret == SECRET.encode()
    assert SECRET not in repr(settings)


@pytest.mark.parametrize("leeway", [-1, 61, 3600])
def test_leeway_is_bounded(clean_env: None, leeway: int) -> None:
    with pytest.raises(ValidationError) as caught:
        _settings(better_auth_secret=SECRET, jwt_leeway_seconds=leeway)
    assert [e["loc"] for e in caught.value.errors()] == [("jwt_leeway_seconds",)]


# --- zero configuration --------------------------------------------------------------------------


@pytest.mark.parametrize("sub_dir", ["", "nested/data"])
def test_zero_config_uses_the_data_folder(
    clean_env: None, tmp_path: Path, caplog: pytest.LogCaptureFixture, sub_dir: str
) -> None:
    data_dir = tmp_path / sub_dir
    caplog.set_level(logging.WARNING, logger="backend.config")
    settings = with_development_secret(Settings(_env_file=None, data_dir=data_dir))

    assert settings.db_url == f"sqlite:///{data_dir / 'tasks.db'}"
    secret_file = data_dir / "dev-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert settings.better_auth_secret is not None
    secret = settings.better_auth_secret.get_secret_value()
    assert secret == secret_file.read_text().strip()
    assert len(secret.encode()) >= 32
    warnings = [r for r in caplog.records if r.name == "backend.config"]
    assert [r.levelno for r in warnings] == [logging.WARNING]
    assert "development" in warnings[0].getMessage()
    assert secret not in caplog.text

    again = with_development_secret(Settings(_env_file=None, data_dir=data_dir))
    assert again.better_auth_secret is not None
    assert again.better_auth_secret.get_secret_value() == secret
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600


def test_zero_config_secrets_differ_between_data_folders(clean_env: None, tmp_path: Path) -> None:
    first = with_development_secret(Settings(_env_file=None, data_dir=tmp_path / "one"))
    second = with_development_secret(Settings(_env_file=None, data_dir=tmp_path / "two"))
    assert first.hs256_secret != second.hs256_secret


@pytest.mark.parametrize("content", ["", "\n", "short"], ids=["empty", "newline", "short"])
def test_a_weak_dev_secret_file_is_never_used(
    clean_env: None, tmp_path: Path, content: str
) -> None:
    # E.g. a crash between creating the file and writing it leaves it empty; an empty HMAC key
    # would let anyone sign tokens.
    (tmp_path / "dev-secret").write_text(content)
    settings = with_development_secret(Settings(_env_file=None, data_dir=tmp_path))
    assert settings.hs256_secret is not None
    assert len(settings.hs256_secret) >= 32


def test_explicit_settings_create_no_dev_secret(clean_env: None, tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, better_auth_secret=SecretStr(SECRET))
    assert with_development_secret(settings) is settings
    assert not (tmp_path / "dev-secret").exists()


def test_reading_settings_writes_nothing_and_logs_nothing(
    clean_env: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="backend")
    settings = Settings(_env_file=None, data_dir=tmp_path)
    assert settings.better_auth_secret is None
    assert list(tmp_path.iterdir()) == []
    assert caplog.records == []


async def test_a_start_warns_once_about_the_development_secret(
    clean_env: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="backend")
    async with app_client(Settings(_env_file=None, data_dir=tmp_path, migrate_on_start=False)):
        pass
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "development" in warnings[0]


async def test_zero_config_service_answers(clean_env: None, tmp_path: Path) -> None:
    settings = with_development_secret(Settings(_env_file=None, data_dir=tmp_path))
    await db.migrate(settings)
    assert settings.hs256_secret is not None
    token = jwt.encode(
        {"sub": "dev", "exp": int(time.time()) + 60}, settings.hs256_secret, algorithm="HS256"
    )
    async with app_client(settings) as http:
        headers = {"Authorization": f"Bearer {token}"}
        created = await http.post("/api/dev/tasks", json={"title": "t"}, headers=headers)
        assert created.status_code == 201, created.text
        listed = await http.get("/api/dev/tasks", headers=headers)
        assert [t["title"] for t in listed.json()] == ["t"]
    assert (tmp_path / "tasks.db").is_file()


# --- CORS ----------------------------------------------------------------------------------------

ALLOWED = "https://a.example"


def test_cors_origins_from_the_environment(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, https://b.example/")
    assert _settings(better_auth_secret=SECRET).cors_origins == [
        "https://a.example",
        "https://b.example",
    ]
    monkeypatch.setenv("CORS_ORIGINS", "")
    assert _settings(better_auth_secret=SECRET).cors_origins == []


def test_cors_origins_default_to_none(clean_env: None) -> None:
    assert _settings(better_auth_secret=SECRET).cors_origins == []


@pytest.mark.parametrize(
    "origin",
    [
        "localhost:3000",
        "app.example.com",
        "http://localhost:3000/app",
        "https://a.example/?x=1",
        "ftp://files.example",
        "http://user@a.example",
        "http://a.example:99999",
        "//a.example",
    ],
)
def test_cors_origin_that_is_not_an_origin_is_refused(clean_env: None, origin: str) -> None:
    # Accepted, it would match no browser's Origin header: the frontend sees only CORS failures.
    with pytest.raises(ValidationError) as caught:
        _settings(better_auth_secret=SECRET, cors_origins=f"https://ok.example,{origin}")
    assert [e["loc"] for e in caught.value.errors()] == [("cors_origins",)]
    assert "scheme://host[:port]" in caught.value.errors()[0]["msg"]


@pytest.mark.parametrize(
    "origin", ["http://localhost:3000", "https://app.example.com", "http://127.0.0.1:5173", "*"]
)
def test_cors_origins_that_are_origins_are_accepted(clean_env: None, origin: str) -> None:
    assert _settings(better_auth_secret=SECRET, cors_origins=origin).cors_origins == [origin]


def _preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "PATCH",
        "Access-Control-Request-Headers": "authorization, content-type",
    }


def _tokens(value: str) -> set[str]:
    return {part.strip().lower() for part in value.split(",")}


async def test_cors_preflight(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, https://b.example/")
    async with app_client(make_settings(f"sqlite:///{tmp_path / 'cors.db'}")) as http:
        for origin in ("https://a.example", "https://b.example"):
            response = await http.options("/api/alice/tasks/1", headers=_preflight(origin))
            assert response.status_code == 200, response.text
            assert response.headers["access-control-allow-origin"] == origin
            assert response.headers["access-control-allow-credentials"] == "true"
            allowed_headers = _tokens(response.headers["access-control-allow-headers"])
            assert {"authorization", "content-type"} <= allowed_headers
            methods = _tokens(response.headers["access-control-allow-methods"])
            assert {"get", "post", "put", "patch", "delete"} <= methods
            assert "origin" in _tokens(response.headers["vary"])

        for origin in ("https://evil.example", "https://a.example.evil.example", "null"):
            response = await http.options("/api/alice/tasks/1", headers=_preflight(origin))
            assert "access-control-allow-origin" not in response.headers

        # A real request: even a 401 carries the CORS headers, so the browser can read it.
        response = await http.get("/api/alice/tasks", headers={"Origin": ALLOWED})
        assert response.status_code == 401, response.text
        assert response.headers["access-control-allow-origin"] == ALLOWED
        assert response.headers["access-control-allow-credentials"] == "true"
        response = await http.get("/api/alice/tasks", headers={"Origin": "https://x.example"})
        assert response.status_code == 401, response.text
        assert "access-control-allow-origin" not in response.headers


async def test_cors_exposes_the_headers_a_frontend_reads(
    clean_env: None, tmp_path: Path, auth: Callable[..., dict[str, str]]
) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'cors.db'}", cors_origins=ALLOWED)
    await db.migrate(settings)
    async with app_client(settings) as http:
        headers = {"Origin": ALLOWED, **auth("alice")}
        created = await http.post("/api/alice/tasks", json={"title": "t"}, headers=headers)
        assert created.status_code == 201, created.text
        listed = await http.get("/api/alice/tasks", headers=headers)
        for response in (created, listed):
            exposed = _tokens(response.headers["access-control-expose-headers"])
            assert {"location", "link", "x-total-count"} <= exposed


async def test_no_cors_without_origins(clean_env: None, tmp_path: Path) -> None:
    async with app_client(make_settings(f"sqlite:///{tmp_path / 'cors.db'}")) as http:
        response = await http.options("/api/alice/tasks", headers=_preflight(ALLOWED))
        assert "access-control-allow-origin" not in response.headers


# --- database URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite:////abs/path/x.db", "sqlite+aiosqlite:////abs/path/x.db"),
        ("postgres://u:p@h/d", "postgresql+asyncpg://u:p@h/d"),
        ("postgresql://u:p@h/d", "postgresql+asyncpg://u:p@h/d"),
        ("postgresql+asyncpg://u:p@h:5433/d", "postgresql+asyncpg://u:p@h:5433/d"),
        ("postgresql+psycopg2://u:p@h/d", "postgresql+asyncpg://u:p@h/d"),
        ("  postgresql://u:p@h/d\n", "postgresql+asyncpg://u:p@h/d"),
    ],
)
def test_normalize_url(raw: str, normalized: str) -> None:
    assert _rendered(db.normalize_url(raw)) == normalized


@pytest.mark.parametrize(
    "raw",
    ["mysql://u:p@h/d", "mssql+pyodbc://u:p@h/d", "oracle://u:p@h/d", "http://h/d", "", "tasks"],
)
def test_normalize_url_refuses_other_databases(raw: str) -> None:
    with pytest.raises(db.DatabaseURLError):
        db.normalize_url(raw)


async def test_neon_url_builds_an_engine(clean_env: None) -> None:
    engine = db.make_engine(make_settings(NEON))
    try:
        assert engine.dialect.name == "postgresql"
        assert engine.dialect.driver == "asyncpg"
        assert _rendered(engine.url) == (
            "postgresql+asyncpg://u:p@ep-x-pooler.us-east-2.aws.neon.tech/neondb"
        )
    finally:
        await engine.dispose()


def test_neon_query_becomes_asyncpg_arguments(clean_env: None) -> None:
    url, args = pg_connect_args(db.normalize_url(NEON), make_settings(NEON))
    assert dict(url.query) == {}
    assert args == {"timeout": 5.0, "ssl": "require"}
    assert "channel_binding" not in _rendered(url)
    assert "sslmode" not in _rendered(url)


def test_more_libpq_parameters(clean_env: None) -> None:
    raw = "postgresql://u:p@h/d?sslmode=disable&connect_timeout=3&application_name=tasks"
    url, args = pg_connect_args(db.normalize_url(raw), make_settings(raw))
    assert dict(url.query) == {}
    assert args == {
        "timeout": 3.0,
        "ssl": "disable",
        "server_settings": {"application_name": "tasks"},
    }


@pytest.mark.parametrize(
    "query", ["foo=bar", "sslmode=require&foo=bar", "sslmode=bogus", "target_session_attrs=any"]
)
async def test_unknown_or_bad_query_parameter_is_refused(clean_env: None, query: str) -> None:
    url = f"postgresql://u:p@h/d?{query}"
    with pytest.raises(db.DatabaseURLError):
        db.make_engine(make_settings(url))


# --- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("BETTER_AUTH_SECRET", SECRET)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # no .env here
    return tmp_path


@pytest.mark.parametrize(
    ("ttl", "seconds"),
    [("15m", 900), ("3600", 3600), ("90s", 90), ("1h", 3600), ("7d", 604_800), ("2H", 7200)],
)
async def test_cli_token(
    cli_env: Path, capsys: pytest.CaptureFixture[str], ttl: str, seconds: int
) -> None:
    before = int(time.time())
    cli(["token", "--sub", "alice", "--ttl", ttl])
    after = int(time.time())
    out, err = capsys.readouterr()
    token = out.strip()
    assert out == token + "\n"
    assert SECRET not in out + err
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == seconds
    assert before <= claims["iat"] <= after
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    verifier = TokenVerifier(make_settings("sqlite:///unused.db"))
    assert await verifier.verify(token) == "alice"
    assert not (cli_env / "dev-secret").exists()


async def test_cli_token_carries_the_configured_issuer_and_audience(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JWT_ISSUER", "https://auth.example.com")
    monkeypatch.setenv("JWT_AUDIENCE", "https://api.example.com")
    cli(["token", "--sub", "bob", "--ttl", "15m"])
    token = capsys.readouterr().out.strip()
    settings = make_settings(
        "sqlite:///unused.db",
        jwt_issuer="https://auth.example.com",
        jwt_audience="https://api.example.com",
    )
    assert await TokenVerifier(settings).verify(token) == "bob"


@pytest.mark.parametrize("ttl", ["0", "15x", "-5", "", "1.5h", "m", "15 m"])
def test_cli_bad_ttl(cli_env: Path, capsys: pytest.CaptureFixture[str], ttl: str) -> None:
    with pytest.raises(SystemExit) as exited:
        cli(["token", "--sub", "alice", "--ttl", ttl])
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "argument --ttl" in err


def test_cli_token_needs_sub(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli(["token"])
    assert exited.value.code == 2
    assert "--sub" in capsys.readouterr().err


def test_cli_refuses_an_invalid_configuration(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    weak = "weak-secret-only-29-bytes-xyz"
    monkeypatch.setenv("BETTER_AUTH_SECRET", weak)
    with pytest.raises(SystemExit) as exited:
        cli(["token", "--sub", "alice", "--ttl", "15m"])
    message = exited.value.code
    assert isinstance(message, str)
    assert "BETTER_AUTH_SECRET" in message
    assert weak not in message
    out, err = capsys.readouterr()
    assert out == ""
    assert weak not in err


def test_cli_refuses_a_cors_origin_without_scheme(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "localhost:3000")
    with pytest.raises(SystemExit) as exited:
        cli(["token", "--sub", "alice"])
    message = exited.value.code
    assert isinstance(message, str)
    assert message.startswith("taskapi: invalid configuration: CORS_ORIGINS: ")
    assert "'localhost:3000' is not an origin" in message


@pytest.mark.live
def test_serve_warns_once_about_the_development_secret(clean_env: None, tmp_path: Path) -> None:
    # `taskapi serve` reads settings, migrates, then uvicorn builds the app: one start, one
    # warning (it used to be printed by each of the two).
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(tmp_path), "LOG_LEVEL": "INFO"}
    env.pop("BETTER_AUTH_SECRET", None)
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "taskapi"), "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 60
        for line in process.stderr:
            lines.append(line)
            if "Application startup complete" in line or time.monotonic() > deadline:
                break
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stderr is not None:
            process.stderr.close()
    assert any("Application startup complete" in line for line in lines), lines
    assert sum("development secret" in line for line in lines) == 1, lines


def test_cli_token_never_makes_a_development_secret_of_its_own(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Run from another folder, it made a new secret there, and the service (whose secret is in
    # its own folder) answered "signature does not verify" with nothing to say which it expected.
    monkeypatch.delenv("BETTER_AUTH_SECRET")
    with pytest.raises(SystemExit) as exited:
        cli(["token", "--sub", "alice"])
    secret_file = (cli_env / "dev-secret").resolve()
    assert exited.value.code == (
        f"taskapi: no development secret in {secret_file}: the service makes it when it first "
        "starts; run `taskapi token` in the folder the service runs in (or with DATA_DIR set to "
        "its data folder), or set BETTER_AUTH_SECRET to the service's"
    )
    assert not secret_file.exists()
    assert capsys.readouterr().out == ""


async def test_cli_token_signs_with_the_service_s_development_secret_and_says_which(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BETTER_AUTH_SECRET")
    service = with_development_secret(Settings(_env_file=None))  # the service made it here
    cli(["token", "--sub", "alice"])
    out, err = capsys.readouterr()
    assert err.splitlines()[-1] == (
        f"taskapi: signed with the development secret in {(cli_env / 'dev-secret').resolve()}"
    )
    assert await TokenVerifier(service).verify(out.strip()) == "alice"


async def test_cli_token_for_the_mcp_server(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli(["token", "--sub", "alice", "--mcp"])
    assert exited.value.code == (
        "taskapi: --mcp needs MCP_AUDIENCE, the public URL of the MCP server (/mcp)"
    )
    monkeypatch.setenv("MCP_AUDIENCE", "https://api.example.com/mcp")
    cli(["token", "--sub", "alice", "--mcp"])
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="https://api.example.com/mcp")
    assert claims["sub"] == "alice"
