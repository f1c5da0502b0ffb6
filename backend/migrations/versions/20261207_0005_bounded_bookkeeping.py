"""bounded bookkeeping: deletions counted per statement, tombstones and idempotency keys per user

- PostgreSQL: the delete trigger of 0003/0004 ran once per deleted row (a tombstone, and the
  owner's sync_state row updated, each time): "clear completed" of 20,000 tasks outlasted the
  statement timeout, and nothing was deleted. It is now a statement-level trigger over the
  deleted rows (a transition table): each owner's sync_state row is updated once, and the
  tombstones are inserted in one statement, numbered in id order.
- Both: a deleted task is remembered while it is among its owner's last 10,000 changes (and, as
  before, at most 30 days): older tombstones are dropped as new changes come, the newest dropped
  becoming `purged_seq` (a sync token older than it is expired). Tombstones are bounded by what
  a user can hold, not by how fast they can delete.
- Idempotency keys get an index by user and age, for the bound on keys kept per user.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The 10000 below is models.sync.TOMBSTONE_CHANGES when this revision was written (a migration is
# frozen in time: changing the bound takes a new one; tests/test_migrations.py checks they agree).
_POSTGRESQL = (
    """
    CREATE FUNCTION task_rows_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        owner record;
        latest bigint;
        kept_after bigint;
        dropped bigint;
    BEGIN
        -- Owners in a fixed order: two statements deleting for the same owners lock their
        -- counters in the same order (rows first, then counters, as every write does).
        FOR owner IN
            SELECT user_id, count(*) AS n FROM deleted_rows GROUP BY user_id ORDER BY user_id
        LOOP
            UPDATE sync_state SET seq = seq + owner.n, task_count = task_count - owner.n
            WHERE user_id = owner.user_id RETURNING seq INTO latest;
            IF NOT FOUND THEN
                INSERT INTO sync_state (user_id, seq, purged_seq, task_count)
                VALUES (owner.user_id, owner.n, 0, 0)
                ON CONFLICT (user_id) DO UPDATE
                SET seq = sync_state.seq + owner.n, task_count = sync_state.task_count - owner.n
                RETURNING seq INTO latest;
            END IF;
            kept_after := latest - 10000;
            INSERT INTO task_tombstone (task_id, user_id, change_seq, deleted_at)
            SELECT id, owner.user_id, seq, now() FROM (
                SELECT id, latest - owner.n + row_number() OVER (ORDER BY id) AS seq
                FROM deleted_rows WHERE user_id = owner.user_id
            ) AS numbered
            WHERE seq > kept_after;
            WITH gone AS (
                DELETE FROM task_tombstone
                WHERE user_id = owner.user_id AND change_seq <= kept_after
                RETURNING change_seq
            )
            SELECT max(change_seq) INTO dropped FROM gone;
            IF owner.n > 10000 THEN
                -- Deletions of this statement that were never remembered.
                dropped := greatest(dropped, kept_after);
            END IF;
            IF dropped IS NOT NULL THEN
                UPDATE sync_state SET purged_seq = greatest(purged_seq, dropped)
                WHERE user_id = owner.user_id;
            END IF;
            PERFORM pg_notify('task_changes', owner.user_id);
        END LOOP;
        RETURN NULL;
    END
    $$
    """,
    "DROP TRIGGER task_deleted ON task",
    """
    CREATE TRIGGER task_deleted AFTER DELETE ON task
    REFERENCING OLD TABLE AS deleted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_rows_deleted()
    """,
    "DROP FUNCTION task_deleted()",
)
# The per-row trigger of 0004, as it was.
_POSTGRESQL_DOWN = (
    """
    CREATE FUNCTION task_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO task_tombstone (task_id, user_id, change_seq, deleted_at)
        VALUES (OLD.id, OLD.user_id, task_next_change(OLD.user_id, -1), now());
        RETURN NULL;
    END
    $$
    """,
    "DROP TRIGGER task_deleted ON task",
    """
    CREATE TRIGGER task_deleted AFTER DELETE ON task
    FOR EACH ROW EXECUTE FUNCTION task_deleted()
    """,
    "DROP FUNCTION task_rows_deleted()",
)

# SQLite has no statement-level triggers (and runs its per-row ones in-process, fast enough):
# the per-row trigger drops what falls out of the owner's last changes as it goes.
_SQLITE = (
    "DROP TRIGGER task_deleted",
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
        UPDATE sync_state SET purged_seq = max(purged_seq, coalesce((
            SELECT max(change_seq) FROM task_tombstone
            WHERE user_id = OLD.user_id AND change_seq <= sync_state.seq - 10000
        ), 0))
        WHERE user_id = OLD.user_id;
        DELETE FROM task_tombstone
        WHERE user_id = OLD.user_id AND change_seq <= (
            SELECT seq FROM sync_state WHERE user_id = OLD.user_id
        ) - 10000;
    END
    """,
)
_SQLITE_DOWN = (
    "DROP TRIGGER task_deleted",
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


def _is_sqlite() -> bool:
    return bool(op.get_bind().dialect.name == "sqlite")


def upgrade() -> None:
    for statement in _SQLITE if _is_sqlite() else _POSTGRESQL:
        op.execute(statement)
    op.create_index(
        "ix_idempotency_key_user_id_created_at", "idempotency_key", ["user_id", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_idempotency_key_user_id_created_at", table_name="idempotency_key")
    for statement in _SQLITE_DOWN if _is_sqlite() else _POSTGRESQL_DOWN:
        op.execute(statement)
