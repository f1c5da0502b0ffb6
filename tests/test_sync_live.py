"""Sync simulated: one client writes, another keeps a copy of the user's tasks by following the
change feed or the event stream, and must end with exactly what a fresh list shows.

Client B makes a seeded random sequence of the writes a frontend makes (creates, PATCH and PUT
edits, toggles, deletes, "clear completed", and completions of recurring tasks, whose next
occurrence the server creates). Client A follows `GET …/tasks/changes` (paging with a small
`limit` some of the time) or the Server-Sent Events of `GET …/tasks/events` over a real socket
(streaming through httpx's ASGITransport is not incremental), dropping the stream halfway and
resuming with `Last-Event-ID`. With `taskapi serve --workers 2`, changes made through either
worker must reach streams held by both. Waits are for a condition (an event id reached), with a
loose deadline; nothing waits for time to pass.
"""

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from backend.config import Settings
from tests.fixtures.databases import database_kinds, make_settings
from tests.fixtures.servers import (
    TIMEOUT,
    LiveServer,
    Served,
    connections,
    served_by,
    taskapi_serve,
)
from tests.helpers import Auth, Task, list_all, new_user

pytestmark = pytest.mark.live  # it starts processes: servers of its own

DEADLINE = 30.0  # seconds a stream gets to deliver what a test waits for: loose on purpose
# A stream is quiet between changes (15 s until a heartbeat by default): no read timeout.
STREAM_TIMEOUT = httpx.Timeout(30.0, read=None)
OPERATIONS = 500


@pytest.fixture
def settings(database_url: str) -> Settings:
    # A simulated client sends hundreds of requests a minute as one user: no rate limit here
    # (it has tests of its own, test_limits*.py).
    return make_settings(database_url, rate_limit=0)


# --- client B: the writer -------------------------------------------------------------------------


WORDS = ["milk", "call Ana", "rent", "Ünïcode ✓", "review PR", "gym", "taxes", "مرحبا", "book"]
TAGS = ["home", "work", "Urgent", "later", "errand"]
RULE = {"frequency": "daily", "interval": 1}
# How often B does each thing (relative weights).
WEIGHTS = {
    "create": 24,
    "create_recurring": 4,
    "patch": 22,
    "put": 5,
    "toggle": 14,
    "set_completed": 5,
    "complete_recurring": 6,
    "delete": 12,
    "clear_completed": 1.5,
}


