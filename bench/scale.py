"""Scale benchmark: does a user's list stay as fast when the database holds everyone's tasks?

Usage:
    .venv/bin/python bench/scale.py [postgresql|sqlite|both]          (default: both)
    DATABASE_URL=postgresql://user@host/db .venv/bin/python bench/scale.py postgresql

For each database it builds two databases and measures, through the real app, the median and
p99 latency of seven requests (first page, page 50 by cursor, `q`, a tag, `overdue=true`,
`status=pending`, a create) for:
  1k alone   user "alice", 1,000 tasks, alone in her database;
  1k in 1M   the same alice (the same 1,000 tasks) among 1,000 users of 1,000 tasks each,
             their rows interleaved in time as real users would write them;
  10k in 1M  user "bob", 10,000 tasks, in that same large database (what a user's own size
             costs, the total count included).
It prints a table per database with the ratios to "1k alone"; the target on PostgreSQL is a
ratio <= 1.5 for "1k in 1M": other users' data never slows a user down.

PostgreSQL is a throwaway cluster (initdb, run as `postgres` when we are root, on a free
127.0.0.1 port, removed at exit), or with DATABASE_URL=postgresql://… the server it names:
the script creates (and drops at the end) the databases taskapi_scale_small and
taskapi_scale_large there, which needs CREATEDB. SQLite uses two files in a temporary folder.
Loading: COPY (asyncpg) or one executemany in a transaction (SQLite), secondary indexes built
after the load from their own definitions, then VACUUM ANALYZE / ANALYZE.

Requests go through the ASGI app in this process (httpx.ASGITransport), one at a time: every
layer of a request runs (auth, validation, SQL, rendering) but no HTTP server or socket, whose
cost is the same in every scenario and whose noise would only blur the ratios. Scenarios are
interleaved, batch by batch, so the machine's noise hits them alike.

Env: ROUNDS (5), REQUESTS per query, scenario and round (40), USERS (1000), TASKS (1000 per
user), BIG (10000), MAX_SECONDS for the measuring phase of each database (300).
"""

import asyncio
import gc
import os
import pwd
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import jwt
import orjson
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from backend import db
from backend.config import Settings
from backend.main import create_app
from backend.services.tables import fold, tag_keys
from backend.web.state import app_state

ROUNDS = int(os.environ.get("ROUNDS", "5"))
REQUESTS = int(os.environ.get("REQUESTS", "40"))
USERS = int(os.environ.get("USERS", "1000"))
TASKS = int(os.environ.get("TASKS", "1000"))
BIG = int(os.environ.get("BIG", "10000"))
MAX_SECONDS = float(os.environ.get("MAX_SECONDS", "300"))
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SECRET = "scale-benchmark-secret-" + os.urandom(16).hex()
ALICE, BOB = "alice", "bob"
PAGE = 50  # the page size of the first page and the filters: a frontend's page, not the 500
DEEP_PAGE, DEEP_LIMIT = 50, 20  # page 50 of 20: tasks 981-1000 of a 1,000-task list

# What the generated tasks hold, and what the filters look for in it.
SEARCH = "dentist"  # in about 1 task in 10 (title or description)
TAG = "work"  # on about 1 task in 5
# fmt: off
VERBS = ("Call", "Email", "Buy", "Fix", "Book", "Plan", "Review", "Pay", "Clean", "Write",
         "Réserver", "Prepare", "Cancel", "Renew", "Check", "Send", "Order", "Sort", "Pick up",
         "Update")
THINGS = ("the dentist", "groceries", "the car insurance", "Q3 report", "birthday present",
          "the plumber", "flights to Lisbon", "the electricity bill", "library books",
          "the garden shed", "passport photos", "team offsite", "tax return", "the café order",
          "school forms", "gym membership", "slides for Monday", "the bike", "Étienne's visa",
          "the landlord", "vet appointment", "invoice 2231", "the old laptop", "piano lesson",
          "Straße permit", "kitchen tap", "holiday photos", "conference talk", "new tyres",
          "running shoes", "the quarterly budget", "grandma's present", "recycling",
          "phone contract", "window cleaner", "the wedding RSVP", "bank statement", "Zoë's party",
          "the roof gutter", "meeting notes")
