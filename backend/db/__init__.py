"""Everything that differs between SQLite and PostgreSQL lives in this package, and nowhere else.

    urls.py        URLs as people write them (Neon's included), the driver, pooler or not
    engine.py      the engines: pragmas, pools, timeouts, what a pooler forbids
    failures.py    which failures mean 503 (one classifier for both statement paths)
    gate.py        Database: the connection gate, connections kept between requests
    fetch.py       prepare() and fetch(): the raw path of the hot statements
    dialects.py    transactions, snapshots, INSERT … ON CONFLICT
    direct.py      what needs a session connection: migrations (under a lock) and LISTEN

A database that cannot serve now is `DatabaseUnavailable` (503), always within a bound: every
wait has a limit — a free connection (DB_POOL_TIMEOUT), a new one (DB_CONNECT_TIMEOUT), and
each statement or lock wait (DB_STATEMENT_TIMEOUT: the server's statement_timeout and
lock_timeout; asyncpg's command_timeout a little later for a server that does not answer at
all; SQLite's busy timeout). Timestamps are timezone-aware UTC on both (`models.task.UTCDateTime`).

Callers use the names below (`from backend import db`; `db.fetch`, `db.Database`, …).
"""

from backend.db.dialects import snapshot, transaction, upsert
from backend.db.direct import alembic_config, listen, migrate
from backend.db.engine import make_engine, pool_size
from backend.db.failures import DatabaseUnavailable, describe_failure, unavailable_reason
from backend.db.fetch import Prepared, fetch, prepare
from backend.db.gate import Database
from backend.db.urls import (
    ACCEPTED_URLS,
    DatabaseURLError,
    can_listen,
    check_urls,
    is_sqlite,
    normalize_url,
)

__all__ = [
    "ACCEPTED_URLS",
    "Database",
    "DatabaseURLError",
    "DatabaseUnavailable",
    "Prepared",
    "alembic_config",
    "can_listen",
    "check_urls",
    "describe_failure",
    "fetch",
    "is_sqlite",
    "listen",
    "make_engine",
    "migrate",
    "normalize_url",
    "pool_size",
    "prepare",
    "snapshot",
    "transaction",
    "unavailable_reason",
    "upsert",
]
