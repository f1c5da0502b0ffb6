"""Database URLs as people write them, and what they say: which database, which driver, whether
a transaction-mode pooler stands in front of it.

Accepted: `sqlite:///tasks.db`, `postgres://…`, `postgresql://…?sslmode=require&
channel_binding=require` exactly as Neon shows it, and the SQLAlchemy driver forms. They are
normalised to the async drivers (aiosqlite, asyncpg); libpq-style query parameters become
asyncpg's connect arguments. A URL that cannot be used is one line naming the problem and the
accepted forms, never the URL itself (it may hold a password).
"""

import ssl as ssl_module
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.config import Settings

_SSLMODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}

ACCEPTED_URLS = (
    "sqlite:///relative/path/tasks.db, sqlite:////absolute/path/tasks.db, or "
    "postgresql://user:password@host[:port]/database[?sslmode=require] (postgres:// too)"
)


class DatabaseURLError(ValueError):
    pass


def normalize_url(raw: str, *, name: str = "DATABASE_URL") -> URL:
    """The URL for the async driver, or DatabaseURLError: one line that says what is wrong and
    the forms that are accepted, never the URL itself (it may hold a password)."""

    def refused(problem: str) -> DatabaseURLError:
        return DatabaseURLError(
            f"{name} is not a database URL this service takes ({problem}); write {ACCEPTED_URLS}"
        )

    try:
        url = make_url(raw.strip())
    except Exception:
        raise refused("it cannot be parsed: scheme://… with a numeric port, if any") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        # sqlite://x would name a host, and sqlite:/// no file (a database in memory, lost at
        # the end of each connection).
        if url.host or url.port or url.username:
            raise refused("a SQLite URL has three slashes and a file path, no host")
        if not url.database or url.database == ":memory:":
            raise refused("a SQLite URL needs a file path")
        return url.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        if not url.host:
            raise refused("a PostgreSQL URL needs a host")
        if not url.database:
            raise refused("a PostgreSQL URL needs a database name after the host")
        return url.set(drivername="postgresql+asyncpg")
    raise refused(f"the scheme is {url.drivername}://, not postgresql:// or sqlite://")


def is_sqlite(where: URL | AsyncConnection) -> bool:
    """Whether a URL, or an open connection, is SQLite's: the one test of which database it is."""
    name = where.get_backend_name() if isinstance(where, URL) else where.dialect.name
    return name == "sqlite"


def pg_connect_args(url: URL, settings: Settings) -> tuple[URL, dict[str, Any]]:
    """Move libpq-style query parameters (what Neon prints) to asyncpg's connect arguments."""
    query = dict(url.query)
    args: dict[str, Any] = {"timeout": settings.db_connect_timeout}
    sslmode = query.pop("sslmode", None) or query.pop("ssl", None)
    if sslmode is not None:
        if not isinstance(sslmode, str) or sslmode not in _SSLMODES:
            raise DatabaseURLError(f"sslmode must be one of {', '.join(sorted(_SSLMODES))}")
        args["ssl"] = sslmode
    if "sslrootcert" in query:
        context = ssl_module.create_default_context(cafile=str(query.pop("sslrootcert")))
        args["ssl"] = context
    # asyncpg negotiates SCRAM itself and has no channel-binding switch; Neon accepts it without.
    query.pop("channel_binding", None)
    if "connect_timeout" in query:
        try:
            args["timeout"] = float(str(query.pop("connect_timeout")))
        except ValueError:
            raise DatabaseURLError("connect_timeout must be a number of seconds") from None
    server_settings = {}
    if "application_name" in query:
        server_settings["application_name"] = str(query.pop("application_name"))
    if "options" in query:
        # Neon's "endpoint=<id>" routing option for clients without SNI; asyncpg sends SNI.
        query.pop("options")
    if server_settings:
        args["server_settings"] = server_settings
    if query:
        unknown = ", ".join(sorted(query))
        raise DatabaseURLError(
            f"DATABASE_URL has query parameters this service does not know: {unknown}"
        )
    return url.set(query={}), args


def _is_pooler_host(url: URL) -> bool:
    # Neon's pooled connection string: ep-name-123456-pooler.region.aws.neon.tech.
    return not is_sqlite(url) and "-pooler" in (url.host or "")


def target(settings: Settings, *, direct: bool) -> tuple[URL, bool]:
    """The URL to connect to, and whether it is a transaction-mode pooler (DB_POOLER, or a Neon
    -pooler host). `direct`: the session connection for migrations and LISTEN
    (DATABASE_DIRECT_URL, else DATABASE_URL)."""
    if direct and settings.database_direct_url:
        url = normalize_url(settings.database_direct_url, name="DATABASE_DIRECT_URL")
        return url, _is_pooler_host(url)
    url = normalize_url(settings.db_url)
    if settings.db_pooler is None:
        return url, _is_pooler_host(url)
    return url, settings.db_pooler == "transaction" and not is_sqlite(url)


def check_urls(settings: Settings) -> None:
    """Raise DatabaseURLError for a URL the engines would refuse, without connecting."""
    for direct in (False, True):
        url, _ = target(settings, direct=direct)
        if not is_sqlite(url):
            pg_connect_args(url, settings)


def can_listen(settings: Settings) -> bool:
    """Whether there is a session connection to LISTEN on: PostgreSQL, not through a pooler."""
    url, pooled = target(settings, direct=True)
    return not is_sqlite(url) and not pooled


def where(url: URL) -> str:
    """The database a URL names, for a message: never its password."""
    if is_sqlite(url):
        return f"the SQLite database {url.database or ':memory:'}"
    place = f"PostgreSQL at {url.host or 'localhost'}:{url.port or 5432}"
    return f'{place} (database "{url.database}", user "{url.username}")'
