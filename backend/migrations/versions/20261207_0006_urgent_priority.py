"""four priorities: "urgent" joins low, medium and high (stored as 4)

The column's CHECK widens from 1..3 to 1..4. PostgreSQL changes the constraint in place. SQLite
cannot alter a CHECK: the table is rebuilt (batch mode), keeping its AUTOINCREMENT sequence, and
its triggers — which a rebuild drops with the old table — are made again from their own SQL.
A downgrade makes urgent tasks high first.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHECK = "ck_task_priority_range"


def _set_range(highest: int) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        op.drop_constraint(op.f(_CHECK), "task", type_="check")
        op.create_check_constraint(op.f(_CHECK), "task", f"priority BETWEEN 1 AND {highest}")
        return
    sequence = bind.execute(sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'task'")).scalar()
    triggers = list(
        bind.execute(
            sa.text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'task'")
        ).scalars()
    )
    with op.batch_alter_table("task", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_constraint(op.f(_CHECK), type_="check")
        batch.create_check_constraint(op.f(_CHECK), f"priority BETWEEN 1 AND {highest}")
    for sql in triggers:
        op.execute(sql)
    if sequence is not None:
        bind.execute(
            sa.text("UPDATE sqlite_sequence SET seq = max(seq, :seq) WHERE name = 'task'"),
            {"seq": sequence},
        )


def upgrade() -> None:
    _set_range(4)


def downgrade() -> None:
    op.execute("UPDATE task SET priority = 3 WHERE priority = 4")
    _set_range(3)
