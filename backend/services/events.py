"""The live event streams: who is waiting for whose changes, how they learn of them, and what
each stream is sent.

    ChangeHub            one per process: the caps, the wake-ups, the listening connection
    └── Group            one per user with open streams: one reader task for all of them
        └── Stream       one open stream: counted from `open` to `close` (services/streams.py)

A user's group reads the change feed (services.changes) once per wake, from the lowest
position among its streams that can take more, renders each change once, and hands every
stream the events after its own position: streams of one user may start from different tokens
(a reconnecting one with an old Last-Event-ID), and each gets exactly its own gap, once. A
wake says only "this user may have changed something", so a burst of changes wakes a group
once. What wakes it:
- PostgreSQL: the database's `task_changes` notifications (see migration 0003), whichever
  process made the change. One connection per process LISTENs — on DATABASE_DIRECT_URL, since
  a transaction-mode pooler cannot hold a LISTEN — from the first stream until none has been
  open for LINGER_SECONDS. While it is down (or behind a pooler with no direct URL), each group
  reads every POLL_SECONDS instead, and all of them once it is back.
- SQLite: the writes of this process, which TaskRoute reports with `written`; the writes of
  other processes (`--workers`) are found by reading every SQLITE_POLL_SECONDS.
A heartbeat reads nothing.

Bounds: at most SSE_MAX_STREAMS_PER_USER streams per user and SSE_MAX_STREAMS per process
(TooManyStreams, before anything is read); what each stream may hold unsent, and when it ends,
is services/streams.py's.
"""

import asyncio
import bisect
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Protocol

from backend import db
from backend.config import Settings
from backend.errors import AppError, TooManyStreams
from backend.services.changes import Changes, changes
from backend.services.streams import (
    RECONNECT_SECONDS,
    SHUTTING_DOWN,
    Group,
    Stream,
    encode,
    unreadable,
)

logger = logging.getLogger("backend.events")

CHANNEL = "task_changes"
POLL_SECONDS = 2.0
# SQLite cannot announce changes between processes: every group reads this often for those of
# other processes (`--workers`); this process's own wake its streams at once.
SQLITE_POLL_SECONDS = 15.0
# The listening connection is closed when no stream has been open for this long, so that an
# idle Neon compute can still suspend; a stream that comes back soon finds it open.
LINGER_SECONDS = 60.0
_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)
PAGE = 100  # changes read per round trip
BACKLOG_BYTES = 256 * 1024


class _Waker(Protocol):
    def set(self) -> None: ...


