"""Seed bench/table.sh's large data set: the service's database directly, the limit in memory.

    python bench/seed.py DATABASE_URL        the shared harness's SEED_CMD hook for the service
    uvicorn --factory seed:limit_app         the limit server, seeded before it listens

Both take the sizes the harness gives a seed command (`benchtool.py prepare --seed-cmd`):
BENCH_USER gets BENCH_N tasks, and BENCH_OTHERS more go to BENCH_OTHER_USERS other users, named
as the harness's own seeding over HTTP names them (`{user}-other{i}`, in turn), the user's tasks
spread evenly among theirs, so that a user's rows lie all over the table.

The service's rows are bench/scale.py's (every column filled as the service fills it, created
over two years in that order), loaded by its loaders: COPY on PostgreSQL, one transaction on
SQLite, the secondary indexes built after the load, then VACUUM ANALYZE / ANALYZE. The table's
triggers are off meanwhile, and what they keep is set after (see SYNC_STATE).

The limit (shared/bench's limit_app) keeps its tasks in a dict of dicts, so the only way to give
it a million tasks from outside is a million POSTs. `limit_app` fills that dict in its own
process instead, with tasks shaped as its POSTs make them (the harness's titles and description),
then hands uvicorn the unchanged app: nothing is added to its request path. This module imports
only the standard library at the top, so that the limit's memory holds nothing of the service's.
"""

import asyncio
import importlib
import os
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

HISTORY = timedelta(days=730)  # as scale.py: tasks created over the last two years
# What the task table's triggers keep (migrations 0003 and 0004), for rows loaded without them:
# each owner's task count, and their change sequence. The loaded rows keep change_seq 0, as if
# they predated the change feed, which gives them all to a client that starts from nothing.
SYNC_STATE = (
    "INSERT INTO sync_state (user_id, seq, purged_seq, task_count) "
    "SELECT user_id, 0, 0, count(*) FROM task GROUP BY user_id"
)


@dataclass(frozen=True)
class Sizes:
    user: str
    n: int
    others: int
    other_users: int

    @classmethod
    def from_env(cls) -> "Sizes":
        return cls(
            os.environ["BENCH_USER"],
            int(os.environ["BENCH_N"]),
            int(os.environ["BENCH_OTHERS"]),
            max(1, int(os.environ.get("BENCH_OTHER_USERS", "100"))),
        )

    def jobs(self) -> Iterator[tuple[str, str]]:
        """(owner, title) of every task, in the order they are loaded."""
        total, mine, theirs = self.n + self.others, 0, 0
        for k in range(total):
            if (k + 1) * self.n // total > mine:
                yield self.user, f"task {mine}"
                mine += 1
            else:
                yield f"{self.user}-other{theirs % self.other_users}", f"other task {theirs}"
                theirs += 1


def service_rows(sizes: Sizes) -> Iterator[tuple[Any, ...]]:
    from scale import NOW, make_pools, seeded, task_row  # the service's code

    pools, rng = make_pools(), seeded(2)
    start, step = NOW - HISTORY, HISTORY / max(1, sizes.n + sizes.others)
    for k, (owner, _) in enumerate(sizes.jobs()):
        yield task_row(rng, pools, owner, start + k * step)


async def seed_postgresql(url: str, rows: Iterable[tuple[Any, ...]]) -> int:
    import asyncpg
    from scale import asyncpg_dsn, load_postgresql

    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        # Row by row, the triggers would update each owner's sync_state row thousands of times
        # in the load's one transaction, each update stepping over the versions the earlier ones
        # left: 100,000 rows took 35 s instead of 5, and the time grows with the square.
        await conn.execute("ALTER TABLE task DISABLE TRIGGER USER")
        try:
            count: int = await load_postgresql(url, rows)
        finally:
            await conn.execute("ALTER TABLE task ENABLE TRIGGER USER")
        await conn.execute(SYNC_STATE)
        await conn.execute("ANALYZE sync_state")
        return count
    finally:
        await conn.close()


def seed_sqlite(path: Path, rows: Iterable[tuple[Any, ...]]) -> int:
    from scale import load_sqlite

    # SQLite cannot switch triggers off: they are dropped and made again from their own SQL, so
    # that both databases hold the same rows.
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        triggers = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'task'"
        ).fetchall()
        for name, _ in triggers:
            conn.execute(f'DROP TRIGGER "{name}"')
        try:
            count = load_sqlite(path, rows)
        finally:
            for _, sql in triggers:
                conn.execute(sql)
        conn.execute(SYNC_STATE)
        conn.execute("ANALYZE sync_state")
        return count
    finally:
        conn.close()


def seed_service(url: str) -> None:
    """The database must be migrated and hold no task yet; the service may be running, idle."""
    started = time.monotonic()
    rows = service_rows(Sizes.from_env())
    scheme, _, rest = url.partition(":///")
    if scheme.startswith("sqlite"):
        count = seed_sqlite(Path(rest), rows)
    else:
        count = asyncio.run(seed_postgresql(url, rows))
    elapsed = time.monotonic() - started
    print(
        f"# seeded {count:,} tasks into the service's database in {elapsed:.1f} s", file=sys.stderr
    )


def limit_app() -> Any:
    """shared/bench's limit app (importable from the working folder), its dict filled."""
    limit = importlib.import_module("limit_app")
    started = time.monotonic()
    for owner, title in Sizes.from_env().jobs():
        now = limit._now()
        task = {
            "id": next(limit._next_id),
            "user_id": owner,
            "title": title,
            "description": "seeded by benchtool",
            "completed": False,
            "created_at": now,
            "updated_at": now,
        }
        limit._tasks.setdefault(owner, {})[task["id"]] = task
    count = sum(map(len, limit._tasks.values()))
    elapsed = time.monotonic() - started
    print(f"# seeded {count:,} tasks into the limit's memory in {elapsed:.1f} s", file=sys.stderr)
    return limit.app


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    seed_service(sys.argv[1])
