"""Forgetting what the service keeps only for a while: idempotency keys after KEY_HOURS, deleted
tasks after TOMBSTONE_DAYS. Every hour in each process, so there is no cron to set up; several
processes doing it at once delete nothing twice."""

import asyncio
import logging
from datetime import UTC, datetime

from backend import db
from backend.services import idempotency
from backend.services.changes import forget_deletions

HOUSEKEEPING_SECONDS = 3600
logger = logging.getLogger("backend")  # the lines it always wrote, from main.py


async def housekeeping(database: db.Database) -> None:
    """Forget, then sleep HOUSEKEEPING_SECONDS, until cancelled."""
    while True:
        try:
            async with database.connect() as conn:
                now = datetime.now(UTC)
                keys = await idempotency.purge(conn, now=now)
                deletions = await forget_deletions(conn, now=now)
            logger.info("housekeeping: %d idempotency keys, %d tombstones dropped", keys, deletions)
        except Exception as exc:  # the database may be away: try again next time
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # shutting down: whatever the cancellation became on its way out
            logger.warning("housekeeping failed (%s); trying again later", type(exc).__name__)
        await asyncio.sleep(HOUSEKEEPING_SECONDS)