class Writer:
    """Client B. It knows the user's tasks from the answers it gets (and lists them again when
    the server may have created one by itself: after a recurring task is completed). Several
    writers may share a user: each then keeps to the tasks whose titles carry its `prefix`
    (a next occurrence keeps its title), and none clears completed tasks."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        user: str,
        auth: Auth,
        rng: random.Random,
        *,
        prefix: str = "",
    ) -> None:
        self.http, self.user, self.auth, self.rng = http, user, auth, rng
        self.prefix = prefix
        self.weights = {k: w for k, w in WEIGHTS.items() if k != "clear_completed" or not prefix}
        self.tasks: dict[int, Task] = {}
        self.done: Counter[str] = Counter()
        self._made = 0

    @property
    def url(self) -> str:
        return f"/api/{self.user}/tasks"

    def _title(self) -> str:
        self._made += 1
        return f"{self.prefix}{self.rng.choice(WORDS)} #{self._made}"

    def _due(self) -> str:
        return f"2026-12-{self.rng.randint(1, 28):02d}T{self.rng.randint(0, 23):02d}:30:00Z"

    def _new(self) -> dict[str, Any]:
        body: dict[str, Any] = {"title": self._title()}
        if self.rng.random() < 0.5:
            body["description"] = f"about {self.rng.choice(WORDS)}"
        if self.rng.random() < 0.5:
            body["priority"] = self.rng.choice(["low", "medium", "high"])
        if self.rng.random() < 0.4:
            body["tags"] = self.rng.sample(TAGS, self.rng.randint(1, 3))
        if self.rng.random() < 0.4:
            body["due_at"] = self._due()
        if self.rng.random() < 0.15:
            body["completed"] = True
        return body

    def _edit(self, task: Task) -> dict[str, Any]:
        names = ["title", "description", "priority", "tags", "due_at", "completed", "recurrence"]
        chosen = self.rng.sample(names, self.rng.randint(1, 3))
        body: dict[str, Any] = {}
        recurrence = task["recurrence"]
        if "recurrence" in chosen:
            recurrence = body["recurrence"] = self.rng.choice([None, RULE])
        if "due_at" in chosen:
            body["due_at"] = self._due() if recurrence or self.rng.random() < 0.7 else None
        if recurrence is not None and task["due_at"] is None and "due_at" not in body:
            body["due_at"] = self._due()  # a recurring task needs one
        for name in chosen:
            if name == "title":
                body["title"] = self._title()
            elif name == "description":
                body["description"] = self.rng.choice([None, f"now {self.rng.choice(WORDS)}"])
            elif name == "priority":
                body["priority"] = self.rng.choice(["low", "medium", "high"])
            elif name == "tags":
                body["tags"] = self.rng.sample(TAGS, self.rng.randint(0, 2))
            elif name == "completed":
                body["completed"] = self.rng.random() < 0.5
        return body

    def _expect(self, response: httpx.Response, status: int = 200) -> Any:
        assert response.status_code == status, (response.request.method, response.text)
        return response.json()

    async def refresh(self) -> None:
        listed = await list_all(self.http, self.auth, self.user)
        self.tasks = {task["id"]: task for task in listed if task["title"].startswith(self.prefix)}

    async def _keep(self, response: httpx.Response, status: int = 200) -> None:
        task: Task = self._expect(response, status)
        self.tasks[task["id"]] = task
        if task["recurrence"] is not None and task["completed"]:
            await self.refresh()  # its next occurrence, if this completion made one

    async def step(self) -> None:
        """One write, chosen at random (a create when there is nothing to change)."""
        kind = self.rng.choices(list(self.weights), weights=list(self.weights.values()))[0]
        pending_recurring = sorted(
            task_id
            for task_id, task in self.tasks.items()
            if task["recurrence"] is not None and not task["completed"]
        )
        if kind == "complete_recurring" and not pending_recurring:
            kind = "create_recurring"
        if not self.tasks and kind not in ("create", "create_recurring", "clear_completed"):
            kind = "create"
        self.done[kind] += 1
        headers = self.auth(self.user)
        target = self.rng.choice(sorted(self.tasks)) if self.tasks else 0
        url = f"{self.url}/{target}"
        if kind == "create":
            await self._keep(await self.http.post(self.url, json=self._new(), headers=headers), 201)
        elif kind == "create_recurring":
            body = {**self._new(), "due_at": self._due(), "recurrence": RULE, "completed": False}
            await self._keep(await self.http.post(self.url, json=body, headers=headers), 201)
        elif kind == "patch":
            body = self._edit(self.tasks[target])
            await self._keep(await self.http.patch(url, json=body, headers=headers))
        elif kind == "put":
            body = {"title": self._title(), "priority": self.rng.choice(["low", "high"])}
            await self._keep(await self.http.put(url, json=body, headers=headers))
        elif kind == "toggle":
            await self._keep(await self.http.patch(f"{url}/complete", headers=headers))
        elif kind == "set_completed":
            body = {"completed": self.rng.random() < 0.6}
            await self._keep(await self.http.patch(f"{url}/complete", json=body, headers=headers))
        elif kind == "complete_recurring":
            url = f"{self.url}/{self.rng.choice(pending_recurring)}/complete"
            body = self.rng.choice([{"completed": True}, {}])  # set, or toggle
            await self._keep(await self.http.patch(url, json=body, headers=headers))
        elif kind == "delete":
            deleted = self._expect(await self.http.delete(url, headers=headers))
            assert deleted["id"] == target
            del self.tasks[target]
        else:
            response = await self.http.delete(
                self.url, params={"status": "completed"}, headers=headers
            )
            completed = [task_id for task_id, task in self.tasks.items() if task["completed"]]
            assert self._expect(response) == {"deleted": len(completed)}
            for task_id in completed:
                del self.tasks[task_id]


async def fresh_list(http: httpx.AsyncClient, auth: Auth, user: str) -> tuple[dict[int, Task], str]:
    """The user's tasks by id, from one list (all of them fit), and its sync token."""
    response = await http.get(f"/api/{user}/tasks", headers=auth(user))
    assert response.status_code == 200, response.text
    assert "Link" not in response.headers  # one page holds them all
    tasks = {task["id"]: task for task in response.json()}
    assert int(response.headers["X-Total-Count"]) == len(tasks)
    return tasks, response.headers["X-Sync-Token"]


