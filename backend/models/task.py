"""The task table, and the limits of what its columns store."""

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Index, Integer, String, false
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

# The one definition of a control character for the whole service: C0 (NUL included, which
# PostgreSQL cannot store), DEL and C1 — Unicode's category Cc, exactly.
CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")
# The same, less tab, line feed and carriage return: what a multi-line text may hold.
CONTROL_CHARACTER_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


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


# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid); PostgreSQL gets BIGINT identity.
IdColumnType = BigInteger().with_variant(Integer(), "sqlite")


class Task(SQLModel, table=True):
    __tablename__ = "task"
    # Serves the list query: WHERE user_id = ? ORDER BY created_at DESC, id DESC.
    __table_args__ = (
        Index("ix_task_user_id_created_at_id", "user_id", "created_at", "id"),
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
