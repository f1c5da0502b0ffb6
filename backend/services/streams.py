"""One open event stream, and the group of one user's streams: what each is sent, and when it
ends (services/events.py's ChangeHub opens them, wakes them and reads for them).

    Group        one per user with open streams: one reader task for all of them
    └── Stream   one open stream: counted from `ChangeHub.open` to `close`; `body()` is its text

A stream holds at most BACKLOG_BYTES of events it has not sent yet (or one page, when it had
none); a stream still holding that much when more comes for it is ended, so that its client
reconnects with Last-Event-ID. A stream ends when its token expires (`exp` plus
JWT_LEEWAY_SECONDS, on the hub's clock). Each ending is the stream's last line, a comment
saying why.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from backend.schemas.rendering import to_json
from backend.services.tables import TaskRecord

if TYPE_CHECKING:
    from backend.services.events import ChangeHub

# Seconds a client waits before it reconnects: the `retry:` of every stream, and the
# Retry-After of a stream refused by a cap.
RECONNECT_SECONDS = 3

# The last line of a stream that the server ends, after `: `.
EXPIRED = "token expired; reconnect with a fresh token and Last-Event-ID"
FELL_BEHIND = (
    "too far behind: changes came faster than this client read them; reconnect with Last-Event-ID"
)
SHUTTING_DOWN = "the server is shutting down; reconnect with Last-Event-ID"


def unreadable(code: str) -> str:
    return f"the changes could not be read ({code}); reconnect with Last-Event-ID"


def encode(seq: int, task_id: int, task: TaskRecord | None) -> bytes:
    """One change as an event: `changed` with the task, or `deleted` with its id."""
    if task is None:
        return b"id: %d\nevent: deleted\ndata: %s\n\n" % (seq, to_json({"id": task_id}))
    return b"id: %d\nevent: changed\ndata: %s\n\n" % (seq, to_json(task))


class Stream:
    """One open event stream. Counted against the caps from `ChangeHub.open` until `close`
    (idempotent), which whoever serves it calls however it ends."""

    def __init__(self, hub: "ChangeHub", group: "Group", deadline: float) -> None:
        self._hub = hub
        self._group = group
        self._deadline = deadline  # the token's exp plus the leeway (any JSON number)
        self.following = False  # from `follow` on
        self.position = 0  # the last change handed to it
        self.changed = False  # a change after `position` may exist
        self.ended: str | None = None  # why the server ended it
        self._closed = False
        self._backlog: list[bytes] = []  # events handed to it, not yet sent
        self._backlog_bytes = 0
        self._ready = asyncio.Event()  # something to send, or an ending

    def follow(self, position: int) -> None:
        """Start handing this stream the changes after `position` (a token known to be valid)."""
        self.position = position
        self.following = True
        group = self._group
        if group.frontier is None or position < group.frontier:
            # The group has not read yet, or has read past this position: read for it.
            self.changed = True
            group.kick.set()
        if group.reader is None or group.reader.done():
            group.reader = self._hub._start_reader(group)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.end("closed")
            self._hub._release(self)

    def end(self, reason: str) -> None:
        """End it: `reason` is its last line (a comment), and nothing more is sent."""
        if self.ended is None:
            self.ended = reason
            self._backlog.clear()
            self._backlog_bytes = 0
            self._ready.set()
            self._group.kick.set()  # its reader may have no one left to read for

    @property
    def reading(self) -> bool:
        """Whether changes are handed to it (it follows them and has not ended)."""
        return self.following and self.ended is None

    @property
    def wants_more(self) -> bool:
        """Whether a change after its position may exist."""
        frontier = self._group.frontier
        return self.reading and (
            self.changed or (frontier is not None and self.position < frontier)
        )

    @property
    def hungry(self) -> bool:
        """Whether it has sent everything it was handed."""
        return not self._backlog

    def hand(self, events: list[bytes]) -> None:
        size = sum(map(len, events))
        if self._backlog and self._backlog_bytes + size > self._hub.backlog_bytes:
            self.end(FELL_BEHIND)
            return
        self._backlog.extend(events)
        self._backlog_bytes += size
        self._ready.set()

    def _take(self) -> bytes:
        chunk = b"".join(self._backlog)
        self._backlog.clear()
        self._backlog_bytes = 0
        if self.wants_more:
            self._group.kick.set()  # sent what it had: the next page, if there is one
        return chunk

    async def body(self) -> AsyncIterator[bytes]:
        """The text/event-stream: `retry:` and `: connected`, then each event handed over, a
        `: heartbeat` after SSE_HEARTBEAT_SECONDS of silence, and a last comment line when the
        server ends it. The token's expiry is checked before anything is sent."""
        hub = self._hub
        heartbeat = hub.heartbeat_seconds
        yield b"retry: %d\n: connected\n\n" % (RECONNECT_SECONDS * 1000)
        while True:
            now = hub.clock()
            if now >= self._deadline:
                self.end(EXPIRED)
            if self.ended is not None:
                yield b": %s\n\n" % self.ended.encode()
                return
            if self._backlog:
                yield self._take()
                continue
            self._ready.clear()
            # (Compared before subtracting: an exp of 400 digits must not overflow a float.)
            wait = heartbeat if self._deadline > now + heartbeat else self._deadline - now
            try:
                async with asyncio.timeout(wait):
                    await self._ready.wait()
            except TimeoutError:
                if hub.clock() < self._deadline:
                    yield b": heartbeat\n\n"


class Group:
    """A user's open streams, and the one task that reads the user's changes for them."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.members: set[Stream] = set()  # open ones, following or not yet
        self.kick = asyncio.Event()  # a stream may want a read
        # The feed is known to reach this far: the latest change the last read saw (one past
        # its last row when it had more). Streams behind it want a read.
        self.frontier: int | None = None
        self.reader: asyncio.Task[None] | None = None
        self.waiting = False  # the reader waits for a wake-up, with nothing to read

    def set(self) -> None:
        """The wake-up: the user may have changed something."""
        for stream in self.members:
            stream.changed = True
        self.kick.set()
