"""Is this process ready to serve: does the database answer, at the code's migration?"""

import logging
from functools import cache

from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from backend import db

logger = logging.getLogger("backend.health")


@cache
def head_revision() -> str:
    head = ScriptDirectory.from_config(db.alembic_config()).get_current_head()
    assert head is not None  # the code ships its migrations
    return head


async def unready_reason(database: db.Database) -> str | None:
    """None when ready; else what is wrong, in words for an operator (no SQL, no password).
    Bounded in time by DB_POOL_TIMEOUT, DB_CONNECT_TIMEOUT and DB_STATEMENT_TIMEOUT."""
    expected = head_revision()
    try:
        async with database.connect() as conn:
            try:
                result = await conn.execute(text("SELECT version_num FROM alembic_version"))
                found = result.scalars().first()
            except sa_exc.DBAPIError:  # no such table: nothing was ever migrated here
                return (
                    "the database is not migrated: it has no alembic_version table "
                    f"(expected revision {expected}); run `taskapi migrate`"
                )
    except db.DatabaseUnavailable as exc:
        return f"the database is unreachable: {exc.reason}"
    except Exception as exc:  # a refused login, TLS: not ready, whatever it is
        logger.warning("readiness: the database refused the connection (%s)", type(exc).__name__)
        return f"the database is unreachable ({type(exc).__name__})"
    if found != expected:
        return (
            f"the database is not migrated to this version: it is at revision {found}, "
            f"expected {expected}; run `taskapi migrate`"
        )
    return None
