"""Who is waiting for whose changes: the fan-out behind the live event stream.

A stream waits on its user's `asyncio.Event` here and, when woken, reads the change feed; the
event says only "this user changed something", so a burst of changes wakes a stream once and
nothing is queued per stream. What wakes it:
- PostgreSQL: the database's `task_changes` notifications (see migration 0003), whichever
  process made the change. One connection per process LISTENs — on DATABASE_DIRECT_URL, since
  a transaction-mode pooler cannot hold a LISTEN — from the first stream until none has been
  open for LINGER_SECONDS. While it is
  down (or behind a pooler with no direct URL), streams read the feed every POLL_SECONDS
  instead, and all of them once it is back.
- SQLite: the writes of this process, which the routes report with `written`.
"""

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from backend import db
from backend.config import Settings

logger = logging.getLogger("backend.events")

CHANNEL = "task_changes"
POLL_SECONDS = 2.0
# The listening connection is closed when no stream has been open for this long, so that an
# idle Neon compute can still suspend; a stream that comes back soon finds it open.
LINGER_SECONDS = 60.0
_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)


class ChangeHub:
    def __init__(self, settings: Settings, *, linger_seconds: float = LINGER_SECONDS) -> None:
        self._settings = settings
        self._linger = linger_seconds
        self._idle: asyncio.TimerHandle | None = None
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._database_notifies = not db.is_sqlite(db.normalize_url(settings.db_url))
        self._can_listen = db.can_listen(settings)
        self._listener: asyncio.Task[None] | None = None
        self._failures = 0
        # Whether a change anywhere wakes the streams now (else they poll).
        self.live = not self._database_notifies

    @contextmanager
    def subscribe(self, user_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever `user_id` may have changed something; clear it before reading."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._can_listen and self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="task_changes listener")
        event = asyncio.Event()
        self._waiting.setdefault(user_id, set()).add(event)
        try:
            yield event
        finally:
            waiting = self._waiting.get(user_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiting[user_id]
            if not self._waiting and self._listener is not None:
                self._idle = asyncio.get_running_loop().call_later(self._linger, self._stop_idle)

    def notify(self, user_id: str) -> None:
        for event in self._waiting.get(user_id, ()):
            event.set()

    def written(self, user_id: str) -> None:
        """A request of this process changed `user_id`'s tasks (the database says so itself
        where it can: then this is nothing)."""
        if not self._database_notifies:
            self.notify(user_id)

    def _notify_everyone(self) -> None:
        for events in self._waiting.values():
            for event in events:
                event.set()

    def _listening(self) -> None:
        self.live = True
        self._failures = 0
        self._notify_everyone()  # whatever changed while nobody was listening

    async def _listen(self) -> None:
        while True:
            try:
                await db.listen(self._settings, CHANNEL, self.notify, self._listening)
            except Exception as exc:
                if self._failures == 0:  # once per outage
                    logger.warning(
                        "not listening for task changes (%s); live streams poll every %g s "
                        "until it is back",
                        db.unavailable_reason(exc) or type(exc).__name__,
                        POLL_SECONDS,
                    )
            self.live = False
            self._failures += 1
            await asyncio.sleep(_RETRY_SECONDS[min(self._failures, len(_RETRY_SECONDS)) - 1])

    def _stop_idle(self) -> None:
        self._idle = None
        if not self._waiting and self._listener is not None:
            self._listener.cancel()
            self._listener = None
            self.live = False

    async def aclose(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._listener is not None:
            self._listener.cancel()
            with suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
