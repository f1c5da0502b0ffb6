"""The tables behind safe retries and sync: each user's change sequence, the deleted tasks the
change feed still remembers, and the idempotency keys of recent requests.

The database itself keeps the first two (triggers of migration 0003, on SQLite and PostgreSQL):
every insert into `task`, every update that moves a task's `version`, and every delete takes
the owner's next sequence number — a delete also leaves a tombstone — in the statement that
made the change. Writes of one user therefore queue on their `sync_state` row until commit, so
sequence numbers are handed out in commit order: a reader that sees number n sees every number
below it, and a feed read "after n" can never miss a change committed later with a smaller one.
"""

import re
from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, SmallInteger, String, Text, text
from sqlmodel import Field, SQLModel

from backend.models.task import USER_ID_MAX, IdColumnType, UTCDateTime

IDEMPOTENCY_KEY_MAX = 255
KEY_HOURS = 24  # an idempotency key and its response are kept this long
# Deleted tasks are remembered this long; a sync token older than the deletions forgotten since
# is expired, and its client starts over from a full list.
TOMBSTONE_DAYS = 30
# A deleted task is remembered while it is among its owner's last this many changes (and at most
# TOMBSTONE_DAYS): the triggers of migration 0005 drop older tombstones as changes come, so what
# is kept per user is bounded by this, not by how fast a user deletes.
TOMBSTONE_CHANGES = 10_000
# A sync token is a change sequence number (`seq`) in decimal: at most 18 digits, so that any
# token fits the BIGINT column.
SYNC_TOKEN_PATTERN = "^[0-9]{1,18}$"  # noqa: S105 - a pattern, not a secret
SYNC_TOKEN = re.compile(SYNC_TOKEN_PATTERN)  # to be used with fullmatch


class SyncState(SQLModel, table=True):
    """A user's change sequence: `seq` is the number of their latest change, `purged_seq` the
    newest tombstone forgotten (a sync token older than it is expired); and `task_count`."""

    __tablename__ = "sync_state"

    user_id: str = Field(sa_column=Column(String(USER_ID_MAX), primary_key=True))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False, server_default=text("0")))
    purged_seq: int = Field(sa_column=Column(BigInteger, nullable=False, server_default=text("0")))
    # How many tasks the user has (kept by the same triggers, migration 0004): the quota.
    task_count: int = Field(sa_column=Column(BigInteger, nullable=False, server_default=text("0")))


class TaskTombstone(SQLModel, table=True):
    """A deleted task, kept for the change feed (TOMBSTONE_DAYS, TOMBSTONE_CHANGES)."""

    __tablename__ = "task_tombstone"
    __table_args__ = (
        Index("ix_task_tombstone_user_id_change_seq", "user_id", "change_seq"),
        Index("ix_task_tombstone_deleted_at", "deleted_at"),
    )

    task_id: int = Field(sa_column=Column(IdColumnType, primary_key=True, autoincrement=False))
    user_id: str = Field(sa_column=Column(String(USER_ID_MAX), nullable=False))
    change_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    deleted_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class IdempotencyKey(SQLModel, table=True):
    """A request made with an Idempotency-Key, and the response it got (kept KEY_HOURS). The
    primary key is what makes concurrent repeats one request, in any number of processes."""

    __tablename__ = "idempotency_key"
    __table_args__ = (
        Index("ix_idempotency_key_created_at", "created_at"),
        # The user's newest keys: the bound on keys kept per user.
        Index("ix_idempotency_key_user_id_created_at", "user_id", "created_at"),
    )

    user_id: str = Field(sa_column=Column(String(USER_ID_MAX), primary_key=True))
    key: str = Field(sa_column=Column(String(IDEMPOTENCY_KEY_MAX), primary_key=True))
    # sha256 of the method, path and body: the same key with another request is refused.
    request_hash: str = Field(sa_column=Column(String(64), nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    # The response, once the request succeeded (in the same transaction as its change).
    status: int | None = Field(default=None, sa_column=Column(SmallInteger, nullable=True))
    body: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
