"""Alembic environment. The app and `taskapi migrate` hand in an open connection (already holding
the migration lock, see db.migrate); run on its own (`alembic revision --autogenerate`), it
connects to DATABASE_DIRECT_URL, else DATABASE_URL, as db.migrate does."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import backend.models.sync  # noqa: F401 - registers the tables (and the task table) on the metadata
from backend.config import Settings
from backend.db import make_engine

target_metadata = SQLModel.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite can only ALTER a table by copying it
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone() -> None:
    engine = make_engine(Settings(), for_requests=False)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run `taskapi migrate`")
connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    asyncio.run(_run_standalone())