def apply_change(local: dict[int, Task], task: Task) -> None:
    """A task as a change reports it: never older than the copy held (a change seen again, or a
    stale state, would carry a version not above the one held)."""
    held = local.get(task["id"])
    assert held is None or task["version"] > held["version"], (held, task)
    local[task["id"]] = task


# --- client A on the change feed ------------------------------------------------------------------


@dataclass
class FeedFollower:
    http: httpx.AsyncClient
    user: str
    auth: Auth
    local: dict[int, Task] = field(default_factory=dict)
    token: str | None = None
    pages: int = 0
    pages_with_more: int = 0

    async def start_from_list(self) -> None:
        self.local, self.token = await fresh_list(self.http, self.auth, self.user)

    async def pull(self, *, pages: int | None, limit: int | None) -> bool:
        """Read up to `pages` pages of changes (None: until there are no more); whether more
        are waiting."""
        params: dict[str, str | int] = {} if limit is None else {"limit": limit}
        for _ in range(pages or 10_000):
            if self.token is not None:
                params["since"] = self.token
            response = await self.http.get(
                f"/api/{self.user}/tasks/changes", params=params, headers=self.auth(self.user)
            )
            assert response.status_code == 200, response.text
            page = response.json()
            assert set(page) == {"changed", "deleted", "next", "has_more"}
            changed_ids = [task["id"] for task in page["changed"]]
            assert len(set(changed_ids)) == len(changed_ids), page
            assert not set(changed_ids) & set(page["deleted"]), page
            assert len(changed_ids) + len(page["deleted"]) <= (limit or 500)
            for task in page["changed"]:
                apply_change(self.local, task)
            for task_id in page["deleted"]:
                self.local.pop(task_id, None)
            self.token = page["next"]
            self.pages += 1
            if not page["has_more"]:
                return False
            self.pages_with_more += 1
        return pages is not None or pytest.fail("the feed kept saying has_more")


async def follow_the_feed(http: httpx.AsyncClient, auth: Auth, seed: int, start: str) -> None:
    """B writes OPERATIONS times; A pulls at random moments, sometimes only a page or two, with
    a small limit some of the time; in the end A's copy is what a fresh list shows."""
    rng = random.Random(seed)
    user = new_user()
    writer = Writer(http, user, auth, random.Random(seed + 1))
    follower = FeedFollower(http, user, auth)
    started_after = rng.randint(0, 40)  # B has some tasks before A starts
    for n in range(OPERATIONS):
        if n == started_after and start == "list":
            await follower.start_from_list()
        await writer.step()
        if n >= started_after and rng.random() < 0.15:
            await follower.pull(pages=rng.randint(1, 3), limit=rng.choice([7, 7, 25, None]))
    await follower.pull(pages=None, limit=rng.choice([7, None]))
    expected, token = await fresh_list(http, auth, user)
    assert follower.local == expected
    assert follower.token == token  # the list and the feed name the same latest change
    assert writer.tasks == expected  # B's own view, as a check on the simulation itself
    # The sequence did what it is meant to exercise.
    assert min(writer.done[kind] for kind in WEIGHTS) > 0, writer.done
    assert follower.pages_with_more > 0


@pytest.mark.parametrize(("seed", "start"), [(1, "list"), (2, "feed")])
async def test_a_feed_follower_ends_with_the_list(
    client: httpx.AsyncClient, auth: Auth, seed: int, start: str
) -> None:
    await follow_the_feed(client, auth, seed, start)


async def test_a_feed_follower_ends_with_the_list_over_a_live_server(
    live_server: LiveServer, auth: Auth
) -> None:
    async with httpx.AsyncClient(base_url=live_server.base_url, timeout=TIMEOUT) as http:
        await follow_the_feed(http, auth, 3, "feed")


