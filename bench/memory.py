"""What one process of the service keeps in memory under traffic an ordinary account can send.

Run by bench/memory.sh against a `taskapi serve` it started (one process): the process's resident
memory (VmRSS, from /proc) after a warm-up, after 20,000 mixed requests (creates, lists with
varied filters, reads, edits, toggles, deletes, the change feed), and after 5,000 list requests of
distinct shapes (sort x status x tags x optional filters: each shape a statement of its own).
Memory that grows with the shapes requests send, and is never given back, shows in the last row.

    python bench/memory.py BASE_URL PID SECRET [--mixed 20000] [--distinct 5000]
"""

import argparse
import asyncio
import itertools
import random
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import jwt

CONCURRENCY = 16
SORTS = [
    f"{sign}{key}"
    for key in ("created_at", "updated_at", "due_at", "priority", "title")
    for sign in ("", "-")
]
FILTERS = (
    ("q", "milk"),
    ("due_before", "2030-01-01T00:00:00Z"),
    ("due_after", "2001-01-01T00:00:00Z"),
    ("overdue", "true"),
    ("remind_before", "2030-01-01T00:00:00Z"),
    ("priority", "high,low"),
)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def distinct_queries() -> Iterator[str]:
    """List queries of distinct statement shapes, as many as asked for (10 x 3 x 21 x 64)."""
    for sort, status, tags, chosen in itertools.product(
        SORTS,
        ("all", "pending", "completed"),
        range(21),
        itertools.product((False, True), repeat=len(FILTERS)),
    ):
        query = [("sort", sort), ("status", status), ("limit", "5")]
        query += [("tag", f"t{n}") for n in range(tags)]
        query += [pair for pair, on in zip(FILTERS, chosen, strict=True) if on]
        yield urlencode(query)


async def run(base: str, pid: int, secret: str, mixed: int, distinct: int) -> None:
    now = int(time.time())
    token = jwt.encode({"sub": "memory", "iat": now, "exp": now + 7200}, secret, "HS256")
    headers = {"Authorization": f"Bearer {token}"}
    tasks = f"{base}/api/memory/tasks"
    rows: list[tuple[str, int, float, float]] = []
    random.seed(7)

    # A connection the server closed while it idled (its keep-alive) is opened again.
    transport = httpx.AsyncHTTPTransport(retries=3)
    async with httpx.AsyncClient(headers=headers, timeout=60, transport=transport) as http:
        ids: list[int] = []

        async def create(n: int) -> None:
            body = {
                "title": f"task {n} milk",
                "priority": random.choice(["low", "medium", "high"]),
                "tags": [f"t{k}" for k in range(n % 4)],
                "due_at": "2026-12-01T09:00:00Z",
            }
            response = await http.post(tasks, json=body)
            response.raise_for_status()
            ids.append(response.json()["id"])

        async def one(n: int) -> None:
            kind = n % 8
            if kind == 0 or not ids:
                await create(n)
            elif kind in (1, 2):
                await http.get(tasks, params={"sort": random.choice(SORTS), "limit": "20"})
            elif kind == 3:
                await http.get(f"{tasks}/{random.choice(ids)}")
            elif kind == 4:
                await http.patch(f"{tasks}/{random.choice(ids)}", json={"description": f"d{n}"})
            elif kind == 5:
                await http.patch(f"{tasks}/{random.choice(ids)}/complete")
            elif kind == 6 and len(ids) > 50:
                await http.delete(f"{tasks}/{ids.pop(random.randrange(len(ids)))}")
            else:
                await http.get(f"{tasks}/changes", params={"limit": "20"})

        async def drive(count: int) -> None:
            numbers = iter(range(count))

            async def worker() -> None:
                for n in numbers:
                    await one(n)

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

        await drive(200)
        rows.append(("after a warm-up of 200 mixed requests", 200, rss_mib(pid), 0.0))
        started = time.monotonic()
        await drive(mixed)
        rows.append(
            (f"after {mixed:,} mixed requests", mixed, rss_mib(pid), time.monotonic() - started)
        )

        queries = itertools.islice(distinct_queries(), distinct)

        async def lister() -> None:
            for query in queries:
                for _ in range(10):  # a busy machine may queue a request past DB_POOL_TIMEOUT
                    response = await http.get(f"{tasks}?{query}")
                    if response.status_code != 503:
                        break
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                response.raise_for_status()

        started = time.monotonic()
        await asyncio.gather(*(lister() for _ in range(CONCURRENCY)))
        rows.append(
            (
                f"after {distinct:,} list queries of distinct shapes",
                distinct,
                rss_mib(pid),
                time.monotonic() - started,
            )
        )

    print("| when | requests | RSS (MiB) | seconds |")
    print("|---|---|---|---|")
    for label, count, rss, seconds in rows:
        print(f"| {label} | {count:,} | {rss:.0f} | {seconds:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("base")
    parser.add_argument("pid", type=int)
    parser.add_argument("secret")
    parser.add_argument("--mixed", type=int, default=20_000)
    parser.add_argument("--distinct", type=int, default=5_000)
    args = parser.parse_args()
    asyncio.run(run(args.base, args.pid, args.secret, args.mixed, args.distinct))


if __name__ == "__main__":
    main()
