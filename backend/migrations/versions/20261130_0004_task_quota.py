"""task quota: each user's task count, kept by the triggers of 0003

`sync_state.task_count` starts at the number of tasks each user has; from here on every insert
into `task` adds 1 to it and every delete takes 1 away, in the statement that made the change
(with the owner's sync_state row locked, as for the change sequence). Creating a task reads it,
with that row locked, to refuse the task past MAX_TASKS_PER_USER.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# PostgreSQL: task_next_change takes what the change does to the count (+1, 0 or -1); the
# trigger functions are replaced in place, so the triggers themselves stay as they are.
_POSTGRESQL = (
    """
    CREATE FUNCTION task_next_change(owner varchar, added integer) RETURNS bigint
    LANGUAGE plpgsql AS $$
    DECLARE
        next_seq bigint;
    BEGIN
        UPDATE sync_state SET seq = seq + 1, task_count = task_count + added
        WHERE user_id = owner RETURNING seq INTO next_seq;
        IF NOT FOUND THEN
            INSERT INTO sync_state (user_id, seq, purged_seq, task_count)
            VALUES (owner, 1, 0, greatest(added, 0))
            ON CONFLICT (user_id) DO UPDATE
            SET seq = sync_state.seq + 1, task_count = sync_state.task_count + added
            RETURNING seq INTO next_seq;
        END IF;
        PERFORM pg_notify('task_changes', owner);
        RETURN next_seq;
    END
    $$
    """,
    """
    CREATE OR REPLACE FUNCTION task_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.change_seq := task_next_change(
            NEW.user_id, CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE 0 END
        );
        RETURN NEW;
    END
    $$
    """,
    """
    CREATE OR REPLACE FUNCTION task_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO task_tombstone (task_id, user_id, change_seq, deleted_at)
        VALUES (OLD.id, OLD.user_id, task_next_change(OLD.user_id, -1), now());
        RETURN NULL;
    END
    $$
    """,
    "DROP FUNCTION task_next_change(varchar)",
)
# The functions of 0003, as they were.
_POSTGRESQL_DOWN = (
    """
    CREATE FUNCTION task_next_change(owner varchar) RETURNS bigint LANGUAGE plpgsql AS $$
    DECLARE
        next_seq bigint;
    BEGIN
        UPDATE sync_state SET seq = seq + 1 WHERE user_id = owner RETURNING seq INTO next_seq;
        IF NOT FOUND THEN
            INSERT INTO sync_state (user_id, seq, purged_seq) VALUES (owner, 1, 0)
            ON CONFLICT (user_id) DO UPDATE SET seq = sync_state.seq + 1
            RETURNING seq INTO next_seq;
        END IF;
        PERFORM pg_notify('task_changes', owner);
        RETURN next_seq;
    END
    $$
    """,
    """
    CREATE OR REPLACE FUNCTION task_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.change_seq := task_next_change(NEW.user_id);
        RETURN NEW;
    END
    $$
    """,
    """
    CREATE OR REPLACE FUNCTION task_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO task_tombstone (task_id, user_id, change_seq, deleted_at)
        VALUES (OLD.id, OLD.user_id, task_next_change(OLD.user_id), now());
        RETURN NULL;
    END
    $$
    """,
    "DROP FUNCTION task_next_change(varchar, integer)",
)

# SQLite: the insert and delete triggers are made again with the count (the update trigger
# does not change it and stays).
_SQLITE = (
    "DROP TRIGGER task_created",
    "DROP TRIGGER task_deleted",
    """
    CREATE TRIGGER task_created AFTER INSERT ON task BEGIN
        INSERT INTO sync_state (user_id, seq, purged_seq, task_count)
        VALUES (NEW.user_id, 1, 0, 1)
        ON CONFLICT (user_id) DO UPDATE SET seq = seq + 1, task_count = task_count + 1;
        UPDATE task SET change_seq = (SELECT seq FROM sync_state WHERE user_id = NEW.user_id)
        WHERE id = NEW.id;
    END
    """,
    """
    CREATE TRIGGER task_deleted AFTER DELETE ON task BEGIN
        INSERT INTO sync_state (user_id, seq, purged_seq, task_count)
        VALUES (OLD.user_id, 1, 0, 0)
        ON CONFLICT (user_id) DO UPDATE SET seq = seq + 1, task_count = task_count - 1;
        INSERT INTO task_tombstone (task_id, user_id, change_seq, deleted_at)
        VALUES (
            OLD.id,
            OLD.user_id,
            (SELECT seq FROM sync_state WHERE user_id = OLD.user_id),
            strftime('%Y-%m-%d %H:%M:%f000', 'now')
        );
    END
    """,
)
_SQLITE_DOWN = (
    "DROP TRIGGER task_created",
    "DROP TRIGGER task_deleted",
    """
    CREATE TRIGGER task_created AFTER INSERT ON task BEGIN
        INSERT INTO sync_state (user_id, seq, purged_seq) VALUES (NEW.user_id, 1, 0)
        ON CONFLICT (user_id) DO UPDATE SET seq = seq + 1;
        UPDATE task SET change_seq = (SELECT seq FROM sync_state WHERE user_id = NEW.user_id)
        WHERE id = NEW.id;
    END
    """,
    """
    CREATE TRIGGER task_deleted AFTER DELETE ON task BEGIN
        INSERT INTO sync_state (user_id, seq, purged_seq) VALUES (OLD.user_id, 1, 0)
        ON CONFLICT (user_id) DO UPDATE SET seq = seq + 1;
        INSERT INTO task_tombstone (task_id, user_id, change_seq, deleted_at)
        VALUES (
            OLD.id,
            OLD.user_id,
            (SELECT seq FROM sync_state WHERE user_id = OLD.user_id),
            strftime('%Y-%m-%d %H:%M:%f000', 'now')
        );
    END
    """,
)


def _is_sqlite() -> bool:
    return bool(op.get_bind().dialect.name == "sqlite")


def upgrade() -> None:
    op.add_column(
        "sync_state",
        sa.Column("task_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    # Every owner of a task has a sync_state row (0003 made them, its triggers keep them).
    op.execute(
        "UPDATE sync_state SET task_count = "
        "(SELECT count(*) FROM task WHERE task.user_id = sync_state.user_id)"
    )
    for statement in _SQLITE if _is_sqlite() else _POSTGRESQL:
        op.execute(statement)


def downgrade() -> None:
    for statement in _SQLITE_DOWN if _is_sqlite() else _POSTGRESQL_DOWN:
        op.execute(statement)
    op.execute("ALTER TABLE sync_state DROP COLUMN task_count")