# --- client A on the event stream -----------------------------------------------------------------


@dataclass
class Event:
    id: str | None
    event: str
    data: str


async def server_sent(response: httpx.Response) -> AsyncIterator[Event | str]:
    """The events of a text/event-stream response, and its comments (as their text)."""
    fields: dict[str, str] = {}
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:  # an event without data is not dispatched (SSE)
                yield Event(fields.get("id"), fields.get("event", "message"), "\n".join(data))
            fields, data = {}, []
        elif line.startswith(":"):
            yield line[1:].strip()
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value


class StreamFollower:
    """Client A on the event stream: a task that reads one connection into `local`."""

    def __init__(self, user: str, auth: Auth, local: dict[int, Task], last_id: int) -> None:
        self.user, self.auth, self.local, self.last_id = user, auth, local, last_id
        self.comments: list[str] = []
        self.events = 0
        self.response: httpx.Response | None = None
        self._progress = asyncio.Event()
        self._reading: asyncio.Task[None] | None = None

    def connect(self, http: httpx.AsyncClient, **resume: str) -> None:
        """Start reading a stream; `resume` is `last_event_id=` (the header) or `since=`."""
        headers = self.auth(self.user)
        if "last_event_id" in resume:
            headers["Last-Event-ID"] = resume["last_event_id"]
        params = {"since": resume["since"]} if "since" in resume else {}
        self._reading = asyncio.create_task(self._read(http, headers, params))

    async def _read(
        self, http: httpx.AsyncClient, headers: dict[str, str], params: dict[str, str]
    ) -> None:
        url = f"/api/{self.user}/tasks/events"
        async with http.stream("GET", url, headers=headers, params=params) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            self.response = response
            self._progress.set()
            async for item in server_sent(response):
                if isinstance(item, str):
                    self.comments.append(item)
                else:
                    self._apply(item)
                self._progress.set()

    def _apply(self, event: Event) -> None:
        assert event.id is not None, event
        seq = int(event.id)
        assert seq > self.last_id, (self.last_id, event)  # in order, none twice
        self.last_id = seq
        self.events += 1
        body = orjson.loads(event.data)
        if event.event == "changed":
            apply_change(self.local, body)
        else:
            assert event.event == "deleted", event
            assert set(body) == {"id"}, event
            self.local.pop(body["id"], None)

    async def until(self, condition: Callable[["StreamFollower"], bool], what: str) -> None:
        """Wait until `condition(self)` holds, for DEADLINE seconds at most."""
        assert self._reading is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while not condition(self):
            if self._reading.done():
                self._reading.result()  # its failure, if it failed
                pytest.fail(f"the stream ended before {what}")
            self._progress.clear()
            progress = asyncio.ensure_future(self._progress.wait())
            done, _ = await asyncio.wait(
                {progress, self._reading},
                timeout=deadline - loop.time(),
                return_when=asyncio.FIRST_COMPLETED,
            )
            progress.cancel()
            if not done:
                pytest.fail(f"no {what} within {DEADLINE} s (last event id {self.last_id})")

    async def until_event(self, token: str, where: str = "") -> None:
        """Wait until the event whose id is `token` (or a later one) has arrived."""
        await self.until(lambda f: f.last_id >= int(token), f"event {token}{where}")

    async def disconnect(self) -> None:
        assert self._reading is not None
        self._reading.cancel()
        with suppress(asyncio.CancelledError):
            await self._reading
        self.response = None


async def test_a_stream_follower_resumes_with_last_event_id_and_ends_with_the_list(
    live_server: LiveServer, auth: Auth
) -> None:
    rng = random.Random(4)
    user = new_user()
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=live_server.base_url, timeout=TIMEOUT)
        )
        stream_http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=live_server.base_url, timeout=STREAM_TIMEOUT)
        )
        writer = Writer(http, user, auth, rng)
        for _ in range(40):  # there is something to list first
            await writer.step()
        local, token = await fresh_list(http, auth, user)
        follower = StreamFollower(user, auth, local, int(token))
        follower.connect(stream_http, since=token)
        stack.push_async_callback(follower.disconnect)
        for _ in range(210):
            await writer.step()
        await follower.until(lambda f: f.events > 0, "event before the disconnection")
        await follower.disconnect()
        dropped_at = follower.last_id
        for _ in range(30):  # changes made while A is away: the resumed stream replays them
            await writer.step()
        follower.connect(stream_http, last_event_id=str(dropped_at))
        for _ in range(OPERATIONS - 280):
            await writer.step()
        expected, token = await fresh_list(http, auth, user)
        await follower.until_event(token)
        await follower.disconnect()
    assert follower.local == expected
    assert follower.last_id == int(token)
    assert min(writer.done[kind] for kind in WEIGHTS) > 0, writer.done


