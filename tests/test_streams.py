"""The event stream's bounds (the hardening issue), through the real ASGI app on each database:
at most SSE_MAX_STREAMS_PER_USER streams per user and SSE_MAX_STREAMS per process, each slot
given back however its stream ends; the change feed read once per user per wake for all the
user's streams, each of which gets exactly the changes after its own position; heartbeats that
read nothing; polling once per user behind a pooler; slow clients ended; and streams that end
when their token expires.

Streams are read as the app sends them by a small ASGI client (httpx's ASGITransport hands a
response over only once it is complete). Reads of the change feed are the statements the app's
engine runs, counted by a SQLAlchemy listener. The streams' clock is injected; waits are for a
condition, with a loose deadline, and nothing waits for time to pass.
"""

import asyncio
import resource
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import event
from starlette.types import Message

from backend.errors import TooManyStreams, error_body
from backend.services import events, streams
from backend.services.events import ChangeHub
from backend.web.state import app_state
from tests.fixtures.app import running_app
from tests.fixtures.databases import make_settings
from tests.helpers import DEADLINE, Auth, create, new_user, until

QUICK_HEARTBEAT = 0.05


@dataclass
class Event:
    id: int
    event: str
    data: Any


class SseClient:
    """One GET of the real ASGI app, its response read as the app sends it. The client can go
    away (`disconnect`), stop reading (`pause`: the app's sends wait, as on a full socket) or
    break (`fail`: the app's next send raises, as on a reset connection)."""

    def __init__(self, app: FastAPI, path: str, headers: dict[str, str], query: str) -> None:
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""
        self.complete = False  # the app sent its last body message
        self.broken = False
        self._progress = asyncio.Event()
        self._gone = asyncio.Event()
        self._reading = asyncio.Event()
        self._reading.set()
        self._asked = False
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},  # as uvicorn says
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        self.task = asyncio.create_task(app(scope, self._receive, self._send))
        self.task.add_done_callback(lambda _: self._progress.set())

    async def _receive(self) -> Message:
        if not self._asked:
            self._asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        else:
            await self._reading.wait()
            if self.broken:
                raise OSError("connection reset by peer")
            self.body += message.get("body", b"")
            self.complete = not message.get("more_body", False)
        self._progress.set()

    # --- what it read

    def _items(self) -> Iterator[Event | str]:
        text = self.body.decode()
        for block in text.split("\n\n")[:-1]:  # the complete ones
            fields: dict[str, str] = {}
            for line in block.split("\n"):
                if line.startswith(":"):
                    yield line[1:].strip()
                elif line:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
            if "data" in fields:
                yield Event(int(fields["id"]), fields["event"], orjson.loads(fields["data"]))

    @property
    def events(self) -> list[Event]:
        return [item for item in self._items() if isinstance(item, Event)]

    @property
    def comments(self) -> list[str]:
        return [item for item in self._items() if isinstance(item, str)]

    @property
    def ids(self) -> list[int]:
        return [e.id for e in self.events]

    # --- waiting and acting

    async def until(self, condition: Callable[["SseClient"], bool], what: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while not condition(self):
            if self.task.done():
                self.task.result()  # its failure, if it failed
                pytest.fail(f"the stream ended before {what}: {self.body[-300:]!r}")
            self._progress.clear()
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    await self._progress.wait()
            except TimeoutError:
                pytest.fail(f"no {what} within {DEADLINE} s: {self.body[-300:]!r}")

    async def ended(self) -> str:
        """Wait for the app to end the response; its last comment."""
        await self.until(lambda s: s.complete, "the end of the stream")
        await self.task
        return self.comments[-1]

    def pause(self) -> None:
        self._reading.clear()

    def resume(self) -> None:
        self._reading.set()

    def fail(self) -> None:
        self.broken = True

    async def disconnect(self) -> None:
        self._gone.set()
        self._reading.set()
        async with asyncio.timeout(DEADLINE):
            await asyncio.gather(self.task, return_exceptions=True)


@asynccontextmanager
async def opened(
    app: FastAPI,
    user: str,
    auth: Auth,
    *,
    last_event_id: str | None = None,
    since: str | None = None,
    **claims: Any,
) -> AsyncIterator[SseClient]:
    """A stream of `user` (its token with these `claims`), open (200 and `: connected`) until
    the block ends."""
    headers = auth(user, **claims)
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    query = "" if since is None else urlencode({"since": since})
    client = SseClient(app, f"/api/{user}/tasks/events", headers, query)
    try:
        await client.until(lambda s: "connected" in s.comments, "the stream to open")
        assert client.status == 200
        assert client.headers["content-type"].startswith("text/event-stream")
        yield client
    finally:
        await client.disconnect()


class Statements:
    """The statements the app's engine runs (through SQLAlchemy or on the driver itself)."""

    def __init__(self, app: FastAPI) -> None:
        self.seen: list[tuple[str, Any]] = []
        self._engine = app_state(app).db.engine.sync_engine

    def _record(self, *args: Any) -> None:
        _conn, _cursor, statement, parameters, _context, _many = args
        self.seen.append((statement, parameters))

    @contextmanager
    def counting(self) -> Iterator["Statements"]:
        event.listen(self._engine, "before_cursor_execute", self._record)
        try:
            yield self
        finally:
            event.remove(self._engine, "before_cursor_execute", self._record)

    def feed_reads(self, user: str) -> int:
        """Reads of `user`'s change feed: the query of changed and deleted tasks after a token
        (services.changes.changes); listing, starting a stream and writing never run it."""
        return sum(
            1
            for statement, parameters in self.seen
            if statement.lstrip().upper().startswith("SELECT")
            and "FROM task_tombstone" in statement
            and user in _values(parameters)
        )


def _values(parameters: Any) -> list[Any]:
    if isinstance(parameters, dict):
        return list(parameters.values())
    return list(parameters or ())


class Clock:
    """The streams' wall clock, moved by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def serving(database_url: str, **overrides: Any) -> AsyncIterator[tuple[FastAPI, Any]]:
    settings = make_settings(database_url, rate_limit=0, **overrides)
    async with running_app(settings) as (app, http):
        yield app, http


def having(events: int) -> Callable[[SseClient], bool]:
    return lambda stream: len(stream.ids) >= events


async def request_stream(http: httpx.AsyncClient, user: str, auth: Auth) -> httpx.Response:
    """A stream that is expected to be refused: its whole answer (a stream that opens instead
    would never complete, and fails the wait)."""
    async with asyncio.timeout(DEADLINE):
        return await http.get(f"/api/{user}/tasks/events", headers=auth(user))


def refused(response: httpx.Response, setting: str, limit: int) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == str(streams.RECONNECT_SECONDS)
    assert "ratelimit-limit" not in response.headers  # no request budget is involved
    body = response.json()
    assert set(body) == {"detail", "code"}
    assert body["code"] == "RATE_LIMITED"
    assert setting in body["detail"]
    assert f" {limit} event streams" in body["detail"], body


# --- the caps -------------------------------------------------------------------------------------


async def test_a_user_s_streams_beyond_the_cap_are_refused_before_any_read(
    database_url: str, auth: Auth
) -> None:
    alice, bob = new_user(), new_user()
    async with serving(database_url, sse_max_streams_per_user=3) as (app, http):
        hub: ChangeHub = app_state(app).changes
        async with AsyncExitStack() as stack:
            streams = [await stack.enter_async_context(opened(app, alice, auth)) for _ in range(3)]
            with Statements(app).counting() as statements:
                response = await request_stream(http, alice, auth)
            refused(response, "SSE_MAX_STREAMS_PER_USER", 3)
            assert statements.seen == []  # refused before the database was asked anything
            assert hub.open_streams == 3
            # Another user is not affected; a closed stream gives its slot back.
            await stack.enter_async_context(opened(app, bob, auth))
            await streams[0].disconnect()
            assert hub.open_streams == 3
            async with opened(app, alice, auth):
                response = await request_stream(http, alice, auth)
                refused(response, "SSE_MAX_STREAMS_PER_USER", 3)
        assert hub.open_streams == 0


async def test_streams_beyond_the_process_cap_are_refused(database_url: str, auth: Auth) -> None:
    users = [new_user() for _ in range(3)]
    async with (
        serving(database_url, sse_max_streams=2) as (app, http),
        opened(app, users[0], auth),
        opened(app, users[1], auth) as second,
    ):
        with Statements(app).counting() as statements:
            response = await request_stream(http, users[2], auth)
        refused(response, "SSE_MAX_STREAMS", 2)
        assert "SSE_MAX_STREAMS_PER_USER" not in response.json()["detail"]
        assert statements.seen == []
        await second.disconnect()
        async with opened(app, users[2], auth):
            pass


def test_the_process_cap_defaults_to_half_the_open_files_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    settings = make_settings("sqlite:///unused.db")
    assert settings.sse_max_streams is None
    assert settings.sse_max_streams_per_user == 10
    expected = soft // 2 if soft != resource.RLIM_INFINITY else 4096
    assert settings.max_streams == expected
    assert make_settings("sqlite:///unused.db", sse_max_streams=7).max_streams == 7


async def test_a_stream_gives_its_slot_back_however_it_ends(
    database_url: str, auth: Auth, token: Callable[..., str]
) -> None:
    user = new_user()
    clock = Clock()
    async with serving(
        database_url,
        sse_heartbeat_seconds=QUICK_HEARTBEAT,
        db_pool_size=1,
        db_pool_timeout=0.2,
    ) as (app, http):
        hub: ChangeHub = app_state(app).changes
        hub.clock = clock

        # The client goes away.
        async with opened(app, user, auth) as stream:
            assert hub.open_streams == 1
            await stream.disconnect()
            assert hub.open_streams == 0

        # The connection breaks while the stream sends.
        async with opened(app, user, auth) as stream:
            stream.fail()
            await until(lambda: stream.task.done(), "the broken stream to end")
            assert hub.open_streams == 0

        # Its token expires.
        async with opened(app, user, auth, exp=int(clock.now) + 60) as stream:
            clock.now += 3600
            assert await stream.ended() == streams.EXPIRED
            assert hub.open_streams == 0

        # The changes cannot be read: here no connection frees up within DB_POOL_TIMEOUT.
        async with opened(app, user, auth) as stream:
            await until(lambda: hub.idle(user), "the first read")
            async with app_state(app).db.connect():
                hub.notify(user)  # as a change announced by the database would
                last = await stream.ended()
            assert last == streams.unreadable("SERVICE_UNAVAILABLE")
            assert hub.open_streams == 0

        # A failed start: the sync token is refused (410) after the slot was taken.
        response = await http.get(
            f"/api/{user}/tasks/events", headers={**auth(user), "Last-Event-ID": "999"}
        )
        assert response.status_code == 410
        assert hub.open_streams == 0

        # The server stops.
        async with opened(app, user, auth) as first, opened(app, user, auth) as second:
            assert hub.open_streams == 2
            await hub.aclose()
            assert await first.ended() == streams.SHUTTING_DOWN
            assert await second.ended() == streams.SHUTTING_DOWN
            assert hub.open_streams == 0


# --- one read per user per wake -------------------------------------------------------------------


async def test_one_change_is_read_once_for_all_the_user_s_streams(
    database_url: str, auth: Auth
) -> None:
    alice, bob = new_user(), new_user()
    async with serving(database_url) as (app, http):
        hub: ChangeHub = app_state(app).changes
        async with AsyncExitStack() as stack:
            streams = [await stack.enter_async_context(opened(app, alice, auth)) for _ in range(8)]
            bobs = await stack.enter_async_context(opened(app, bob, auth))
            # (On PostgreSQL, once the database announces changes: until then, groups poll.)
            await until(lambda: hub.live, "the listener")
            await until(lambda: hub.idle(alice) and hub.idle(bob), "the streams' first reads")
            with Statements(app).counting() as statements:
                task = await create(http, auth, user=alice)
                for stream in streams:
                    await stream.until(lambda s: len(s.events) == 1, "the change")
                await until(lambda: hub.idle(alice), "the reads to settle")
            assert statements.feed_reads(alice) == 1, statements.seen
            assert statements.feed_reads(bob) == 0
            for stream in streams:
                assert [(e.event, e.data) for e in stream.events] == [("changed", task)]
            assert bobs.events == []


async def test_heartbeats_read_nothing(database_url: str, auth: Auth) -> None:
    user = new_user()
    async with serving(database_url, sse_heartbeat_seconds=QUICK_HEARTBEAT) as (app, _):
        hub: ChangeHub = app_state(app).changes
        hub.sqlite_poll_seconds = 3600.0  # (SQLite's read for other processes' changes)
        async with AsyncExitStack() as stack:
            streams = [await stack.enter_async_context(opened(app, user, auth)) for _ in range(4)]
            await until(lambda: hub.live, "the listener")
            await until(lambda: hub.idle(user), "the streams' first reads")
            with Statements(app).counting() as statements:
                for stream in streams:
                    await stream.until(
                        lambda s: s.comments.count("heartbeat") >= 5, "five heartbeats"
                    )
            assert statements.seen == []


async def test_behind_a_pooler_without_a_direct_url_each_user_is_read_once_a_poll(
    pgbouncer_database_url: str, auth: Auth
) -> None:
    """No session to LISTEN on: the groups poll. Whatever the number of streams, a user's
    changes are read at most once per POLL_SECONDS (timers never fire early), and a change
    reaches every stream by the next poll."""
    alice, bob = new_user(), new_user()
    interval = 0.5
    async with serving(pgbouncer_database_url) as (app, http):
        hub: ChangeHub = app_state(app).changes
        assert not hub.live
        hub.poll_seconds = interval
        async with AsyncExitStack() as stack:
            streams = {
                user: [await stack.enter_async_context(opened(app, user, auth)) for _ in range(10)]
                for user in (alice, bob)
            }
            loop = asyncio.get_running_loop()
            with Statements(app).counting() as statements:
                started = loop.time()
                task = await create(http, auth, user=alice)
                for stream in streams[alice]:
                    await stream.until(lambda s: len(s.events) == 1, "the change, by a poll")
                await until(lambda: statements.feed_reads(bob) >= 4, "four polls")
                elapsed = loop.time() - started
                reads = {user: statements.feed_reads(user) for user in (alice, bob)}
            # Ten streams each polling would read about ten times as often.
            bound = int(elapsed / interval) + 1
            assert 1 <= reads[alice] <= bound, (reads, elapsed)
            assert 4 <= reads[bob] <= bound, (reads, elapsed)
            for stream in streams[alice]:
                assert [e.data for e in stream.events] == [task]
            assert all(stream.events == [] for stream in streams[bob])


# --- positions ------------------------------------------------------------------------------------


async def test_streams_of_one_user_at_different_positions_get_exactly_their_own_gaps(
    database_url: str, auth: Auth
) -> None:
    """A reconnecting stream far behind (more than a page of changes), others part of the way,
    and one from now: each gets every change after its own token once, in order, while they
    share the reads; then every later change reaches all of them."""
    user = new_user()
    async with serving(database_url) as (app, http):
        hub: ChangeHub = app_state(app).changes
        made = [
            await create(http, auth, {"title": f"task {n}"}, user=user)
            for n in range(events.PAGE + 30)
        ]
        listed = await http.get(f"/api/{user}/tasks", params={"limit": 1}, headers=auth(user))
        latest = int(listed.headers["X-Sync-Token"])
        assert latest == len(made)
        starts = {"now": None, "0": "0", "5": "5", "page": str(latest - events.PAGE - 10)}
        async with AsyncExitStack() as stack:
            streams: dict[str, SseClient] = {}
            for name, start in starts.items():
                # One by `?since=`, the others by the header a reconnecting client sends.
                resume = {"since": start} if name == "5" else {"last_event_id": start}
                streams[name] = await stack.enter_async_context(opened(app, user, auth, **resume))
            positions = {name: int(start or latest) for name, start in starts.items()}
            for name, stream in streams.items():
                expected = list(range(positions[name] + 1, latest + 1))
                await stream.until(having(len(expected)), f"{name}'s gap")
                assert stream.ids == expected, name
            await until(lambda: hub.idle(user), "the catching up to settle")

            # Later changes: one read each, every stream gets them once.
            deleted = made[0]["id"]
            response = await http.delete(f"/api/{user}/tasks/{deleted}", headers=auth(user))
            assert response.status_code == 200
            added = await create(http, auth, {"title": "after"}, user=user)
            for name, stream in streams.items():
                await stream.until(lambda s: s.ids[-1:] == [latest + 2], f"{name}'s new events")
                assert stream.ids == list(range(positions[name] + 1, latest + 3)), name
                assert [(e.event, e.data) for e in stream.events[-2:]] == [
                    ("deleted", {"id": deleted}),
                    ("changed", added),
                ]
            # A task as a stream sent it is the task as it was then: the last of its changes.
            assert streams["0"].events[-3].data == made[-1]


async def test_a_stream_that_falls_too_far_behind_is_ended_and_resumes_without_a_gap(
    database_url: str, auth: Auth
) -> None:
    user = new_user()
    async with serving(database_url) as (app, http):
        hub: ChangeHub = app_state(app).changes
        hub.backlog_bytes = 2048  # a few events' worth, instead of BACKLOG_BYTES
        async with opened(app, user, auth) as slow, opened(app, user, auth) as fast:
            slow.pause()  # its client stops reading: the app's sends wait
            made = [await create(http, auth, {"title": "x" * 150}, user=user) for _ in range(30)]
            await fast.until(lambda s: len(s.ids) == 30, "every change on the fast stream")
            slow.resume()
            assert await slow.ended() == streams.FELL_BEHIND
            assert fast.comments.count(streams.FELL_BEHIND) == 0
        sent = slow.ids
        assert sent == fast.ids[: len(sent)]  # a prefix, in order
        assert len(sent) < 30
        async with opened(app, user, auth, last_event_id=str(sent[-1])) as resumed:
            await resumed.until(lambda s: len(s.ids) == 30 - len(sent), "the rest")
            assert resumed.ids == fast.ids[len(sent) :]
            assert [e.data for e in resumed.events] == made[len(sent) :]


# --- the token's expiry ---------------------------------------------------------------------------


async def test_a_stream_ends_when_its_token_expires_and_sends_nothing_after(
    database_url: str, auth: Auth
) -> None:
    user = new_user()
    clock = Clock()
    leeway = 5
    exp = int(clock.now) + 100
    async with serving(
        database_url, sse_heartbeat_seconds=QUICK_HEARTBEAT, jwt_leeway_seconds=leeway
    ) as (app, http):
        hub: ChangeHub = app_state(app).changes
        hub.clock = clock
        async with opened(app, user, auth, exp=exp) as stream:
            first = await create(http, auth, user=user)
            await stream.until(lambda s: len(s.events) == 1, "a change")

            # Past exp, within the leeway: it goes on (heartbeats, changes).
            clock.now = exp + leeway - 0.5
            beats = stream.comments.count("heartbeat")
            await stream.until(lambda s: s.comments.count("heartbeat") >= beats + 2, "heartbeats")
            second = await create(http, auth, user=user)
            await stream.until(lambda s: len(s.events) == 2, "a change within the leeway")

            # exp plus the leeway: it ends, and a change made now is not sent.
            clock.now = exp + leeway
            await create(http, auth, {"title": "after expiry"}, user=user)
            assert await stream.ended() == streams.EXPIRED
            assert [e.data for e in stream.events] == [first, second]
            assert b"after expiry" not in stream.body
            assert stream.body.endswith(b": %s\n\n" % streams.EXPIRED.encode())
        assert hub.open_streams == 0


def test_the_reference_states_the_bounds_the_code_has() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    reference = " ".join(text.split())  # as one line: prose is wrapped anywhere
    example = TooManyStreams(limit=10, per_user=True, retry_after=streams.RECONNECT_SECONDS)
    assert (
        orjson.dumps(error_body(example)).decode().replace('":"', '": "').replace('","', '", "')
        in reference
    )
    assert f"`Retry-After: {streams.RECONNECT_SECONDS}`" in reference
    assert f"retry: {streams.RECONNECT_SECONDS * 1000}" in reference
    assert f"at most {events.BACKLOG_BYTES // 1024} KiB of events" in reference
    assert f"within {events.SQLITE_POLL_SECONDS:g} s" in reference
    assert f"every {events.POLL_SECONDS:g} s instead" in reference
    assert f"`: {streams.EXPIRED}`" in reference
    endings = (
        streams.FELL_BEHIND,
        streams.unreadable("SERVICE_UNAVAILABLE"),
        streams.SHUTTING_DOWN,
    )
    for ending in endings:
        assert f"`: {ending.split(';')[0].split(':')[0]}" in reference, ending
