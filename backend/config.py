"""Settings, read once from the environment (and `.env`) and passed in, never imported as a global.

With nothing configured the service runs for development: a SQLite file and a random HS256
secret, both kept in `DATA_DIR`, and a warning in the log that the secret is not for production.
Making that secret is a step of starting the service (`with_development_secret`, called by
`create_app` and the CLI's `token`), not a side effect of reading settings: validating settings
writes no file and logs nothing.
Tokens are verified by HS256 when BETTER_AUTH_SECRET is set, by the JWKS when BETTER_AUTH_URL
(or JWT_JWKS_URL) is set, or both.
"""

import logging
import os
import re
import resource
import secrets
import sys
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

logger = logging.getLogger("backend.config")

MIN_SECRET_BYTES = 32
DEV_SECRET_FILE = "dev-secret"  # noqa: S105 - a file name, not a secret
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
DEFAULT_MAX_STREAMS = 4096  # SSE_MAX_STREAMS where the open-files limit is unknown or unlimited
RATE_LIMIT_SCHEMES = ("memory", "redis", "rediss")  # RATE_LIMIT_STORAGE's: in memory, or Redis


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,  # a refused secret must not be printed in the error
    )

    database_url: str | None = Field(
        default=None, description="sqlite:///path or postgresql://… (Neon's form is accepted)"
    )
    better_auth_secret: SecretStr | None = Field(
        default=None, description="HS256 shared secret, at least 32 bytes"
    )
    better_auth_url: str | None = Field(
        default=None,
        description="Better Auth's base URL: enables the JWKS at {origin}/api/auth/jwks and "
        "makes the origin the expected iss and aud of asymmetric tokens",
    )
    jwt_jwks_url: str | None = Field(default=None, description="JWKS URL override")
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=60)
    jwks_cache_seconds: float = Field(default=300.0, ge=0, le=86_400)
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated origins of the frontends that may call this API from a "
        "browser (scheme://host[:port], e.g. http://localhost:3000)",
    )
    cors_origin_regex: str | None = Field(
        default=None,
        description="a regular expression further allowed origins must match in full, for "
        r"preview deployments: https://my-app-[a-z0-9-]+\.vercel\.app",
    )
    data_dir: Path = Path("data")
    migrate_on_start: bool = True
    db_pool_size: int | None = Field(
        default=None, ge=1, le=100, description="default: 10 on PostgreSQL, 1 on SQLite"
    )
    db_max_overflow: int = Field(default=0, ge=0, le=100)
    db_pool_timeout: float = Field(default=5.0, gt=0, le=60)
    db_connect_timeout: float = Field(default=5.0, gt=0, le=60)
    db_statement_timeout: float = Field(
        default=5.0, gt=0, le=600, description="seconds a statement (or lock wait) may take"
    )
    sse_heartbeat_seconds: float = Field(
        default=15.0,
        gt=0,
        le=300,
        description="seconds of silence after which an event stream sends a heartbeat",
    )
    sse_max_streams_per_user: int = Field(
        default=10,
        ge=1,
        le=10_000,
        description="event streams one user may have open in one process (429 beyond)",
    )
    sse_max_streams: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="event streams one process may have open (429 beyond); default: half its "
        "open-files limit (see default_max_streams)",
    )
    db_pooler: Literal["none", "transaction"] | None = Field(
        default=None,
        description="transaction: DATABASE_URL is a transaction-mode pooler (PgBouncer); "
        "unset: transaction for a Neon -pooler host, else none",
    )
    database_direct_url: str | None = Field(
        default=None, description="a session (non-pooled) URL for migrations; default DATABASE_URL"
    )
    http_header_timeout: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="seconds a request's line and headers may take to arrive, from their first "
        "byte (or from the connection being opened), before 408 and the connection is closed",
    )
    worker_healthcheck_timeout: int = Field(
        default=60,
        ge=1,
        le=3600,
        description="with --workers N: seconds a worker may take to answer the supervisor's "
        "health check (starting up included) before it is killed and replaced",
    )
    mcp_audience: str | None = Field(
        default=None,
        description="the public URL of /mcp (https://api.example.com/mcp): the MCP server for AI "
        "agents is served when it is set, takes tokens whose aud includes it, and allows its host",
    )
    mcp_accept_app_tokens: bool = Field(
        default=False,
        description="true: the MCP server also takes the web app's ordinary tokens (whose aud is "
        "not MCP_AUDIENCE)",
    )
    mcp_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="further Host headers the MCP server answers (host or host:port, "
        "comma-separated), besides MCP_AUDIENCE's host and localhost",
    )
    log_level: str = "INFO"
    rate_limit: int = Field(
        default=600, ge=0, description="requests a minute per user (429 beyond); 0: no limit"
    )
    rate_limit_anonymous: int = Field(
        default=600,
        ge=0,
        description="requests a minute per client address (an IPv6 address by its /64) that "
        "are refused as unauthenticated or forbidden or that no route takes (429 beyond); "
        "0: no limit",
    )
    rate_limit_storage: str = Field(
        default="memory://",
        description="memory:// (each process counts) or redis://host:port/db (rediss:// for "
        "TLS): one budget shared by every worker and machine",
    )
    max_tasks_per_user: int = Field(
        default=10_000, ge=1, le=2**31 - 1, description="tasks a user may have (409 beyond)"
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="text lines, or one JSON object a line"
    )
    env: Literal["development", "production"] = Field(
        default="development",
        description="production: refuse to start with settings that are only safe locally",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        # A browser sends `Origin: http://localhost:3000`; "localhost:3000" or a URL with a path
        # would be accepted here and then match nothing, which shows only as CORS failures.
        for origin in value:
            if origin != "*" and not _is_origin(origin):
                raise ValueError(
                    f"{origin[:100]!r} is not an origin: write scheme://host[:port], "
                    "e.g. http://localhost:3000, with no path"
                )
        return value

    @field_validator("cors_origin_regex")
    @classmethod
    def _origin_pattern(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"is not a regular expression: {exc}") from None
        return value

    @field_validator("mcp_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [host.strip() for host in value.split(",") if host.strip()]
        return value

    @field_validator("better_auth_url", "jwt_jwks_url", "mcp_audience")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL")
        return value.strip()

    @field_validator("rate_limit_storage")
    @classmethod
    def _rate_limit_storage(cls, value: str) -> str:
        scheme = value.strip().partition("://")[0].lower()
        if "://" not in value or scheme not in RATE_LIMIT_SCHEMES:
            raise ValueError("must be memory://, redis://host:port/db or rediss://host:port/db")
        return value.strip()

    @field_validator("better_auth_secret")
    @classmethod
    def _strong_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        secret = value.get_secret_value()
        if len(secret.encode()) < MIN_SECRET_BYTES or not secret.strip():
            raise ValueError(
                f"BETTER_AUTH_SECRET must be at least {MIN_SECRET_BYTES} bytes and not blank "
                "(generate one with: openssl rand -base64 32)"
            )
        return value

    @model_validator(mode="after")
    def _default_database(self) -> "Settings":
        # Zero-config local run: a SQLite file in the data folder. `frozen` models can still be
        # completed here through object.__setattr__, before anyone else sees the instance.
        if self.database_url is None:
            object.__setattr__(self, "database_url", f"sqlite:///{self.data_dir / 'tasks.db'}")
        return self

    @model_validator(mode="after")
    def _safe_for_production(self) -> "Settings":
        if self.env != "production":
            return self
        if self.better_auth_secret is None and self.jwks_url is None:
            raise ValueError(
                "ENV=production needs BETTER_AUTH_SECRET or BETTER_AUTH_URL (or JWT_JWKS_URL): "
                "the development secret is for local use only"
            )
        if "*" in self.cors_origins:
            raise ValueError(
                "ENV=production refuses CORS_ORIGINS=*: credentials are allowed, so list the "
                "frontend origins (e.g. https://app.example.com)"
            )
        if self.better_auth_url is not None:
            parts = urlsplit(self.better_auth_url)
            if parts.scheme != "https" and parts.hostname not in _LOOPBACK_HOSTS:
                raise ValueError(
                    "ENV=production refuses an http:// BETTER_AUTH_URL: sign-in and the keys "
                    "that verify tokens would cross the network unencrypted; use https://"
                )
        return self

    @property
    def better_auth_origin(self) -> str | None:
        """`https://auth.example.com` of BETTER_AUTH_URL: the `iss` and `aud` Better Auth's jwt
        plugin puts in its tokens (the origin only: no path, no trailing slash)."""
        if self.better_auth_url is None:
            return None
        parts = urlsplit(self.better_auth_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def jwks_url(self) -> str | None:
        if self.jwt_jwks_url is not None:
            return self.jwt_jwks_url
        origin = self.better_auth_origin
        return None if origin is None else f"{origin}/api/auth/jwks"

    @property
    def db_url(self) -> str:
        assert self.database_url is not None  # filled in by _development_defaults
        return self.database_url

    @property
    def max_streams(self) -> int:
        """SSE_MAX_STREAMS, or its default for this process."""
        return self.sse_max_streams or default_max_streams()

    @property
    def hs256_secret(self) -> bytes | None:
        """The HMAC key: the UTF-8 bytes of the secret string, as Better Auth and jose use it
        (never base64-decoded). None when only JWKS tokens are accepted."""
        if self.better_auth_secret is None:
            return None
        return self.better_auth_secret.get_secret_value().encode()


def from_environment() -> Settings:
    """The settings of the environment (and `.env`), or the end of the process with one line on
    stderr naming each setting that is wrong, and no traceback: under `taskapi` as under any
    ASGI server that imports `backend.main:app`."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(_problem(e["loc"], e["msg"]) for e in exc.errors())
        sys.exit(f"taskapi: invalid configuration: {problems}")


def _problem(loc: tuple[int | str, ...], message: str) -> str:
    message = message.removeprefix("Value error, ")
    if not loc:  # a rule about several settings (ENV=production) names them itself
        return message
    return f"{'.'.join(map(str, loc)).upper()}: {message}"


def default_max_streams() -> int:
    """Half the process's soft limit on open files (512 with the usual 1024): each event stream
    holds a socket, and the other half is left to everything else (requests, the database, logs),
    so streams can never take every descriptor. Without a limit, DEFAULT_MAX_STREAMS."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return DEFAULT_MAX_STREAMS
    return max(1, soft // 2)


def _is_origin(value: str) -> bool:
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and not parts.path
        and not parts.query
        and not parts.fragment
        and parts.username is None
    )


def development_secret_file(settings: Settings) -> Path | None:
    """Where the development secret is kept (an absolute path), when these settings leave it to
    be used: no BETTER_AUTH_SECRET and no JWKS. None otherwise."""
    if settings.better_auth_secret is not None or settings.jwks_url is not None:
        return None
    return (settings.data_dir / DEV_SECRET_FILE).resolve()


def with_development_secret(settings: Settings) -> Settings:
    """The settings a zero-config run starts with: when no way to verify tokens is configured,
    the development secret from the data folder (made on first use), with one warning."""
    if settings.better_auth_secret is not None or settings.jwks_url is not None:
        return settings
    secret = SecretStr(_dev_secret(settings.data_dir))
    return settings.model_copy(update={"better_auth_secret": secret})


def _dev_secret(data_dir: Path) -> str:
    path = data_dir / DEV_SECRET_FILE
    secret = path.read_text().strip() if path.exists() else ""
    if len(secret.encode()) < MIN_SECRET_BYTES:
        # Missing, or left empty or truncated by an interrupted write: make a new one, written
        # atomically so that a crash can never leave a weak secret behind.
        data_dir.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(48)
        partial = path.with_suffix(".tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secret)
        os.replace(partial, path)
    logger.warning(
        "BETTER_AUTH_SECRET is not set: using the development secret in %s. "
        "This is for local development only; set BETTER_AUTH_SECRET in production.",
        path,
    )
    return secret