# --- concurrent writers ---------------------------------------------------------------------------


async def follow_concurrent_writers(
    clients: list[httpx.AsyncClient], follower_http: httpx.AsyncClient, auth: Auth, seed: int
) -> None:
    """Writers on connections of their own, all at once, on one user, while a feed follower
    pulls and a stream follower reads: both end with the list. Changes committed together are
    where a change sequence that did not follow commit order would lose one."""
    rng = random.Random(seed)
    user = new_user()
    writers = [
        Writer(http, user, auth, random.Random(seed * 100 + k), prefix=f"w{k}: ")
        for k, http in enumerate(clients)
    ]
    local, token = await fresh_list(follower_http, auth, user)
    stream = StreamFollower(user, auth, dict(local), int(token))
    feed = FeedFollower(follower_http, user, auth, dict(local), token)
    async with httpx.AsyncClient(base_url=follower_http.base_url, timeout=STREAM_TIMEOUT) as sse:
        stream.connect(sse, last_event_id=token)
        try:
            await stream.until(lambda f: f.response is not None, "the stream to open")
            writing = asyncio.gather(
                *(write(writer, OPERATIONS // len(writers)) for writer in writers)
            )
            deadline = asyncio.get_running_loop().time() + 120
            try:
                while not writing.done():  # pull while they write
                    assert asyncio.get_running_loop().time() < deadline, "writers did not finish"
                    await feed.pull(pages=rng.randint(1, 3), limit=rng.choice([7, 25, None]))
                await writing
            finally:
                writing.cancel()
            await feed.pull(pages=None, limit=7)
            expected, token = await fresh_list(follower_http, auth, user)
            await stream.until_event(token)
        finally:
            await stream.disconnect()
    assert feed.local == expected
    assert feed.token == token
    assert stream.local == expected
    assert {k: v for writer in writers for k, v in writer.tasks.items()} == expected


async def write(writer: Writer, operations: int) -> None:
    for _ in range(operations):
        await writer.step()


async def test_followers_keep_up_with_concurrent_writers(
    live_server: LiveServer, auth: Auth
) -> None:
    async with AsyncExitStack() as stack:
        clients = await connections(live_server.base_url, "nobody", auth, 5, stack)
        await follow_concurrent_writers(clients[:4], clients[4], auth, 5)


# --- across workers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_workers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """`taskapi serve --workers 2` on PostgreSQL, with heartbeats far apart: a stream wakes
    for the database's notifications or not at all (within any deadline here)."""
    if "postgresql" not in database_kinds():
        pytest.skip("needs PostgreSQL, which TEST_DATABASES does not select")
    database_url = str(request.getfixturevalue("postgresql_database_url"))
    folder = tmp_path_factory.mktemp("workers")
    with taskapi_serve(
        database_url, folder, workers=2, SSE_HEARTBEAT_SECONDS="300", RATE_LIMIT="0"
    ) as server:
        yield server


async def on_worker(
    server: Served, pid: int, user: str, auth: Auth, stack: AsyncExitStack
) -> httpx.AsyncClient:
    """A client whose (new) connection the kernel gave to worker `pid`: new connections are
    opened until one is (at most 50)."""
    for _ in range(50):
        http = httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT)
        response = await http.get(f"/api/{user}/tasks", params={"limit": 1}, headers=auth(user))
        assert response.status_code == 200, response.text
        if served_by(server.workers, server.port, response) == pid:
            stack.push_async_callback(http.aclose)
            return http
        await http.aclose()
    pytest.fail(f"50 new connections and none on worker {pid}")


async def test_followers_keep_up_with_concurrent_writers_on_two_workers(
    two_workers: Served, auth: Auth
) -> None:
    async with AsyncExitStack() as stack:
        clients = await connections(
            two_workers.base_url, "nobody", auth, 4, stack, spread=two_workers
        )
        follower = await stack.enter_async_context(
            httpx.AsyncClient(base_url=two_workers.base_url, timeout=TIMEOUT)
        )
        await follow_concurrent_writers(clients, follower, auth, 6)


async def test_changes_through_either_worker_reach_streams_on_both(
    two_workers: Served, auth: Auth
) -> None:
    user = new_user()
    async with AsyncExitStack() as stack:
        # One stream on each worker, from now (the user has nothing yet).
        followers = []
        for http in await connections(
            two_workers.base_url, user, auth, 2, stack, spread=two_workers
        ):
            http.timeout = STREAM_TIMEOUT
            follower = StreamFollower(user, auth, {}, 0)
            follower.connect(http)
            stack.push_async_callback(follower.disconnect)
            await follower.until(lambda f: "connected" in f.comments, "connected")
            assert follower.response is not None
            followers.append(
                (served_by(two_workers.workers, two_workers.port, follower.response), follower)
            )
        assert {pid for pid, _ in followers} == set(two_workers.workers)

        # 30 changes, each on a new connection, taken by the two workers in turn; each must
        # reach both streams before the next is made, so no change of a stream's own worker
        # wakes it for a change the other made.
        reader = await stack.enter_async_context(
            httpx.AsyncClient(base_url=two_workers.base_url, timeout=TIMEOUT)
        )
        made_by: Counter[int] = Counter()
        ids: list[int] = []
        for n in range(30):
            pid = two_workers.workers[n % 2]
            async with AsyncExitStack() as change:
                http = await on_worker(two_workers, pid, user, auth, change)
                headers = auth(user)
                url = f"/api/{user}/tasks"
                if n < 12:
                    response = await http.post(url, json={"title": f"task {n}"}, headers=headers)
                    ids.append(response.json()["id"])
                elif n < 20:
                    response = await http.patch(
                        f"{url}/{ids[n - 12]}", json={"title": f"edited {n}"}, headers=headers
                    )
                elif n < 26:
                    response = await http.patch(f"{url}/{ids[n - 18]}/complete", headers=headers)
                else:
                    response = await http.delete(f"{url}/{ids[n - 26]}", headers=headers)
                assert response.status_code in (200, 201), response.text
                made_by[served_by(two_workers.workers, two_workers.port, response)] += 1
            expected, token = await fresh_list(reader, auth, user)
            for stream_pid, follower in followers:
                where = f" (change {n}, made by worker {pid}) on worker {stream_pid}"
                await follower.until_event(token, where)
        assert made_by == dict.fromkeys(two_workers.workers, 15)
    assert len(expected) == 8
    for _, follower in followers:
        assert follower.local == expected
        assert follower.last_id == int(token)


# --- heartbeats and refused tokens ----------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_heartbeats(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("heartbeats")
    with taskapi_serve(database_url, folder, SSE_HEARTBEAT_SECONDS="0.2") as server:
        yield server


async def test_an_idle_stream_gets_heartbeats_and_still_delivers(
    quick_heartbeats: Served, auth: Auth
) -> None:
    user = new_user()
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=quick_heartbeats.base_url, timeout=STREAM_TIMEOUT)
        )
        follower = StreamFollower(user, auth, {}, 0)
        follower.connect(http)
        stack.push_async_callback(follower.disconnect)
        await follower.until(lambda f: f.comments.count("heartbeat") >= 2, "two heartbeats")
        assert follower.comments[0] == "connected"
        assert set(follower.comments[1:]) == {"heartbeat"}
        assert follower.events == 0
        response = await http.post(
            f"/api/{user}/tasks", json={"title": "after"}, headers=auth(user)
        )
        assert response.status_code == 201, response.text
        await follower.until(lambda f: f.events == 1, "the event after the heartbeats")
    assert list(follower.local.values()) == [response.json()]