SENTENCES = ("Before the end of the week.", "Ask about the discount.", "Bring the receipt.",
             "See the email from Tuesday.", "Only if it is still open.", "Two copies, signed.",
             "Urgent according to Anna.", "Compare three offers first.", "Call back after 2.",
             "Découvrir le nouveau menu.", "Check the dentist's new address.",
             "Keep it under budget.", "Use the shared folder.", "Ask Jürgen for the key.")
TAG_NAMES = ("work", "home", "errands", "health", "finance", "family", "garden", "car", "school",
             "shopping", "travel", "reading", "Études", "café", "urgent", "someday", "calls",
             "email", "project-x", "q3", "music", "sport", "kids", "admin")
# fmt: on
RECURRENCES = (
    '{"frequency": "weekly", "interval": 1}',
    '{"frequency": "daily", "interval": 2}',
    '{"frequency": "monthly", "interval": 1}',
)
# The columns a loader fills, in the order of the tuples `task_row` makes (id is the table's).
COLUMNS = (
    "user_id",
    "title",
    "description",
    "completed",
    "created_at",
    "updated_at",
    "priority",
    "tags",
    "due_at",
    "remind_at",
    "recurrence",
    "completed_at",
    "title_fold",
    "description_fold",
    "tag_keys",
    "recurrence_anchor",
    "recurrence_offset_minutes",
    "recurrence_count",
    "next_occurrence_id",
)
NOW = datetime.now(UTC).replace(microsecond=0)
HISTORY = timedelta(days=730)  # tasks were created over the last two years


@dataclass(frozen=True)
class Pools:
    """Precomputed texts (with their folded copies): a row is a few random picks among them."""

    titles: list[tuple[str, str]]
    descriptions: list[tuple[str | None, str | None]]
    tags: list[tuple[str, str]]  # (tags as JSON, tag_keys)


def seeded(seed: int | str) -> random.Random:
    return random.Random(seed)


def make_pools() -> Pools:
    rng = seeded(7)
    titles = [(f"{v} {t}", fold(f"{v} {t}")) for v in VERBS for t in THINGS]
    descriptions: list[tuple[str | None, str | None]] = [(None, None)] * 500
    for _ in range(500):
        text = " ".join(rng.sample(SENTENCES, rng.randint(1, 3)))
        descriptions.append((text, fold(text)))
    tags = []
    weights = [6 if name == TAG else 1 for name in TAG_NAMES]
    for _ in range(2000):
        count = rng.choices((0, 1, 2, 3), (30, 40, 20, 10))[0]
        chosen: list[str] = []
        while len(chosen) < count:
            name = rng.choices(TAG_NAMES, weights)[0]
            if name not in chosen:
                chosen.append(name)
        tags.append((orjson.dumps(chosen).decode(), tag_keys(chosen)))
    return Pools(titles, descriptions, tags)


def task_row(rng: random.Random, pools: Pools, user: str, created: datetime) -> tuple[Any, ...]:
    """One task as the app would have stored it, internal columns included."""
    title, title_fold = rng.choice(pools.titles)
    description, description_fold = rng.choice(pools.descriptions)
    tags, keys = rng.choice(pools.tags)
    completed = rng.random() < 0.4
    completed_at = min(NOW, created + timedelta(hours=rng.randint(1, 2000))) if completed else None
    due = remind = recurrence = anchor = None
    if rng.random() < 0.55:
        due = NOW + timedelta(minutes=rng.randint(-90 * 1440, 180 * 1440))
        if rng.random() < 0.3:
            remind = due - timedelta(hours=rng.randint(1, 24))
        if rng.random() < 0.05:
            recurrence, anchor = rng.choice(RECURRENCES), due
    priority = rng.choices((1, 2, 3), (25, 55, 20))[0]
    return (
        user,
        title,
        description,
        completed,
        created,
        completed_at or created,
        priority,
        tags,
        due,
        remind,
        recurrence,
        completed_at,
        title_fold,
        description_fold,
        keys,
        anchor,
        0,
        0,
        None,
    )


