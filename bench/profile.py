"""Where a request's time goes: a summary of py-spy's raw samples of the service under load.

    .venv/bin/python bench/profile.py FILE.raw

FILE.raw is `py-spy record --format raw` of `taskapi serve` (bench/profile.sh makes it). Every
sample is charged to the frame that was running (C code, such as orjson or the driver's
protocol, to the Python frame that called it), and frames are grouped by what they belong to.
Prints the groups' shares of all samples, then the frames that ran the most.
"""

import re
import sys
from collections import Counter

# The first group whose pattern the running frame's file matches takes the sample.
GROUPS = [
    ("event loop waiting (idle)", r"^Runner\.run \(asyncio/runners\.py"),
    ("asyncio, anyio, contextlib (awaiting, context managers)", r"\((asyncio/|anyio/|contextlib)"),
    ("uvicorn + httptools (HTTP parsing and writing)", r"\(uvicorn/|\(backend/server\.py"),
    ("starlette (middleware, routing, responses)", r"\(starlette/"),
    ("fastapi (routing, dependencies, validation)", r"\(fastapi/"),
    ("pydantic", r"\(pydantic"),
    ("PyJWT, cryptography (tokens)", r"\((jwt|cryptography)/"),
    ("SQLAlchemy (statements, results, async adaption)", r"\((sqlalchemy|greenlet)/"),
    ("asyncpg (PostgreSQL driver)", r"\(asyncpg/"),
    ("aiosqlite, sqlite3 (SQLite driver)", r"\((aiosqlite|sqlite3)/"),
    ("prometheus_client, logging (metrics, access line)", r"\((prometheus_client|logging)/"),
    ("limits (rate limit)", r"\(limits/"),
    ("backend: routes (rendering JSON included)", r"\(backend/routes/"),
    ("backend: services (row handling included)", r"\(backend/services/"),
    ("backend: middleware, errors, main", r"\(backend/"),
    ("uuid (request ids)", r"\(uuid\.py"),
    ("outside Python frames (native, GC)", r"^process \d+"),
]


def main(path: str) -> None:
    with open(path, encoding="utf-8") as samples_file:
        lines = samples_file.read().splitlines()
    total = 0
    groups: Counter[str] = Counter()
    frames: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        total += samples
        running = re.sub(r":\d+\)$", ")", stack.split(";")[-1])
        frames[running] += samples
        group = next((name for name, pattern in GROUPS if re.search(pattern, running)), "other")
        groups[group] += samples
    print(f"{total} samples of one process")
    print("share | running in")
    for name, samples in groups.most_common():
        print(f"{100 * samples / total:5.1f}% | {name}")
    print("\nshare | frame")
    for frame, samples in frames.most_common(20):
        print(f"{100 * samples / total:5.1f}% | {frame[:110]}")


if __name__ == "__main__":
    main(sys.argv[1])