async def _refused(
    server: Served,
    user: str,
    auth: Auth,
    *,
    last_event_id: str | None = None,
    since: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """What the stream answers to this token, read whole: an error never opens a stream."""
    headers = auth(user)
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    params = {} if since is None else {"since": since}
    url = f"/api/{user}/tasks/events"
    async with (
        httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT) as http,
        http.stream("GET", url, headers=headers, params=params) as response,
    ):
        assert response.headers["content-type"] == "application/json"
        body = orjson.loads(await response.aread())
    assert isinstance(body, dict)
    return response.status_code, body


async def test_a_bad_or_unknown_last_event_id_is_refused_before_the_stream(
    quick_heartbeats: Served, auth: Auth
) -> None:
    user = new_user()
    async with httpx.AsyncClient(base_url=quick_heartbeats.base_url, timeout=TIMEOUT) as http:
        for title in ("one", "two"):
            response = await http.post(
                f"/api/{user}/tasks", json={"title": title}, headers=auth(user)
            )
            assert response.status_code == 201
        _, token = await fresh_list(http, auth, user)
    assert token == "2"

    status, body = await _refused(quick_heartbeats, user, auth, last_event_id="abc")
    assert status == 422, body
    assert body["code"] == "VALIDATION_ERROR"
    assert body["field"] == "Last-Event-ID", body

    for beyond in ("3", "999999"):  # a token this user never reached: another user's, say
        status, body = await _refused(quick_heartbeats, user, auth, last_event_id=beyond)
        assert (status, body["code"]) == (410, "SYNC_TOKEN_EXPIRED"), body
        status, body = await _refused(quick_heartbeats, user, auth, since=beyond)
        assert (status, body["code"]) == (410, "SYNC_TOKEN_EXPIRED"), body