def small_rows(pools: Pools) -> Iterator[tuple[Any, ...]]:
    """Alice's tasks, alone."""
    rng = seeded(ALICE)
    start, step = NOW - HISTORY, HISTORY / TASKS
    for i in range(TASKS):
        yield task_row(rng, pools, ALICE, start + i * step)


def large_rows(pools: Pools) -> Iterator[tuple[Any, ...]]:
    """USERS users of TASKS tasks (alice's the same as in `small_rows`) and bob's BIG tasks,
    interleaved: in each of TASKS rounds every user writes one task (bob BIG/TASKS), in a
    random order, so that a user's rows are spread over the whole table as in real life."""
    users = [ALICE, *(f"user-{n:04d}" for n in range(1, USERS))]
    rngs = {user: seeded(user) for user in [*users, BOB]}
    order = seeded(1)
    slots = users + [BOB] * (BIG // TASKS)
    start, step = NOW - HISTORY, HISTORY / (len(slots) * TASKS)
    n = 0
    for _ in range(TASKS):
        order.shuffle(slots)
        for user in slots:
            yield task_row(rngs[user], pools, user, start + n * step)
            n += 1


# --- databases -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL 15 cluster of our own on a free loopback port; its URL. Stopped (by its
    data folder, i.e. exactly the postmaster we started) and removed on exit."""
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="taskapi-scale-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    data, port = folder / "data", free_port()

    def pg(*args: str) -> None:
        subprocess.run([*as_postgres, *args], check=True, capture_output=True, timeout=120)

    options = (
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_wal_size=4GB "
        "-c maintenance_work_mem=256MB"
    )
    try:
        pg(
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        pg(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(folder / "log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            pg(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def settings_for(url: str) -> Settings:
    return Settings(
        database_url=url,
        better_auth_secret=SecretStr(SECRET),
        migrate_on_start=False,
        db_statement_timeout=60,
        _env_file=None,
    )


def asyncpg_dsn(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


async def load_postgresql(url: str, rows: Iterable[tuple[Any, ...]]) -> int:
    """COPY the rows in (the table's secondary indexes dropped meanwhile and built again after,
    from their own definitions), then VACUUM ANALYZE, as autovacuum would after such a load:
    the visibility map lets the count run as an index-only scan."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("SET maintenance_work_mem = '256MB'")
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'task' "
            "AND indexname <> 'pk_task'"
        )
        for index in indexes:
            await conn.execute(f'DROP INDEX "{index["indexname"]}"')
        counted = Counted(rows)
        await conn.copy_records_to_table("task", records=counted, columns=COLUMNS)
        for index in indexes:
            await conn.execute(index["indexdef"])
        await conn.execute("VACUUM ANALYZE task")
        for _ in range(3):
            # Right after the load, VACUUM has been seen to leave 7-62 % of the pages out of
            # the visibility map (the count then reads them); autovacuum would come back for
            # them, so do we.
            visible = await conn.fetchrow(
                "SELECT relpages, relallvisible FROM pg_class WHERE relname = 'task'"
            )
            if visible["relallvisible"] >= visible["relpages"]:
                break
            await conn.execute("VACUUM task")
        return counted.n
    finally:
        await conn.close()


