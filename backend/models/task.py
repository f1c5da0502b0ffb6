"""The task table, and the limits of what its columns store."""

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

# Constraint names are part of the schema that migrations manage: make them predictable.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TITLE_MAX = 200
DESCRIPTION_MAX = 1000
USER_ID_MAX = 255
TAGS_MAX = 20
TAG_MAX = 32
INTERVAL_MAX = 365
VERSION_MAX = 2**31 - 1  # an INTEGER column: no task can be at a later version
# A task's ETag is its version, quoted (a strong entity tag): `"3"`.
ETAG_PATTERN = '^"[0-9]+"$'
ID_MAX = 2**63 - 1  # BIGINT: larger ids cannot exist, and would overflow the driver
# The first and last instants Python can hold. PostgreSQL's driver (asyncpg) writes these two as
# -infinity and infinity and reads them back as naive datetimes: no stored time may be either.
TIME_MIN = datetime.min.replace(tzinfo=UTC)
TIME_MAX = datetime.max.replace(tzinfo=UTC)
# Stored as 1..4: sorting by the column ranks them. The four levels real frontends send.
PriorityName = Literal["low", "medium", "high", "urgent"]
PRIORITIES: tuple[str, ...] = get_args(PriorityName)
Frequency = Literal["daily", "weekly", "monthly", "yearly"]


def etag(version: int) -> str:
    return f'"{version}"'


def _char_class(points: Iterable[int]) -> str:
    """The body of a regular expression's character class holding these code points, in the
    syntax Python's `re` and JSON Schema's (ECMA) patterns share: `\\u0000-\\u0008\\u000b…`."""
    runs: list[list[int]] = []
    for point in sorted(points):
        if runs and point == runs[-1][-1] + 1:
            runs[-1].append(point)
        else:
            runs.append([point])
    escaped = [[f"\\u{point:04x}" for point in run] for run in runs]
    return "".join(f"{run[0]}-{run[-1]}" if len(run) > 2 else "".join(run) for run in escaped)


# The one definition of a control character for the whole service: C0 (NUL included, which
# PostgreSQL cannot store), DEL and C1 — Unicode's category Cc, exactly. A multi-line text may
# hold tab, line feed and carriage return.
_CONTROL_POINTS = [*range(0x20), *range(0x7F, 0xA0)]
CONTROL_CLASS = _char_class(_CONTROL_POINTS)
TEXT_CONTROL_CLASS = _char_class(p for p in _CONTROL_POINTS if chr(p) not in "\t\n\r")
CONTROL_CHARACTER = re.compile(f"[{CONTROL_CLASS}]")
CONTROL_CHARACTER_IN_TEXT = re.compile(f"[{TEXT_CONTROL_CLASS}]")


class UTCDateTime(TypeDecorator[datetime]):
    """TIMESTAMPTZ on PostgreSQL; on SQLite, which has no such type, UTC text read back aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value  # type: ignore[no-any-return]

    # PostgreSQL's driver sends aware datetimes as they are: no processing per value (a list of
    # 20 tasks has 100 datetimes). It reads every one back aware too, but for ±infinity, which
    # it reads as a naive datetime.max / datetime.min: those are UTC as well.
    def bind_processor(self, dialect: Dialect) -> Any:
        return None if dialect.name == "postgresql" else super().bind_processor(dialect)

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        if dialect.name == "postgresql":
            return _aware
        if dialect.name == "sqlite":
            return _sqlite_utc  # one call per value instead of three (a list of 20 has 100)
        return super().result_processor(dialect, coltype)


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _sqlite_utc(value: Any) -> datetime | None:
    """SQLite's text (`2026-11-26 12:00:00.000000`, naive UTC, as SQLAlchemy writes it), aware."""
    if value is None:
        return None
    return datetime.fromisoformat(value + "+00:00")  # twice as fast as .replace(tzinfo=UTC)


class Priority(TypeDecorator[str]):
    """ "low" / "medium" / "high" / "urgent" in the API, 1 to 4 in the table."""

    impl = SmallInteger()
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> int | None:
        return None if value is None else PRIORITIES.index(value) + 1

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else PRIORITIES[value - 1]


# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid); PostgreSQL gets BIGINT identity.
IdColumnType = BigInteger().with_variant(Integer(), "sqlite")
# jsonb on PostgreSQL: it has equality, which `IS DISTINCT FROM` needs; JSON text on SQLite.
# None is SQL NULL, not the JSON text "null" (the CHECK below tests `recurrence IS NULL`).
JsonColumnType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class Task(SQLModel, table=True):
    __tablename__ = "task"
    __table_args__ = (
        # The list's default order (and its keyset): WHERE user_id = ? ORDER BY created_at, id.
        Index("ix_task_user_id_created_at_id", "user_id", "created_at", "id"),
        Index("ix_task_user_id_updated_at_id", "user_id", "updated_at", "id"),
        Index("ix_task_user_id_due_at_id", "user_id", "due_at", "id"),
        # "Which reminders are due?" is asked often and concerns few rows. (SQLite uses a
        # partial index only for a query that repeats its WHERE, and SQLAlchemy writes
        # `NOT completed` as `completed = 0` there.)
        Index(
            "ix_task_user_id_remind_at",
            "user_id",
            "remind_at",
            postgresql_where=text("remind_at IS NOT NULL AND NOT completed"),
            sqlite_where=text("remind_at IS NOT NULL AND completed = 0"),
        ),
        # A todo list's main views are the pending tasks: newest first, overdue, due soon. No
        # other index knows `completed`: their count read each of the user's rows from the
        # table (the pages read with and without them: bench/README.md).
        Index(
            "ix_task_user_id_created_at_id_pending",
            "user_id",
            "created_at",
            "id",
            postgresql_where=text("NOT completed"),
            sqlite_where=text("completed = 0"),
        ),
        Index(
            "ix_task_user_id_due_at_pending",
            "user_id",
            "due_at",
            postgresql_where=text("NOT completed"),
            sqlite_where=text("completed = 0"),
        ),
        # The change feed: WHERE user_id = ? AND change_seq > ? ORDER BY change_seq.
        Index("ix_task_user_id_change_seq", "user_id", "change_seq"),
        CheckConstraint("recurrence IS NULL OR due_at IS NOT NULL", name="recurrence_needs_due_at"),
        CheckConstraint(f"priority BETWEEN 1 AND {len(PRIORITIES)}", name="priority_range"),
        # Ids are never reused after a delete (SQLite would otherwise hand out max(id)+1 again).
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(
        default=None, sa_column=Column(IdColumnType, primary_key=True, autoincrement=True)
    )
    user_id: str = Field(sa_column=Column(String(USER_ID_MAX), nullable=False))
    title: str = Field(sa_column=Column(String(TITLE_MAX), nullable=False))
    description: str | None = Field(
        default=None, sa_column=Column(String(DESCRIPTION_MAX), nullable=True)
    )
    completed: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    priority: str = Field(
        default="medium", sa_column=Column(Priority, nullable=False, server_default=text("2"))
    )
    tags: list[str] = Field(
        default_factory=list,
        sa_column=Column(JsonColumnType, nullable=False, server_default=text("'[]'")),
    )
    due_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    remind_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    recurrence: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JsonColumnType, nullable=True)
    )
    completed_at: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime, nullable=True)
    )

    # 1 on create, +1 on each change: the ETag, and what If-Match compares.
    version: int = Field(
        default=1, sa_column=Column(Integer, nullable=False, server_default=text("1"))
    )

    # Internal columns, never in a response (services return the public ones only).
    # The owner's change sequence number of the task's last change (see models.sync), set by
    # the database's triggers whenever `version` moves: the change feed's order and its tokens.
    change_seq: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default=text("0"))
    )
    # Case-folded copies for case-insensitive search on both databases, any script (É finds é).
    title_fold: str = Field(sa_column=Column(Text, nullable=False, server_default=text("''")))
    description_fold: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # The folded tags between separators ("\x1fwork\x1fhome\x1f"): one LIKE per tag filter,
    # the same on both databases. The separator is a control character, which no tag holds.
    tag_keys: str = Field(sa_column=Column(Text, nullable=False, server_default=text("''")))
    # A series is anchored to its first occurrence, in the UTC offset its due date was sent
    # with: occurrence n falls n steps after the anchor, so Jan 31 monthly gives Feb 28, Mar 31.
    recurrence_anchor: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime, nullable=True)
    )
    recurrence_offset_minutes: int = Field(
        default=0, sa_column=Column(SmallInteger, nullable=False, server_default=text("0"))
    )
    recurrence_count: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default=text("0"))
    )
    # Set once the next occurrence exists: completing the task again never makes another.
    next_occurrence_id: int | None = Field(
        default=None, sa_column=Column(IdColumnType, nullable=True)
    )
