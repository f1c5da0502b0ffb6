"""safe edits and sync: task versions, each user's change sequence, tombstones, idempotency keys

Every task gets `version` 1 and a place in its owner's change sequence (in id order), and each
owner a `sync_state` row at their latest number. From here on the database keeps the sequence
itself, with triggers (see `models.sync`): whatever writes a task, the change feed sees it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# PostgreSQL: a change takes the owner's next number while holding their sync_state row until
# commit (so numbers follow commit order), and tells listeners of the `task_changes` channel
# who changed (NOTIFY is delivered at commit, once per owner and transaction). An update takes
# its number after its row is locked, a delete at the end of its statement: rows first, then
# the owner's counter, in every transaction, so two of them never wait for each other.
_POSTGRESQL = (
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
    CREATE FUNCTION task_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.change_seq := task_next_change(NEW.user_id);
        RETURN NEW;
    END
    $$
    """,
    """
    CREATE FUNCTION task_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO task_tombstone (task_id, user_id, change_seq, deleted_at)
        VALUES (OLD.id, OLD.user_id, task_next_change(OLD.user_id), now());
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER task_created BEFORE INSERT ON task
    FOR EACH ROW EXECUTE FUNCTION task_changed()
    """,
    """
    CREATE TRIGGER task_changed BEFORE UPDATE ON task
    FOR EACH ROW WHEN (NEW.version IS DISTINCT FROM OLD.version) EXECUTE FUNCTION task_changed()
    """,
    """
    CREATE TRIGGER task_deleted AFTER DELETE ON task
    FOR EACH ROW EXECUTE FUNCTION task_deleted()
    """,
)
_POSTGRESQL_DOWN = (
    "DROP TRIGGER task_deleted ON task",
    "DROP TRIGGER task_changed ON task",
    "DROP TRIGGER task_created ON task",
    "DROP FUNCTION task_deleted()",
    "DROP FUNCTION task_changed()",
    "DROP FUNCTION task_next_change(varchar)",
)

# SQLite: one writer at a time, so the statement that changes a task owns the counter until it
# commits. Triggers cannot change NEW there: the number is written to the row after it.
_SQLITE = (
    """
    CREATE TRIGGER task_created AFTER INSERT ON task BEGIN
        INSERT INTO sync_state (user_id, seq, purged_seq) VALUES (NEW.user_id, 1, 0)
        ON CONFLICT (user_id) DO UPDATE SET seq = seq + 1;
        UPDATE task SET change_seq = (SELECT seq FROM sync_state WHERE user_id = NEW.user_id)
        WHERE id = NEW.id;
    END
    """,
    # `UPDATE OF version`: the trigger's own UPDATE (of change_seq) does not fire it again.
    """
    CREATE TRIGGER task_changed AFTER UPDATE OF version ON task
    WHEN NEW.version <> OLD.version BEGIN
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
_SQLITE_DOWN = (
    "DROP TRIGGER task_deleted",
    "DROP TRIGGER task_changed",
    "DROP TRIGGER task_created",
)


def _is_sqlite() -> bool:
    return bool(op.get_bind().dialect.name == "sqlite")


def upgrade() -> None:
    op.add_column(
        "task", sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False)
    )
    op.add_column(
        "task",
        sa.Column("change_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.create_table(
        "sync_state",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("purged_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_sync_state")),
    )
    op.create_table(
        "task_tombstone",
        sa.Column("task_id", _ID, autoincrement=False, nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("change_seq", sa.BigInteger(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_task_tombstone")),
    )
    op.create_index(
        "ix_task_tombstone_user_id_change_seq", "task_tombstone", ["user_id", "change_seq"]
    )
    op.create_index("ix_task_tombstone_deleted_at", "task_tombstone", ["deleted_at"])
    op.create_table(
        "idempotency_key",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("user_id", "key", name=op.f("pk_idempotency_key")),
    )
    op.create_index("ix_idempotency_key_created_at", "idempotency_key", ["created_at"])

    # The tasks there are: numbered per owner in id order, before the triggers exist.
    op.execute(
        """
        UPDATE task SET change_seq = numbered.seq
        FROM (
            SELECT id, row_number() OVER (PARTITION BY user_id ORDER BY id) AS seq FROM task
        ) AS numbered
        WHERE task.id = numbered.id
        """
    )
    op.execute(
        "INSERT INTO sync_state (user_id, seq, purged_seq) "
        "SELECT user_id, max(change_seq), 0 FROM task GROUP BY user_id"
    )
    op.create_index("ix_task_user_id_change_seq", "task", ["user_id", "change_seq"])
    for statement in _SQLITE if _is_sqlite() else _POSTGRESQL:
        op.execute(statement)


def downgrade() -> None:
    for statement in _SQLITE_DOWN if _is_sqlite() else _POSTGRESQL_DOWN:
        op.execute(statement)
    op.drop_index("ix_task_user_id_change_seq", table_name="task")
    op.drop_index("ix_idempotency_key_created_at", table_name="idempotency_key")
    op.drop_table("idempotency_key")
    op.drop_index("ix_task_tombstone_deleted_at", table_name="task_tombstone")
    op.drop_index("ix_task_tombstone_user_id_change_seq", table_name="task_tombstone")
    op.drop_table("task_tombstone")
    op.drop_table("sync_state")
    # Plain ALTER TABLE on both (SQLite has it since 3.35): SQLite keeps the table, and with it
    # its AUTOINCREMENT sequence, instead of copying it into a new one.
    op.execute("ALTER TABLE task DROP COLUMN change_seq")
    op.execute("ALTER TABLE task DROP COLUMN version")