def load_sqlite(path: Path, rows: Iterable[tuple[Any, ...]]) -> int:
    """The same for SQLite: multi-row INSERTs in one transaction, indexes built after, ANALYZE.
    Values as the app stores them: naive UTC text for datetimes, 0/1 for booleans."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'task' "
            "AND sql IS NOT NULL"
        ).fetchall()
        conn.execute("BEGIN")
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        counted = Counted(tuple(map(_sqlite_value, row)) for row in rows)
        names, marks = ", ".join(COLUMNS), ", ".join("?" * len(COLUMNS))
        conn.executemany(f"INSERT INTO task ({names}) VALUES ({marks})", counted)  # noqa: S608
        for _, sql in indexes:
            conn.execute(sql)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        return counted.n
    finally:
        conn.close()


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    if isinstance(value, bool):
        return int(value)
    return value


class Counted:
    def __init__(self, rows: Iterable[tuple[Any, ...]]) -> None:
        self.rows, self.n = iter(rows), 0

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for row in self.rows:
            self.n += 1
            yield row


# --- measuring -----------------------------------------------------------------------------------


@dataclass
class Scenario:
    label: str
    client: httpx.AsyncClient
    user: str
    headers: dict[str, str]
    urls: dict[str, str] = field(default_factory=dict)
    totals: dict[str, str] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"/api/{quote(self.user)}/tasks"


READS = {
    "first page": f"?limit={PAGE}",
    f"page {DEEP_PAGE} (cursor)": "",  # resolved by following Link headers
    f"q={SEARCH}": f"?q={SEARCH}&limit={PAGE}",
    f"tag={TAG}": f"?tag={TAG}&limit={PAGE}",
    "overdue=true": f"?overdue=true&limit={PAGE}",
    "status=pending": f"?status=pending&limit={PAGE}",  # a todo app's main view
}
CREATE = "create"
QUERIES = (*READS, CREATE)


def token(user: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 6 * 3600}, SECRET, algorithm="HS256")


@asynccontextmanager
async def app_client(url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings_for(url))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            yield client
    finally:
        await app_state(app).aclose()


async def prepare(scenario: Scenario) -> None:
    """Resolve page 50's URL by following the Link headers, and note each query's total."""
    for name, query in READS.items():
        scenario.urls[name] = scenario.base + query
    url: str | None = f"{scenario.base}?limit={DEEP_LIMIT}"
    for _ in range(DEEP_PAGE - 1):
        assert url is not None
        response = await scenario.client.get(url, headers=scenario.headers)
        response.raise_for_status()
        url = response.links.get("next", {}).get("url")
    if url is None:
        raise SystemExit(f"{scenario.label}: the list has fewer than {DEEP_PAGE} pages")
    scenario.urls[f"page {DEEP_PAGE} (cursor)"] = url
    for name, path in scenario.urls.items():
        response = await scenario.client.get(path, headers=scenario.headers)
        response.raise_for_status()
        scenario.totals[name] = response.headers["x-total-count"]
        for _ in range(5):  # warm up: caches, statement preparation
            await scenario.client.get(path, headers=scenario.headers)


async def timed(scenario: Scenario, query: str, count: int) -> None:
    samples = scenario.samples.setdefault(query, [])
    client, headers = scenario.client, scenario.headers
    body = {
        "title": "Benchmark: call the dentist",
        "priority": "high",
        "tags": ["work", "Bench"],
        "due_at": (NOW + timedelta(days=3)).isoformat(),
    }
    gc.collect()
    for _ in range(count):
        start = time.perf_counter()
        if query == CREATE:
            response = await client.post(scenario.base, json=body, headers=headers)
        else:
            response = await client.get(scenario.urls[query], headers=headers)
        elapsed = time.perf_counter() - start
        if response.status_code >= 300:
            raise SystemExit(f"{scenario.label} {query}: {response.status_code} {response.text}")
        samples.append(elapsed * 1000)


async def measure(scenarios: list[Scenario]) -> int:
    """Reads first (interleaved batch by batch), then creates, so that the tasks created never
    change what the reads see. Returns the rounds run (fewer if MAX_SECONDS ran out)."""
    deadline = time.monotonic() + MAX_SECONDS
    done = 0
    for phase in (tuple(READS), (CREATE,)):
        for round_ in range(ROUNDS):
            if time.monotonic() > deadline:
                break
            for query in phase:
                for scenario in scenarios:
                    await timed(scenario, query, REQUESTS)
            done = max(done, round_ + 1)
    return done


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def report(title: str, scenarios: list[Scenario]) -> None:
    base, *others = scenarios
    print(
        f"\n### {title}: median / p99 latency in ms, and ratios of medians (p99s) to '{base.label}'"
    )
    head = f"| query | {base.label} |"
    rule = "|---|---|"
    for other in others:
        head += f" {other.label} | ratio |"
        rule += "---|---|"
    print(head)
    print(rule)
    for query in QUERIES:
        reference = base.samples.get(query)
        if not reference:
            continue
        m0, p0 = statistics.median(reference), percentile(reference, 99)
        line = f"| {query} | {m0:.2f} / {p0:.2f} |"
        for other in others:
            samples = other.samples[query]
            m, p = statistics.median(samples), percentile(samples, 99)
            line += f" {m:.2f} / {p:.2f} | **{m / m0:.2f}** ({p / p0:.2f}) |"
        print(line)
    n = len(base.samples[QUERIES[0]])
    totals = "; ".join(
        f"{s.label}: " + ", ".join(f"{q} {s.totals[q]}" for q in READS if q in s.totals)
        for s in scenarios
    )
    print(f"\n{n} requests per cell. X-Total-Count — {totals}")


async def run_database(
    kind: str, small_url: str, large_url: str, load: Callable[[str, str], Any]
) -> None:
    for url in (small_url, large_url):
        await db.migrate(settings_for(url))
    for name, url in (("small", small_url), ("large", large_url)):
        started = time.monotonic()
        rows = await load(name, url)
        print(
            f"# {kind}: loaded {rows:,} tasks into the {name} database in "
            f"{time.monotonic() - started:.1f} s",
            flush=True,
        )
    async with AsyncExitStack() as stack:
        small = await stack.enter_async_context(app_client(small_url))
        large = await stack.enter_async_context(app_client(large_url))
        scenarios = [
            Scenario(f"{size(TASKS)} alone", small, ALICE, auth(ALICE)),
            Scenario(f"{size(TASKS)} in {size(USERS * TASKS)}", large, ALICE, auth(ALICE)),
            Scenario(f"{size(BIG)} in {size(USERS * TASKS)}", large, BOB, auth(BOB)),
        ]
        for scenario in scenarios:
            await prepare(scenario)
        if scenarios[0].totals != scenarios[1].totals:
            print(
                f"# WARNING: alice's totals differ: {scenarios[0].totals} != {scenarios[1].totals}"
            )
        started = time.monotonic()
        rounds = await measure(scenarios)
        print(f"# {kind}: measured {rounds} rounds in {time.monotonic() - started:.0f} s")
        report(kind, scenarios)


def size(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


def auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def rows_for(name: str) -> Iterator[tuple[Any, ...]]:
    pools = make_pools()
    return small_rows(pools) if name == "small" else large_rows(pools)


async def run_postgresql() -> None:
    given = os.environ.get("DATABASE_URL")
    with postgres_server(given) as server:
        names = ("taskapi_scale_small", "taskapi_scale_large")
        admin = await asyncpg.connect(asyncpg_dsn(server))
        try:
            for name in names:
                await admin.execute(f"DROP DATABASE IF EXISTS {name}")
                await admin.execute(f"CREATE DATABASE {name}")
            version = await admin.fetchval("SHOW server_version")
            buffers = await admin.fetchval("SHOW shared_buffers")
        finally:
            await admin.close()
        small_url, large_url = (
            make_url(server).set(database=n).render_as_string(False) for n in names
        )
        try:
            await run_database(
                f"PostgreSQL {version} (shared_buffers {buffers})",
                small_url,
                large_url,
                lambda name, url: load_postgresql(url, rows_for(name)),
            )
        finally:
            admin = await asyncpg.connect(asyncpg_dsn(server))
            try:
                for name in names:
                    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            finally:
                await admin.close()


@contextmanager
def postgres_server(given: str | None) -> Iterator[str]:
    if given:
        yield given
    else:
        with throwaway_postgres() as url:
            yield url


async def run_sqlite() -> None:
    folder = Path(tempfile.mkdtemp(prefix="taskapi-scale-sqlite-"))
    try:
        paths = {"small": folder / "small.db", "large": folder / "large.db"}

        async def load(name: str, url: str) -> int:
            return await asyncio.to_thread(load_sqlite, paths[name], rows_for(name))

        await run_database(
            f"SQLite {sqlite3.sqlite_version}",
            f"sqlite:///{paths['small']}",
            f"sqlite:///{paths['large']}",
            load,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "both"
    if which not in ("postgresql", "sqlite", "both"):
        raise SystemExit(__doc__)
    if which in ("postgresql", "both"):
        asyncio.run(run_postgresql())
    if which in ("sqlite", "both"):
        asyncio.run(run_sqlite())


if __name__ == "__main__":
    main()