class ChangeHub:
    """`clock` (wall-clock seconds, as in a token's `exp`), the polling periods and the
    backlog's bound are attributes, which tests change."""

    def __init__(
        self,
        settings: Settings,
        database: db.Database,
        *,
        linger_seconds: float = LINGER_SECONDS,
    ) -> None:
        self._settings = settings
        self._database = database
        self._linger = linger_seconds
        self.clock: Callable[[], float] = time.time
        self.poll_seconds = POLL_SECONDS
        self.sqlite_poll_seconds = SQLITE_POLL_SECONDS
        self.backlog_bytes = BACKLOG_BYTES
        self.heartbeat_seconds = settings.sse_heartbeat_seconds
        self._leeway = settings.jwt_leeway_seconds
        self._max_per_user = settings.sse_max_streams_per_user
        self._max = settings.max_streams
        self._open = 0
        self._groups: dict[str, Group] = {}
        self._readers: set[asyncio.Task[None]] = set()
        self._idle: asyncio.TimerHandle | None = None
        self._waiting: dict[str, set[_Waker]] = {}
        self._database_notifies = not database.sqlite
        self._can_listen = db.can_listen(settings)
        self._listener: asyncio.Task[None] | None = None
        self._failures = 0
        # Whether a change anywhere wakes the groups now (else they poll).
        self.live = not self._database_notifies

    @property
    def open_streams(self) -> int:
        return self._open

    def idle(self, user_id: str) -> bool:
        """Whether nothing is being read, or waits to be read, for `user_id`'s streams."""
        group = self._groups.get(user_id)
        return group is None or (group.waiting and not group.kick.is_set())

    def open(self, user_id: str, *, expires: float) -> Stream:
        """A new stream of `user_id` whose token expires at `expires` (its `exp`), counted from
        now; raises TooManyStreams beyond either cap."""
        group = self._groups.get(user_id)
        if group is not None and len(group.members) >= self._max_per_user:
            raise TooManyStreams(
                limit=self._max_per_user, per_user=True, retry_after=RECONNECT_SECONDS
            )
        if self._open >= self._max:
            raise TooManyStreams(limit=self._max, per_user=False, retry_after=RECONNECT_SECONDS)
        if group is None:
            group = self._groups[user_id] = Group(user_id)
            self._register(user_id, group)
        stream = Stream(self, group, expires + self._leeway)
        group.members.add(stream)
        self._open += 1
        return stream

    def _release(self, stream: Stream) -> None:
        group = stream._group
        group.members.discard(stream)
        self._open -= 1
        if not group.members:
            del self._groups[group.user_id]
            self._unregister(group.user_id, group)

    @contextmanager
    def subscribe(self, user_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever `user_id` may have changed something; clear it before reading."""
        event = asyncio.Event()
        self._register(user_id, event)
        try:
            yield event
        finally:
            self._unregister(user_id, event)

    def _register(self, user_id: str, waker: _Waker) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._can_listen and self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="task_changes listener")
        self._waiting.setdefault(user_id, set()).add(waker)

    def _unregister(self, user_id: str, waker: _Waker) -> None:
        waiting = self._waiting.get(user_id)
        if waiting is not None:
            waiting.discard(waker)
            if not waiting:
                del self._waiting[user_id]
        if not self._waiting and self._listener is not None:
            self._idle = asyncio.get_running_loop().call_later(self._linger, self._stop_idle)

    def notify(self, user_id: str) -> None:
        for waker in self._waiting.get(user_id, ()):
            waker.set()

    def written(self, user_id: str) -> None:
        """A request of this process changed `user_id`'s tasks (TaskRoute says so after each
        successful write; the database says so itself where it can: then this is nothing)."""
        if not self._database_notifies:
            self.notify(user_id)

    def _notify_everyone(self) -> None:
        for wakers in self._waiting.values():
            for waker in wakers:
                waker.set()

    def _interval(self) -> float | None:
        """How long a group waits for a wake-up before it reads anyway (None: for ever)."""
        if not self._database_notifies:
            return self.sqlite_poll_seconds
        return None if self.live else self.poll_seconds

    def _start_reader(self, group: Group) -> asyncio.Task[None]:
        reader = asyncio.create_task(self._read_changes(group), name="event stream reader")
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        return reader

    async def _read_changes(self, group: Group) -> None:
        """The group's reader: one read per wake for all its streams, and one per page for
        those catching up, each once it has sent what it was handed. It returns once none of
        them is left (never cancelled: a read cut short could leave its connection unusable)."""
        while any(stream.reading for stream in group.members):
            group.kick.clear()
            wanting = [s for s in group.members if s.wants_more and s.hungry]
            if not wanting:
                group.waiting = True
                try:
                    async with asyncio.timeout(self._interval()):
                        await group.kick.wait()
                except TimeoutError:
                    group.set()  # polling
                finally:
                    group.waiting = False
                continue
            since = min(s.position for s in wanting)
            # Every stream at or after `since` is served by this read, hungry or not.
            covered = [s for s in group.members if s.reading and s.position >= since]
            for stream in covered:
                stream.changed = False
            try:
                async with self._database.connect() as conn:
                    page = await changes(conn, user_id=group.user_id, since=str(since), limit=PAGE)
            except (AppError, db.DatabaseUnavailable) as exc:
                # The clients reconnect with Last-Event-ID and miss nothing.
                code = exc.code if isinstance(exc, AppError) else "SERVICE_UNAVAILABLE"
                logger.info("event streams of a user ended: %s", code)
                for stream in group.members:
                    stream.end(unreadable(code))
                continue
            except Exception:
                logger.exception("event streams of a user ended: an unexpected failure")
                for stream in group.members:
                    stream.end(unreadable("INTERNAL_ERROR"))
                continue
            self._deliver(group, page, covered)

    def _deliver(self, group: Group, page: Changes, covered: list[Stream]) -> None:
        last = int(page.next)
        reached = last + 1 if page.has_more else last
        group.frontier = reached if group.frontier is None else max(group.frontier, reached)
        seqs = [seq for seq, _, _ in page.items]
        events = [encode(seq, task_id, task) for seq, task_id, task in page.items]
        for stream in covered:
            position = stream.position
            if not stream.reading:  # ended while the page was read
                continue
            if position > last:  # ahead of this page: there may be more after it
                stream.changed = stream.changed or page.has_more
                continue
            stream.position = last
            fresh = events[bisect.bisect_right(seqs, position) :]
            if fresh:
                stream.hand(fresh)

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
                        self.poll_seconds,
                    )
            if self.live:
                # Notifications may have been lost with the connection; and the groups waiting
                # for one must start polling.
                self.live = False
                self._notify_everyone()
            self._failures += 1
            await asyncio.sleep(_RETRY_SECONDS[min(self._failures, len(_RETRY_SECONDS)) - 1])

    def _listening(self) -> None:
        self.live = True
        self._failures = 0
        self._notify_everyone()  # whatever changed while nobody was listening

    def _stop_idle(self) -> None:
        self._idle = None
        if not self._waiting and self._listener is not None:
            self._listener.cancel()
            self._listener = None
            self.live = False

    async def aclose(self) -> None:
        for group in self._groups.values():
            for stream in group.members:
                stream.end(SHUTTING_DOWN)
        # Each returns once its read (if one is under way) is done: within the database's
        # timeouts.
        await asyncio.gather(*self._readers)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._listener is not None:
            self._listener.cancel()
            with suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