# --- the caps on open streams ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("capped")
    with taskapi_serve(
        database_url,
        folder,
        SSE_MAX_STREAMS_PER_USER="2",
        SSE_MAX_STREAMS="3",
        SSE_HEARTBEAT_SECONDS="0.2",
    ) as server:
        yield server


async def _open_or_refuse(server: Served, user: str, auth: Auth) -> httpx.Response:
    """A stream's answer when it is refused (read whole), or its head when it opens (closed
    at once, which gives its slot back)."""
    async with (
        httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT) as http,
        http.stream("GET", f"/api/{user}/tasks/events", headers=auth(user)) as response,
    ):
        if response.status_code != 200:
            await response.aread()
        return response


async def test_streams_beyond_the_caps_are_refused_and_a_closed_one_frees_its_slot(
    capped: Served, auth: Auth
) -> None:
    alice, bob = new_user(), new_user()
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=capped.base_url, timeout=STREAM_TIMEOUT)
        )
        followers = []
        for user in (alice, alice, bob):
            follower = StreamFollower(user, auth, {}, 0)
            follower.connect(http)
            stack.push_async_callback(follower.disconnect)
            await follower.until(lambda f: "connected" in f.comments, "connected")
            followers.append(follower)

        for user, setting, limit in (
            (alice, "SSE_MAX_STREAMS_PER_USER", 2),
            (bob, "SSE_MAX_STREAMS", 3),
        ):
            response = await _open_or_refuse(capped, user, auth)
            assert response.status_code == 429, (user, response.status_code)
            assert response.headers["Retry-After"] == "3"
            body = response.json()
            assert body["code"] == "RATE_LIMITED"
            assert f"{limit} event streams" in body["detail"]
            assert f"({setting})" in body["detail"], body

        # The client goes away: the server hears its connection close and frees the slot.
        await followers[0].disconnect()
        deadline = asyncio.get_running_loop().time() + DEADLINE
        while (await _open_or_refuse(capped, alice, auth)).status_code == 429:
            assert asyncio.get_running_loop().time() < deadline, "the slot was not given back"
            await asyncio.sleep(0.05)
        # The others were never disturbed.
        for follower in followers[1:]:
            await follower.until(more_heartbeats(follower), "a heartbeat")


def more_heartbeats(follower: StreamFollower) -> Callable[[StreamFollower], bool]:
    """A condition: more heartbeats than `follower` has had so far."""
    beats = follower.comments.count("heartbeat")
    return lambda f: f.comments.count("heartbeat") > beats
