"""What the task services share: the tables as SQLAlchemy sees them, the public columns, how a
returned row becomes a record, the case folding of search and tags, and the clock."""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam
from sqlalchemy.ext.asyncio import AsyncConnection

from backend import db
from backend.models.sync import SyncState, TaskTombstone
from backend.models.task import Task
from backend.schemas.task import TaskRead

# A task as the public columns name it: what every service function returns.
TaskRecord = dict[str, Any]
# The versions an If-Match accepts; None when there is no If-Match (or it is `*`).
Versions = frozenset[int]

task_table = cast(Table, Task.__table__)  # type: ignore[attr-defined]
sync_table = cast(Table, SyncState.__table__)  # type: ignore[attr-defined]
tombstone_table = cast(Table, TaskTombstone.__table__)  # type: ignore[attr-defined]
# What a client sees, named once: the fields of the response schema. Every statement selects or
# returns exactly these columns, so a column added for internal use never reaches a response.
PUBLIC_COLUMNS = tuple(task_table.c[name] for name in TaskRead.model_fields)
PUBLIC_NAMES = tuple(TaskRead.model_fields)
# One task of one user. Named apart from the columns: UPDATE reserves the column names for its
# SET values.
owned = (task_table.c.id == bindparam("key_id")) & (task_table.c.user_id == bindparam("key_user"))
TAG_SEPARATOR = "\x1f"  # a control character: no tag can hold it

# Statements are built once per shape (which fields a write sets, which filters and sort a list
# uses) and their values bound per request. The shapes valid requests can reach number tens of
# thousands (a list's filters and sort alone: 80,640), so each builder keeps the most recently
# used ones only; a shape it forgot is built again, never kept twice.
STATEMENTS_KEPT = 64


def now() -> datetime:
    """The services' one clock: every timestamp a write stores, and the list's "now". Called as
    `tables.now()`, so that a test can pin it (tests/fixtures/app.py's `clock`)."""
    return datetime.now(UTC)


def key(user_id: str, task_id: int, if_match: Versions | None = None) -> dict[str, Any]:
    """The parameters of `owned`, and of an If-Match's versions when there is one."""
    values: dict[str, Any] = {"key_id": task_id, "key_user": user_id}
    if if_match is not None:
        values["if_versions"] = sorted(if_match)
    return values


async def first(
    conn: AsyncConnection, statement: db.Prepared, params: dict[str, Any]
) -> TaskRecord | None:
    """The task a statement selects or returns (its public columns, in their order), if any."""
    rows = await db.fetch(conn, statement, params)
    return dict(zip(PUBLIC_NAMES, rows[0], strict=True)) if rows else None


def public(row: Any) -> TaskRecord:
    """The public columns of a row that has others too."""
    return {column.name: row[column.name] for column in PUBLIC_COLUMNS}


def fold(text: str) -> str:
    """The case folding of search and tags: full Unicode (`É` → `é`, `ß` → `ss`), the same on
    both databases because it is done here, not by the database's lower()."""
    return text.casefold()


def tag_keys(tags: Sequence[str]) -> str:
    """The folded tags between separators (`\\x1fwork\\x1fhome\\x1f`): one LIKE per tag filter."""
    if not tags:
        return ""
    return TAG_SEPARATOR + TAG_SEPARATOR.join(fold(tag) for tag in tags) + TAG_SEPARATOR
