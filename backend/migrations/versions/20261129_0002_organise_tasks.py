"""organise tasks: priority, tags, due and reminder dates, recurrence, completed_at

Existing tasks get the defaults (medium priority, no tags, no dates, no recurrence); a task
already completed gets its last update as `completed_at`, the best that is known. The folded
search copies are filled in Python, with the same case folding the service applies.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_PENDING_REMINDERS = sa.text("remind_at IS NOT NULL AND NOT completed")
# SQLite uses a partial index only for a query that repeats its WHERE, and SQLAlchemy writes
# `NOT completed` as `completed = 0` there.
_PENDING_REMINDERS_SQLITE = sa.text("remind_at IS NOT NULL AND completed = 0")
_PENDING = sa.text("NOT completed")
_PENDING_SQLITE = sa.text("completed = 0")
_BATCH = 1000


def _sqlite_rebuild() -> tuple[dict[str, Any], int | None]:
    """SQLite alters a table by copying it into a new one: declare the copy AUTOINCREMENT again
    (ids are never reused after a delete), and return the id sequence to carry on, since the
    copy alone restarts it after the highest id left, reusing the ids deleted at the top."""
    connection = op.get_bind()
    if connection.dialect.name != "sqlite":
        return {}, None
    sequence = connection.execute(
        sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'task'")
    ).scalar()
    return {"table_kwargs": {"sqlite_autoincrement": True}}, sequence


def _restore_sequence(sequence: int | None) -> None:
    if sequence is not None:
        op.get_bind().execute(
            sa.text("UPDATE sqlite_sequence SET seq = max(seq, :seq) WHERE name = 'task'"),
            {"seq": sequence},
        )


def upgrade() -> None:
    options, sequence = _sqlite_rebuild()
    with op.batch_alter_table("task", **options) as batch:
        batch.add_column(
            sa.Column("priority", sa.SmallInteger(), server_default=sa.text("2"), nullable=False)
        )
        batch.add_column(sa.Column("tags", _JSON, server_default=sa.text("'[]'"), nullable=False))
        batch.add_column(sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("remind_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("recurrence", _JSON, nullable=True))
        batch.add_column(sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("title_fold", sa.Text(), server_default=sa.text("''"), nullable=False)
        )
        batch.add_column(sa.Column("description_fold", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("tag_keys", sa.Text(), server_default=sa.text("''"), nullable=False)
        )
        batch.add_column(sa.Column("recurrence_anchor", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column(
                "recurrence_offset_minutes",
                sa.SmallInteger(),
                server_default=sa.text("0"),
                nullable=False,
            )
        )
        batch.add_column(
            sa.Column("recurrence_count", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch.add_column(sa.Column("next_occurrence_id", _ID, nullable=True))
        batch.create_check_constraint(
            op.f("ck_task_recurrence_needs_due_at"), "recurrence IS NULL OR due_at IS NOT NULL"
        )
        batch.create_check_constraint(op.f("ck_task_priority_range"), "priority BETWEEN 1 AND 3")
        batch.create_index("ix_task_user_id_updated_at_id", ["user_id", "updated_at", "id"])
        batch.create_index("ix_task_user_id_due_at_id", ["user_id", "due_at", "id"])
        batch.create_index(
            "ix_task_user_id_created_at_id_pending",
            ["user_id", "created_at", "id"],
            postgresql_where=_PENDING,
            sqlite_where=_PENDING_SQLITE,
        )
        batch.create_index(
            "ix_task_user_id_due_at_pending",
            ["user_id", "due_at"],
            postgresql_where=_PENDING,
            sqlite_where=_PENDING_SQLITE,
        )
        batch.create_index(
            "ix_task_user_id_remind_at",
            ["user_id", "remind_at"],
            postgresql_where=_PENDING_REMINDERS,
            sqlite_where=_PENDING_REMINDERS_SQLITE,
        )
    _restore_sequence(sequence)
    _backfill()


def _backfill() -> None:
    connection = op.get_bind()
    task = sa.table(
        "task",
        sa.column("id", sa.BigInteger()),
        sa.column("title", sa.String()),
        sa.column("description", sa.String()),
        sa.column("completed", sa.Boolean()),
        sa.column("updated_at", sa.DateTime(timezone=True)),
        sa.column("completed_at", sa.DateTime(timezone=True)),
        sa.column("title_fold", sa.Text()),
        sa.column("description_fold", sa.Text()),
    )
    connection.execute(task.update().where(task.c.completed).values(completed_at=task.c.updated_at))
    update = (
        task.update()
        .where(task.c.id == sa.bindparam("key"))
        .values(title_fold=sa.bindparam("t"), description_fold=sa.bindparam("d"))
    )
    last = 0
    while True:
        rows = connection.execute(
            sa.select(task.c.id, task.c.title, task.c.description)
            .where(task.c.id > last)
            .order_by(task.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        connection.execute(
            update,
            [
                {
                    "key": r.id,
                    "t": r.title.casefold(),
                    "d": r.description and r.description.casefold(),
                }
                for r in rows
            ],
        )
        last = rows[-1].id


def downgrade() -> None:
    options, sequence = _sqlite_rebuild()
    with op.batch_alter_table("task", **options) as batch:
        batch.drop_index("ix_task_user_id_remind_at")
        batch.drop_index("ix_task_user_id_due_at_pending")
        batch.drop_index("ix_task_user_id_created_at_id_pending")
        batch.drop_index("ix_task_user_id_due_at_id")
        batch.drop_index("ix_task_user_id_updated_at_id")
        batch.drop_constraint(op.f("ck_task_priority_range"), type_="check")
        batch.drop_constraint(op.f("ck_task_recurrence_needs_due_at"), type_="check")
        for column in (
            "next_occurrence_id",
            "recurrence_count",
            "recurrence_offset_minutes",
            "recurrence_anchor",
            "tag_keys",
            "description_fold",
            "title_fold",
            "completed_at",
            "recurrence",
            "remind_at",
            "due_at",
            "tags",
            "priority",
        ):
            batch.drop_column(column)
    _restore_sequence(sequence)
