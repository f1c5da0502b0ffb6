"""GET and DELETE /api/{user_id}/tasks through the real app, on both databases: each filter alone
and combined, each sort in both directions with ties and nulls, keyset paging by the `Link`
header (also while tasks come and go), cursor misuse, and clearing tasks.

Expected orders are computed by `ordered`, the contract's order written out in Python, or
spelled out by hand. Timestamps are pinned in the database, never made by waiting."""

import base64
import json
import random
import re
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import orjson
import pytest
from sqlalchemy import delete, insert, update
from sqlalchemy.ext.asyncio import AsyncEngine

from backend import db
from backend.config import Settings
from backend.models.task import PRIORITIES, TIME_MAX, TIME_MIN
from backend.services.tables import PUBLIC_COLUMNS, fold, tag_keys, task_table
from tests.helpers import Auth, Task, assert_validation, create, ok

Predicate = Callable[[Task], bool]

BASE = datetime(2026, 1, 1, tzinfo=UTC)
PAST = "2001-01-01T00:00:00Z"  # far from the clock either way: no test races it
FUTURE = "2999-01-01T00:00:00Z"
LINK = re.compile(r'<(/api/[^<>\s]+)>; rel="next"')
SORT_KEYS = ("created_at", "updated_at", "due_at", "priority", "title")
ALL_SORTS = [f"{sign}{name}" for name in SORT_KEYS for sign in ("", "-")]
MAX_PAGES = 200  # every walk ends well before this


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """A direct, transactional engine on the test database, for rows the API cannot make
    quickly (hundreds of tasks, pinned timestamps)."""
    engine = db.make_engine(settings, for_requests=False)
    try:
        yield engine
    finally:
        await engine.dispose()


def row(n: int, *, user: str = "alice", **fields: Any) -> dict[str, Any]:
    """Every column of a task row, the internal ones derived as the service derives them."""
    values: dict[str, Any] = {
        "user_id": user,
        "title": f"task {n}",
        "description": None,
        "completed": False,
        "created_at": BASE + timedelta(seconds=n),
        "updated_at": BASE + timedelta(seconds=n),
        "priority": "medium",
        "tags": [],
        "due_at": None,
        "remind_at": None,
        **fields,
    }
    values["completed_at"] = values["updated_at"] if values["completed"] else None
    values["title_fold"] = fold(values["title"])
    description = values["description"]
    values["description_fold"] = None if description is None else fold(description)
    values["tag_keys"] = tag_keys(values["tags"])
    return values


WORDS = ("alpha", "ALPHA", "Beta", "beta")
TAG_SETS: tuple[list[str], ...] = (["work"], ["Work", "home"], [], ["home"], ["workout"])


def varied(n: int, *, user: str = "alice") -> dict[str, Any]:
    """Task n of a large list: many ties on every sort key (titles equal but for case, shared
    timestamps, due dates and priorities), a fifth without a due date, some completed."""
    return row(
        n,
        user=user,
        title=f"{WORDS[n % 4]} {n % 7}",
        description="notes on alpha" if n % 10 == 3 else None,
        completed=n % 6 == 1,
        priority=PRIORITIES[n % len(PRIORITIES)],
        tags=TAG_SETS[(n // 2) % 5],
        created_at=BASE + timedelta(minutes=n // 3),
        updated_at=BASE + timedelta(minutes=(n * 7) % 50),
        due_at=None if n % 5 == 0 else BASE + timedelta(days=n % 11),
    )


async def insert_rows(
    engine: AsyncEngine, rows: list[dict[str, Any]], *, deleting: int | None = None
) -> list[Task]:
    """Insert the rows in one statement (and delete the task `deleting`, in the same
    transaction); the tasks come back as the database holds them."""
    statement = insert(task_table).returning(*PUBLIC_COLUMNS, sort_by_parameter_order=True)
    async with engine.begin() as conn:
        if deleting is not None:
            await conn.execute(delete(task_table).where(task_table.c.id == deleting))
        if not rows:
            return []
        return [dict(task) for task in (await conn.execute(statement, rows)).mappings()]


async def pin(engine: AsyncEngine, task_id: int, **values: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(update(task_table).where(task_table.c.id == task_id).values(values))


def as_json(tasks: list[Task]) -> list[Task]:
    """Tasks read from the database, as the API renders them."""
    rendered: list[Task] = orjson.loads(orjson.dumps(tasks, option=orjson.OPT_UTC_Z))
    return rendered


def _time(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def ordered(tasks: Iterable[Task], sort: str) -> list[Task]:
    """The contract's order: by the key, ties by id in the same direction; titles compared
    case-folded; priority low → urgent; tasks without a due date last in both directions."""
    descending = sort.startswith("-")
    name = sort.removeprefix("-")

    def key(task: Task) -> tuple[Any, int]:
        if name == "title":
            return fold(task["title"]), task["id"]
        if name == "priority":
            return PRIORITIES.index(task["priority"]), task["id"]
        return _time(task[name]), task["id"]

    tasks = list(tasks)
    if name == "due_at":
        dated = [task for task in tasks if task["due_at"] is not None]
        undated = [task for task in tasks if task["due_at"] is None]
        return sorted(dated, key=key, reverse=descending) + sorted(
            undated, key=lambda task: task["id"], reverse=descending
        )
    return sorted(tasks, key=key, reverse=descending)


def ids(tasks: Iterable[Task]) -> list[int]:
    return [task["id"] for task in tasks]


def titles(tasks: Iterable[Task]) -> list[str]:
    return [task["title"] for task in tasks]


def tasks_url(params: dict[str, str] | list[tuple[str, str]], user: str = "alice") -> str:
    return f"/api/{user}/tasks?{urlencode(params)}"


@dataclass
class Page:
    tasks: list[Task]
    total: int
    next: str | None  # the URL of the Link header


async def get_page(client: httpx.AsyncClient, auth: Auth, url: str, user: str = "alice") -> Page:
    response = await client.get(url, headers=auth(user))
    tasks: list[Task] = ok(response)
    link = response.headers.get("link")
    match = None if link is None else LINK.fullmatch(link)
    assert link is None or match is not None, link
    return Page(tasks, int(response.headers["x-total-count"]), None if match is None else match[1])


async def walk(client: httpx.AsyncClient, auth: Auth, url: str, user: str = "alice") -> list[Page]:
    """Follow the Link headers from `url` to the last page."""
    pages: list[Page] = []
    next_url: str | None = url
    for _ in range(MAX_PAGES):
        if next_url is None:
            return pages
        page = await get_page(client, auth, next_url, user)
        pages.append(page)
        if page.next is not None:
            # The next page's URL is this one's query, with the cursor replaced.
            sent = [(k, v) for k, v in parse_qsl(urlsplit(next_url).query) if k != "cursor"]
            assert parse_qsl(urlsplit(page.next).query)[:-1] == sent
            assert urlsplit(page.next).path == urlsplit(url).path
        next_url = page.next
    raise AssertionError(f"more than {MAX_PAGES} pages")


def chunks(tasks: list[Task], size: int) -> list[list[Task]]:
    return [tasks[start : start + size] for start in range(0, len(tasks), size)]


async def listed(
    client: httpx.AsyncClient,
    auth: Auth,
    params: dict[str, str] | list[tuple[str, str]],
    user: str = "alice",
) -> list[Task]:
    """The whole list for these parameters (one page), after checking its count."""
    page = await get_page(client, auth, tasks_url(params, user), user)
    assert page.next is None
    assert page.total == len(page.tasks)
    return page.tasks


def newest_first(tasks: list[Task], *wanted: str) -> list[str]:
    """The titles `wanted`, in the default order of the tasks that carry them."""
    return titles(ordered((task for task in tasks if task["title"] in wanted), "-created_at"))


# --- filters ---------------------------------------------------------------------------------

MILK = "Buy milk"
REPORT = "Write REPORT"
CALL = "Call the Straße office"
DEAL = "100% done_deal"
CAFE = "Café visit"
RENT = "Pay rent"
FILTER_TASKS: list[dict[str, Any]] = [
    {
        "title": MILK,
        "description": "2 litres",
        "priority": "low",
        "tags": ["Shopping", "Éte"],
        "due_at": "2900-03-01T10:00:00+02:00",
        "remind_at": "2900-03-01T09:00:00+02:00",
    },
    {
        "title": REPORT,
        "description": "Quarterly numbers",
        "priority": "high",
        "tags": ["work"],
        "due_at": PAST,
        "remind_at": PAST,
        "completed": True,
    },
    {
        "title": CALL,
        "priority": "high",
        "tags": ["Work", "phone"],
        "due_at": FUTURE,
        "remind_at": "2026-06-01T00:00:00Z",
    },
    {"title": DEAL, "description": "saved in C:\\temp", "tags": ["workout", "50%_off"]},
    {"title": CAFE, "description": "try the ÉCLAIR", "due_at": PAST},
    # Due at the same instant as the milk, written in another offset.
    {
        "title": RENT,
        "priority": "low",
        "tags": ["home"],
        "due_at": "2900-03-01T08:00:00Z",
        "completed": True,
    },
]


@pytest.fixture
async def filter_tasks(client: httpx.AsyncClient, auth: Auth) -> list[Task]:
    tasks = [await create(client, auth, body) for body in FILTER_TASKS]
    await create(client, auth, {"title": "Buy milk too", "tags": ["work"]}, user="bob")
    return tasks


async def assert_filters(
    client: httpx.AsyncClient,
    auth: Auth,
    tasks: list[Task],
    cases: list[tuple[dict[str, str] | list[tuple[str, str]], list[str]]],
) -> None:
    """Each query lists exactly the tasks with these titles, in the default order, with
    X-Total-Count saying as many."""
    for params, wanted in cases:
        got = titles(await listed(client, auth, params))
        assert got == newest_first(tasks, *wanted), params


async def test_filter_status(
    client: httpx.AsyncClient, auth: Auth, filter_tasks: list[Task]
) -> None:
    everything = [MILK, REPORT, CALL, DEAL, CAFE, RENT]
    await assert_filters(
        client,
        auth,
        filter_tasks,
        [
            ({}, everything),
            ({"status": "all"}, everything),
            ({"status": "pending"}, [MILK, CALL, DEAL, CAFE]),
            ({"status": "completed"}, [REPORT, RENT]),
        ],
    )
    # The body is the tasks exactly as they were created.
    assert await listed(client, auth, {"status": "completed"}) == [
        filter_tasks[5],
        filter_tasks[1],
    ]


async def test_filter_priority(
    client: httpx.AsyncClient, auth: Auth, filter_tasks: list[Task]
) -> None:
    await assert_filters(
        client,
        auth,
        filter_tasks,
        [
            ({"priority": "low"}, [MILK, RENT]),
            ({"priority": "medium"}, [DEAL, CAFE]),
            ({"priority": "high"}, [REPORT, CALL]),
            ({"priority": "high,low"}, [MILK, REPORT, CALL, RENT]),
            ({"priority": "low, high"}, [MILK, REPORT, CALL, RENT]),
            ([("priority", "high"), ("priority", "medium")], [REPORT, CALL, DEAL, CAFE]),
            ({"priority": "low,medium,high"}, [MILK, REPORT, CALL, DEAL, CAFE, RENT]),
            # Any letter case, as frontends send it (LOW/MEDIUM/HIGH/URGENT options).
            ({"priority": "HIGH,Low"}, [MILK, REPORT, CALL, RENT]),
            ([("priority", "URGENT"), ("priority", "medium")], [DEAL, CAFE]),
            ({"priority": "urgent"}, []),
        ],
    )


async def test_filter_tags_all_given_case_insensitive(
    client: httpx.AsyncClient, auth: Auth, filter_tasks: list[Task]
) -> None:
    await assert_filters(
        client,
        auth,
        filter_tasks,
        [
            # "work" is not "workout": a tag matches whole.
            ({"tag": "work"}, [REPORT, CALL]),
            ({"tag": "WORK"}, [REPORT, CALL]),
            ({"tag": "  Work "}, [REPORT, CALL]),
            ([("tag", "work"), ("tag", "PHONE")], [CALL]),
            ([("tag", "work"), ("tag", "shopping")], []),
            ({"tag": "éTE"}, [MILK]),
            ({"tag": "ÉTE"}, [MILK]),
            ({"tag": "home"}, [RENT]),
            ({"tag": "nothing"}, []),
            # LIKE's wildcards in a tag are plain characters.
            ({"tag": "50%_OFF"}, [DEAL]),
            ({"tag": "50%"}, []),
            ({"tag": "50%_of_"}, []),
            ({"tag": "5__"}, []),
            ({"tag": "%"}, []),
        ],
    )


async def test_filter_q_searches_title_and_description(
    client: httpx.AsyncClient, auth: Auth, filter_tasks: list[Task]
) -> None:
    await assert_filters(
        client,
        auth,
        filter_tasks,
        [
            ({"q": "milk"}, [MILK]),
            ({"q": "MiLk"}, [MILK]),
            ({"q": "  milk  "}, [MILK]),
            ({"q": "LITRES"}, [MILK]),  # the description
            ({"q": "o"}, [REPORT, CALL, DEAL]),
            ({"q": "nowhere"}, []),
            # Any script: É finds é and é finds É; ß is ss (full case folding).
            ({"q": "CAFÉ"}, [CAFE]),
            ({"q": "éclair"}, [CAFE]),
            ({"q": "É"}, [CAFE]),
            ({"q": "ß"}, [CALL]),
            ({"q": "STRASSE"}, [CALL]),
            # LIKE's wildcards and its escape character are plain characters.
            ({"q": "%"}, [DEAL]),
            ({"q": "_"}, [DEAL]),
            ({"q": "\\"}, [DEAL]),
            ({"q": "0% d"}, [DEAL]),
            ({"q": "1%d"}, []),
            ({"q": "1_0"}, []),
            ({"q": "c:\\t"}, [DEAL]),
            ({"q": "c:_t"}, []),
        ],
    )


async def test_filter_due_before_and_after(
    client: httpx.AsyncClient, auth: Auth, filter_tasks: list[Task]
) -> None:
    # 2900-03-01T08:00:00Z is when both the milk and the rent are due.
    await assert_filters(
        client,
        auth,
        filter_tasks,
        [
            ({"due_after": "2900-03-01T10:00:00+02:00"}, [MILK, CALL, RENT]),
            ({"due_after": "2900-03-01T08:00:00.000001Z"}, [CALL]),
            ({"due_before": "2900-03-01T09:00:00+01:00"}, [REPORT, CAFE]),
            ({"due_before": "2900-03-01T08:00:00.000001Z"}, [MILK, REPORT, CAFE, RENT]),
            (
                {"due_after": "2900-02-28T19:00:00-05:00", "due_before": "2900-03-02T00:00:00Z"},
                [MILK, RENT],
            ),
            ({"due_after": "2900-03-02T00:00:00Z", "due_before": "2900-03-01T00:00:00Z"}, []),
        ],
    )
    # The + of an offset travels as %2B, as the route's description says.
    for url in (
        "/api/alice/tasks?due_after=2900-03-01T10:00:00%2B02:00",
        "/api/alice/tasks?due_after=2900-03-01T10%3A00%3A00%2B02%3A00",
    ):
        page = await get_page(client, auth, url)
        assert titles(page.tasks) == newest_first(filter_tasks, MILK, CALL, RENT)


async def test_filter_overdue(
    client: httpx.AsyncClient, auth: Auth, filter_tasks: list[Task]
) -> None:
    # The report is due in the past but completed; the call and milk are due in the future;
    # the deal has no due date.
    everything = [MILK, REPORT, CALL, DEAL, CAFE, RENT]
    await assert_filters(
        client,
        auth,
        filter_tasks,
        [
            ({"overdue": "true"}, [CAFE]),
            ({"overdue": "false"}, everything),
            ({"overdue": "true", "status": "completed"}, []),
        ],
    )


async def test_filter_remind_before(
    client: httpx.AsyncClient, auth: Auth, filter_tasks: list[Task]
) -> None:
    # The report's reminder is in the past, but the report is completed.
    await assert_filters(
        client,
        auth,
        filter_tasks,
        [
            ({"remind_before": "2900-01-01T00:00:00Z"}, [CALL]),
            ({"remind_before": "2900-03-01T07:00:00Z"}, [CALL]),
            ({"remind_before": "2900-03-01T09:00:00.000001+02:00"}, [MILK, CALL]),
            ({"remind_before": "2026-06-01T00:00:00Z"}, []),
        ],
    )


async def test_filters_combine(
    client: httpx.AsyncClient, auth: Auth, filter_tasks: list[Task]
) -> None:
    await assert_filters(
        client,
        auth,
        filter_tasks,
        [
            ({"status": "pending", "priority": "high,low", "tag": "work"}, [CALL]),
            ({"status": "pending", "priority": "high,low"}, [MILK, CALL]),
            ({"status": "pending", "q": "o", "priority": "medium"}, [DEAL]),
            ({"status": "completed", "tag": "WORK", "q": "numbers"}, [REPORT]),
            ({"overdue": "true", "priority": "medium", "q": "café"}, [CAFE]),
            ({"q": "o", "due_before": FUTURE}, [REPORT]),
            ({"q": "o", "due_after": PAST, "status": "pending"}, [CALL]),
            ([("tag", "work"), ("tag", "phone"), ("remind_before", FUTURE)], [CALL]),
            ({"priority": "low", "tag": "éte", "due_after": "2900-03-01T08:00:00Z"}, [MILK]),
            ({"priority": "low", "status": "pending", "q": "rent"}, []),
        ],
    )


async def test_unknown_parameters_are_ignored(
    client: httpx.AsyncClient, auth: Auth, filter_tasks: list[Task]
) -> None:
    await assert_filters(
        client,
        auth,
        filter_tasks,
        [
            (
                {"user_id": "bob", "page": "2", "offset": "3", "completed": "true"},
                [MILK, REPORT, CALL, DEAL, CAFE, RENT],
            ),
            (
                {"status": "pending", "Status": "completed", "tags": "home"},
                [MILK, CALL, DEAL, CAFE],
            ),
        ],
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", "done"),
        ("status", "PENDING"),
        ("status", ""),
        ("priority", "critical"),
        ("priority", "high,CRITICAL"),
        ("priority", "high,"),
        ("priority", ""),
        ("tag", ""),
        ("tag", "   "),
        ("tag", "x" * 33),
        ("tag", "a\x01b"),
        ("q", ""),
        ("q", "   "),
        ("q", "x" * 101),
        ("q", "a\x00b"),
        ("due_before", "garbage"),
        ("due_before", "2026-01-01T00:00:00"),  # naive
        ("due_before", "2026-01-01"),
        ("due_after", "2026-13-01T00:00:00Z"),
        ("due_after", "2026-01-01T00:00:00 02:00"),  # a + sent unencoded arrives as a space
        ("due_after", "1700000000"),
        ("remind_before", "tomorrow"),
        ("remind_before", "2026-01-01T00:00:00"),
        ("overdue", "maybe"),
        ("overdue", ""),
        ("sort", "foo"),
        ("sort", "-foo"),
        ("sort", "--title"),
        ("sort", "Title"),
        ("sort", "id"),
        ("sort", "+title"),
        ("limit", "0"),
        ("limit", "501"),
        ("limit", "-1"),
        ("limit", "1.5"),
        ("limit", "ten"),
        ("cursor", ""),
        ("cursor", "x" * 1001),
    ],
)
async def test_bad_value_of_a_known_parameter_is_422(
    client: httpx.AsyncClient, auth: Auth, field: str, value: str
) -> None:
    response = await client.get(
        "/api/alice/tasks", params={field: value, "unknown": "x"}, headers=auth("alice")
    )
    assert_validation(response, field)


async def test_an_unencoded_plus_gets_a_hint(client: httpx.AsyncClient, auth: Auth) -> None:
    response = await client.get(
        "/api/alice/tasks?due_before=2026-01-01T00:00:00+02:00", headers=auth("alice")
    )
    assert_validation(response, "due_before")
    assert response.json()["detail"] == (
        "due_before: must be an ISO-8601 date and time with an offset; send the offset's + as "
        "%2B (a + in a query string means a space)"
    )


# --- sorting ---------------------------------------------------------------------------------

# Six tasks, A to F in the order of their ids, with ties on every key: titles equal but for
# case, shared timestamps, the same due instant written in two offsets, shared priorities.
SORT_TASKS = {
    "A": {"title": "banana", "priority": "high", "due_at": "2026-04-01T00:00:00Z"},
    "B": {"title": "Apple", "priority": "low"},
    "C": {"title": "apple", "priority": "medium", "due_at": "2026-03-01T09:00:00+02:00"},
    "D": {"title": "cherry", "priority": "urgent", "due_at": "2026-04-01T02:00:00+02:00"},
    "E": {"title": "Banana", "priority": "low"},
    "F": {"title": "éclair", "priority": "medium", "due_at": "2026-03-01T07:00:00Z"},
}
HOUR = timedelta(hours=1)
SORT_TIMES = {  # created_at, updated_at
    "A": (BASE, BASE + 30 * HOUR),
    "B": (BASE + HOUR, BASE + 10 * HOUR),
    "C": (BASE, BASE + 10 * HOUR),
    "D": (BASE + 2 * HOUR, BASE + 20 * HOUR),
    "E": (BASE + HOUR, BASE + 30 * HOUR),
    "F": (BASE, BASE + 20 * HOUR),
}
SORTED = {
    "created_at": "ACFBED",
    "-created_at": "DEBFCA",
    "updated_at": "BCDFAE",
    "-updated_at": "EAFDCB",
    "due_at": "CFADBE",  # without a due date: last
    "-due_at": "DAFCEB",  # without a due date: last too
    "priority": "BECFAD",  # low → medium → high → urgent
    "-priority": "DAFCEB",
    "title": "BCAEDF",  # case-insensitive; é after the ASCII letters
    "-title": "FDEACB",
}


@pytest.mark.parametrize("sort", ALL_SORTS)
async def test_sort(client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine, sort: str) -> None:
    by_letter = {}
    for letter, body in SORT_TASKS.items():
        task = await create(client, auth, body)
        created_at, updated_at = SORT_TIMES[letter]
        await pin(engine, task["id"], created_at=created_at, updated_at=updated_at)
        by_letter[letter] = {
            **task,
            "created_at": created_at.isoformat().replace("+00:00", "Z"),
            "updated_at": updated_at.isoformat().replace("+00:00", "Z"),
        }
    expected = [by_letter[letter] for letter in SORTED[sort]]
    assert ordered(by_letter.values(), sort) == expected  # the test's own model agrees
    assert await listed(client, auth, {"sort": sort}) == expected
    # Page by page, across every tie.
    for limit in (1, 4):
        pages = await walk(client, auth, tasks_url({"sort": sort, "limit": str(limit)}))
        assert [page.tasks for page in pages] == chunks(expected, limit)
        assert [page.total for page in pages] == [6] * len(pages)


async def test_default_sort_is_newest_first(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    for letter, body in SORT_TASKS.items():
        task = await create(client, auth, body)
        await pin(engine, task["id"], created_at=SORT_TIMES[letter][0])
    default = await listed(client, auth, {})
    assert titles(default) == [SORT_TASKS[letter]["title"] for letter in SORTED["-created_at"]]
    assert default == await listed(client, auth, {"sort": "-created_at"})


# --- paging ----------------------------------------------------------------------------------


def _pending(task: Task) -> bool:
    return not task["completed"]


def _tagged_work(task: Task) -> bool:
    return "work" in [fold(tag) for tag in task["tags"]]


def _high_or_low_alpha(task: Task) -> bool:
    text = fold(task["title"] + " " + (task["description"] or ""))
    return task["priority"] in ("high", "low") and "alpha" in text


def _due_in_window(task: Task) -> bool:
    due = task["due_at"]
    return due is not None and BASE + timedelta(days=2) <= _time(due) < BASE + timedelta(days=8)


def _everything(task: Task) -> bool:
    return True


# (sort, filters, the filters as a predicate)
WALKS: list[tuple[str, dict[str, str], Predicate]] = [
    ("-created_at", {}, _everything),
    ("created_at", {"status": "pending"}, _pending),
    ("due_at", {}, _everything),
    ("-due_at", {"status": "pending"}, _pending),
    ("title", {}, _everything),
    ("-title", {"tag": "WORK"}, _tagged_work),
    ("priority", {}, _everything),
    ("-priority", {"priority": "high,low", "q": "ALPHA"}, _high_or_low_alpha),
    (
        "updated_at",
        {"due_after": "2026-01-03T01:00:00+01:00", "due_before": "2026-01-09T00:00:00Z"},
        _due_in_window,
    ),
    ("-updated_at", {}, _everything),
]


@pytest.mark.parametrize(
    ("sort", "filters", "matches"), WALKS, ids=[f"{s}{''.join(f)}" for s, f, _ in WALKS]
)
async def test_walking_every_page_returns_every_task_once_in_order(
    client: httpx.AsyncClient,
    auth: Auth,
    engine: AsyncEngine,
    sort: str,
    filters: dict[str, str],
    matches: Predicate,
) -> None:
    tasks = await insert_rows(engine, [varied(n) for n in range(250)])
    await insert_rows(engine, [varied(n, user="bob") for n in range(20)])
    expected = ordered(filter(matches, tasks), sort)
    assert len(expected) >= 20  # every walk has pages to turn
    pages = await walk(client, auth, tasks_url({**filters, "sort": sort, "limit": "7"}))
    assert [page.tasks for page in pages] == chunks(as_json(expected), 7)
    assert [page.total for page in pages] == [len(expected)] * len(pages)
    assert pages[-1].next is None


@pytest.mark.parametrize(
    ("sort", "filters", "matches"),
    [
        ("-created_at", {}, _everything),
        ("due_at", {}, _everything),
        ("title", {}, _everything),
        ("priority", {}, _everything),
        ("-priority", {"status": "pending"}, _pending),
        ("title", {"tag": "work"}, _tagged_work),
    ],
    ids=["-created_at", "due_at", "title", "priority", "-priority-pending", "title-work"],
)
async def test_walking_while_tasks_are_inserted_and_deleted(
    client: httpx.AsyncClient,
    auth: Auth,
    engine: AsyncEngine,
    sort: str,
    filters: dict[str, str],
    matches: Predicate,
) -> None:
    """Between pages, two tasks are inserted anywhere in the order (often tied with tasks
    already there) and one is deleted, already returned or not. Each page is exactly the
    tasks that follow the previous page's last one at the time it is asked for."""
    rng = random.Random(f"{sort}{filters}")
    known = {
        task["id"]: task for task in await insert_rows(engine, [varied(n) for n in range(250)])
    }
    present = set(known)
    initial = set(known)
    returned: list[Task] = []

    def matching_now() -> list[Task]:
        return [known[task_id] for task_id in present if matches(known[task_id])]

    async def change() -> None:
        seen = {task["id"] for task in returned}
        victims = sorted(present & seen) if len(returned) % 2 else sorted(present - seen)
        victim = rng.choice(victims or sorted(present))
        new = await insert_rows(
            engine, [varied(rng.randrange(300)) for _ in range(2)], deleting=victim
        )
        present.discard(victim)
        known.update((task["id"], task) for task in new)
        present.update(task["id"] for task in new)

    url: str | None = tasks_url({**filters, "sort": sort, "limit": "7"})
    for _ in range(MAX_PAGES):
        if url is None:
            break
        page = await get_page(client, auth, url)
        if returned:
            last = known[returned[-1]["id"]]  # deleted or not, it marks the place
            order = ordered(
                {last["id"]: last, **{t["id"]: t for t in matching_now()}}.values(), sort
            )
            following = order[ids(order).index(last["id"]) + 1 :]
        else:
            following = ordered(matching_now(), sort)
        following = [task for task in following if task["id"] in present]
        assert page.tasks == as_json(following[:7])
        assert page.total == len(matching_now())
        assert (page.next is None) == (len(following) <= 7)
        returned += page.tasks
        if page.next is not None:
            await change()
        url = page.next
    else:
        raise AssertionError(f"more than {MAX_PAGES} pages")
    # No task twice; the tasks there all along, each once, in order.
    assert len(ids(returned)) == len(set(ids(returned)))
    stayed = [known[task_id] for task_id in initial & present if matches(known[task_id])]
    assert [t for t in returned if t["id"] in initial & present] == as_json(ordered(stayed, sort))
    assert ordered(returned, sort) == returned


async def test_pages_that_end_exactly_at_the_limit(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    tasks = ordered(await insert_rows(engine, [row(n) for n in range(14)]), "-created_at")
    pages = await walk(client, auth, tasks_url({"limit": "7"}))
    assert [page.tasks for page in pages] == chunks(as_json(tasks), 7)
    assert [page.total for page in pages] == [14, 14]
    assert pages[-1].next is None
    one = await get_page(client, auth, tasks_url({"limit": "14"}))
    assert (one.tasks, one.total, one.next) == (as_json(tasks), 14, None)


async def test_without_limit_500_come_back_with_a_link_to_the_rest(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    tasks = ordered(await insert_rows(engine, [row(n) for n in range(503)]), "-created_at")
    first = await get_page(client, auth, "/api/alice/tasks")
    assert (first.tasks, first.total) == (as_json(tasks[:500]), 503)
    assert first.next is not None
    assert re.fullmatch(r"/api/alice/tasks\?cursor=[A-Za-z0-9_-]+", first.next), first.next
    rest = await get_page(client, auth, first.next)
    assert (rest.tasks, rest.total, rest.next) == (as_json(tasks[500:]), 503, None)


async def test_the_link_header_is_the_same_query_with_the_next_cursor(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    await insert_rows(engine, [row(n, tags=["work"], due_at=BASE) for n in range(3)])
    query = (
        "sort=title&limit=2&tag=work&foo=bar&due_after=2025-12-31T23%3A00%3A00%2B01%3A00&q=task%20"
    )
    response = await client.get(f"/api/alice/tasks?{query}", headers=auth("alice"))
    ok(response)
    assert response.headers["x-total-count"] == "3"
    # The list's own parameters as they were sent, in their order; an unknown one (`foo`) is
    # not repeated: a client could make the header as long as its query (60 KB).
    match = re.fullmatch(
        r"</api/alice/tasks\?sort=title&limit=2&tag=work"
        r"&due_after=2025-12-31T23%3A00%3A00%2B01%3A00&q=task\+&cursor=([A-Za-z0-9_-]+)>; "
        r'rel="next"',
        response.headers["link"],
    )
    assert match is not None, response.headers["link"]
    padded = f"/api/alice/tasks?{query}&" + "&".join(f"x{n}={'y' * 100}" for n in range(500))
    response = await client.get(padded, headers=auth("alice"))
    assert response.headers["link"].startswith(f"<{match[0][1:].split('&cursor=')[0]}&cursor=")
    assert len(response.headers["link"]) < 300


async def test_the_link_of_a_user_id_that_needs_encoding(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    user = "jürgen lee?#|用"
    path = "/api/j%C3%BCrgen%20lee%3F%23%7C%E7%94%A8/tasks"
    tasks = ordered(await insert_rows(engine, [row(n, user=user) for n in range(3)]), "title")
    pages = await walk(client, auth, f"{path}?limit=2&sort=title", user)
    assert [page.tasks for page in pages] == chunks(as_json(tasks), 2)
    assert pages[0].next is not None
    assert pages[0].next.startswith(f"{path}?limit=2&sort=title&cursor=")


async def test_the_empty_list(client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine) -> None:
    for params in ({}, {"limit": "1"}, {"sort": "due_at", "status": "completed"}):
        response = await client.get("/api/alice/tasks", params=params, headers=auth("alice"))
        assert ok(response) == []
        assert response.headers["x-total-count"] == "0"
        assert "link" not in response.headers
    # Tasks that do not match make no page either; bob's tasks are not alice's.
    done = await insert_rows(engine, [row(n, completed=True) for n in range(3)])
    await insert_rows(engine, [row(n, user="bob") for n in range(3)])
    response = await client.get(
        "/api/alice/tasks", params={"status": "pending", "limit": "1"}, headers=auth("alice")
    )
    assert ok(response) == []
    assert response.headers["x-total-count"] == "0"
    assert "link" not in response.headers
    # A page whose tasks were all deleted after the Link was handed out is empty too.
    first = await get_page(client, auth, tasks_url({"status": "completed", "limit": "2"}))
    assert (len(first.tasks), first.total) == (2, 3)
    assert first.next is not None
    await insert_rows(engine, [], deleting=ordered(done, "-created_at")[2]["id"])
    last = await get_page(client, auth, first.next)
    assert (last.tasks, last.total, last.next) == ([], 2, None)


# --- cursor misuse ---------------------------------------------------------------------------

NOT_OURS = "cursor: is not a cursor this service made"
FOREIGN = (
    "cursor: belongs to another query (its filters or sort differ); start again without a cursor"
)


def assert_cursor_refused(response: httpx.Response, detail: str) -> None:
    assert response.status_code == 422, response.text
    assert response.json() == {
        "detail": detail,
        "code": "VALIDATION_ERROR",
        "field": "cursor",
        "errors": [{"field": "cursor", "message": detail.removeprefix("cursor: ")}],
    }


def encode(document: Any) -> str:
    # json, not orjson: it writes integers beyond 64 bits too.
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")


def forged(cursor: str, keys: list[Any]) -> str:
    """The cursor with its position replaced: what a client that decodes the opaque cursor
    could send."""
    document = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    return encode({**document, "k": keys})


async def next_cursor(
    client: httpx.AsyncClient, auth: Auth, params: dict[str, str], user: str = "alice"
) -> str:
    page = await get_page(client, auth, tasks_url({**params, "limit": "1"}, user), user)
    assert page.next is not None
    return dict(parse_qsl(urlsplit(page.next).query))["cursor"]


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!",
        "abc",
        "a",
        "é",
        "%%%",
        base64.urlsafe_b64encode(b"\x00\xffgarbage").decode(),
        encode([1, 2]),
        encode("text"),
        encode({"f": "0123456789abcdef"}),
        encode({"k": "2026-01-01T00:00:00Z", "f": "0123456789abcdef"}),
    ],
)
async def test_a_cursor_this_service_did_not_make_is_422(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine, cursor: str
) -> None:
    await insert_rows(engine, [row(n) for n in range(3)])
    response = await client.get(
        "/api/alice/tasks", params={"cursor": cursor}, headers=auth("alice")
    )
    assert_cursor_refused(response, NOT_OURS)


@pytest.mark.parametrize(
    "respell",
    [
        pytest.param(lambda c: c[:5] + "!" + c[5:], id="junk-inside"),
        pytest.param(lambda c: c[:5] + "." + c[5:], id="dot-inside"),
        pytest.param(lambda c: c[:5] + " " + c[5:], id="space-inside"),
        pytest.param(lambda c: c + "=" * (-len(c) % 4 or 4), id="padded"),
        pytest.param(lambda c: c + "==", id="extra-padding"),
        pytest.param(lambda c: c.replace("-", "+").replace("_", "/"), id="standard-alphabet"),
        pytest.param(lambda c: c + "A", id="one-more-character"),
    ],
)
async def test_a_cursor_is_only_the_exact_text_the_service_wrote(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine, respell: Callable[[str], str]
) -> None:
    # Base64 decoding skips what is not in its alphabet: one page had many spellings.
    await insert_rows(engine, [row(n) for n in range(3)])
    cursor = await next_cursor(client, auth, {})
    assert (
        await client.get(tasks_url({"limit": "1", "cursor": cursor}), headers=auth("alice"))
    ).status_code == 200
    spelled = respell(cursor)
    if spelled == cursor:  # the cursor held no "-" or "_" to respell
        return
    response = await client.get(tasks_url({"limit": "1", "cursor": spelled}), headers=auth("alice"))
    assert_cursor_refused(response, NOT_OURS)


async def test_a_cursor_of_a_bogus_fingerprint_is_422(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    await insert_rows(engine, [row(n) for n in range(3)])
    cursor = encode({"k": ["2026-01-01T00:00:00Z", 1], "f": "0123456789abcdef"})
    response = await client.get(
        "/api/alice/tasks", params={"cursor": cursor}, headers=auth("alice")
    )
    assert_cursor_refused(response, FOREIGN)


@pytest.mark.parametrize(
    ("made_with", "used_with"),
    [
        ({"sort": "title"}, {"sort": "-title"}),
        ({"sort": "title"}, {"sort": "priority"}),
        ({}, {"sort": "-updated_at"}),
        ({"sort": "-created_at"}, {"sort": "created_at"}),
        ({"status": "pending"}, {}),
        ({"status": "pending"}, {"status": "completed"}),
        ({"tag": "work"}, {"tag": "home"}),
        ({"tag": "work"}, {}),
        ({"q": "task"}, {"q": "tas"}),
        ({"priority": "low,medium"}, {"priority": "medium"}),
        ({"overdue": "true"}, {}),
        ({"due_before": "2027-01-01T00:00:00Z"}, {"due_before": "2027-01-02T00:00:00Z"}),
        ({"remind_before": "2027-01-01T00:00:00Z"}, {}),
    ],
)
async def test_a_cursor_of_another_query_is_422(
    client: httpx.AsyncClient,
    auth: Auth,
    engine: AsyncEngine,
    made_with: dict[str, str],
    used_with: dict[str, str],
) -> None:
    await insert_rows(
        engine,
        [
            row(n, tags=["work", "home"], priority=PRIORITIES[n % 2], due_at=BASE, remind_at=BASE)
            for n in range(4)
        ],
    )
    cursor = await next_cursor(client, auth, made_with)
    response = await client.get(
        "/api/alice/tasks", params={**used_with, "cursor": cursor}, headers=auth("alice")
    )
    assert_cursor_refused(response, FOREIGN)


async def test_a_cursor_of_another_user_is_422(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    await insert_rows(engine, [row(n, user=user) for n in range(3) for user in ("alice", "bob")])
    cursor = await next_cursor(client, auth, {}, user="bob")
    response = await client.get(
        "/api/alice/tasks", params={"cursor": cursor, "limit": "1"}, headers=auth("alice")
    )
    assert_cursor_refused(response, FOREIGN)


@pytest.mark.parametrize(
    ("sort", "keys"),
    [
        ("-created_at", []),
        ("-created_at", [1]),
        ("-created_at", ["2026-01-01T00:00:00Z", 1, 1]),
        ("-created_at", ["2026-01-01T00:00:00", 1]),  # naive
        ("-created_at", ["2026-01-01", 1]),
        ("-created_at", ["yesterday", 1]),
        ("-created_at", [1767225600, 1]),
        ("-created_at", ["0001-01-01T00:00:00+01:00", 1]),  # before year 1 in UTC
        ("-created_at", ["9999-12-31T23:59:59-01:00", 1]),  # after year 9999 in UTC
        ("-created_at", ["2026-01-01T00:00:00Z", "1"]),
        ("-created_at", ["2026-01-01T00:00:00Z", 1.0]),
        ("-created_at", ["2026-01-01T00:00:00Z", True]),
        ("-created_at", ["2026-01-01T00:00:00Z", None]),
        ("-created_at", ["2026-01-01T00:00:00Z", 2**63]),
        ("-created_at", ["2026-01-01T00:00:00Z", -(2**63) - 1]),
        ("-created_at", ["2026-01-01T00:00:00Z", 2**64]),
        ("-created_at", ["2026-01-01T00:00:00Z", 10**30]),
        ("-updated_at", [["2026-01-01T00:00:00Z"], 1]),
        ("title", ["a\x00b", 1]),
        ("title", [1, 1]),
        ("title", [None, 1]),
        ("priority", ["critical", 1]),
        ("priority", [2, 1]),
        ("priority", ["HIGH", 1]),
        ("due_at", [0, "2026-01-01T00:00:00Z"]),
        ("due_at", [2, "2026-01-01T00:00:00Z", 1]),
        ("due_at", [False, "2026-01-01T00:00:00Z", 1]),
        ("due_at", [0, None, 1]),
    ],
)
async def test_a_tampered_cursor_is_422_never_500(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine, sort: str, keys: list[Any]
) -> None:
    await insert_rows(engine, [row(n) for n in range(3)])
    cursor = forged(await next_cursor(client, auth, {"sort": sort}), keys)
    response = await client.get(
        "/api/alice/tasks", params={"sort": sort, "cursor": cursor}, headers=auth("alice")
    )
    assert_cursor_refused(response, NOT_OURS)


def _created(task: Task, offset: str = "+00:00") -> str:
    when = _time(task["created_at"])
    hours = int(offset[1:3]) * (1 if offset[0] == "+" else -1)
    return (when + timedelta(hours=hours)).isoformat().replace("+00:00", offset)


# (sort, the position as keys of the tasks in that order, how many tasks come before it)
POSITIONS: list[tuple[str, Callable[[list[Task]], list[Any]], int]] = [
    ("created_at", lambda tasks: [_created(tasks[1]), tasks[1]["id"]], 2),
    ("-created_at", lambda tasks: [_created(tasks[1], "+05:00"), tasks[1]["id"]], 2),
    ("title", lambda tasks: ["task 1", tasks[1]["id"]], 2),
    ("title", lambda tasks: ["task 1", 0], 1),
    ("-title", lambda tasks: ["task 1", 0], 3),
    ("priority", lambda tasks: ["medium", tasks[2]["id"]], 3),
    ("-due_at", lambda tasks: [1, "1970-01-01T00:00:00Z", tasks[2]["id"]], 3),
    ("-created_at", lambda tasks: ["9999-12-31T23:59:59Z", 2**63 - 1], 0),
    ("created_at", lambda tasks: ["0001-01-01T00:00:00Z", -(2**63)], 0),
    ("created_at", lambda tasks: ["9999-12-31T23:59:59Z", 2**63 - 1], 4),
]


@pytest.mark.parametrize(("sort", "position", "before"), POSITIONS)
async def test_a_well_formed_cursor_is_only_a_position(
    client: httpx.AsyncClient,
    auth: Auth,
    engine: AsyncEngine,
    sort: str,
    position: Callable[[list[Task]], list[Any]],
    before: int,
) -> None:
    """A client that writes a position itself gets the tasks after it: nothing it could not
    list anyway."""
    tasks = ordered(await insert_rows(engine, [row(n) for n in range(4)]), sort)
    cursor = forged(await next_cursor(client, auth, {"sort": sort}), position(tasks))
    page = await get_page(client, auth, tasks_url({"sort": sort, "cursor": cursor}))
    assert (page.tasks, page.total, page.next) == (as_json(tasks[before:]), 4, None)


async def test_a_cursor_keeps_working_with_another_limit(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    tasks = ordered(await insert_rows(engine, [varied(n) for n in range(30)]), "due_at")
    first = await get_page(client, auth, tasks_url({"sort": "due_at", "limit": "4"}))
    assert first.tasks == as_json(tasks[:4])
    assert first.next is not None
    cursor = dict(parse_qsl(urlsplit(first.next).query))["cursor"]
    rest = await walk(client, auth, tasks_url({"sort": "due_at", "limit": "10", "cursor": cursor}))
    assert [page.tasks for page in rest] == chunks(as_json(tasks[4:]), 10)
    everything = await get_page(client, auth, tasks_url({"sort": "due_at", "cursor": cursor}))
    assert (everything.tasks, everything.total, everything.next) == (as_json(tasks[4:]), 30, None)


# --- clearing --------------------------------------------------------------------------------


@pytest.fixture
async def to_clear(engine: AsyncEngine) -> dict[str, list[Task]]:
    """Alice: three completed tasks and two pending ones; bob: one of each."""
    return {
        user: await insert_rows(
            engine, [row(n, user=user, completed=n < done) for n in range(done + pending)]
        )
        for user, done, pending in (("alice", 3, 2), ("bob", 1, 1))
    }


async def test_clear_completed(
    client: httpx.AsyncClient, auth: Auth, to_clear: dict[str, list[Task]]
) -> None:
    alice, bob = to_clear["alice"], to_clear["bob"]
    clear = "/api/alice/tasks?status=completed"
    assert ok(await client.delete(clear, headers=auth("alice"))) == {"deleted": 3}
    assert await listed(client, auth, {}) == as_json(ordered(alice[3:], "-created_at"))
    assert await listed(client, auth, {}, "bob") == as_json(ordered(bob, "-created_at"))
    # Again: nothing left to clear.
    assert ok(await client.delete(clear, headers=auth("alice"))) == {"deleted": 0}
    assert await listed(client, auth, {}) == as_json(ordered(alice[3:], "-created_at"))


async def test_clear_all(
    client: httpx.AsyncClient, auth: Auth, to_clear: dict[str, list[Task]]
) -> None:
    clear = "/api/alice/tasks?status=all"
    assert ok(await client.delete(clear, headers=auth("alice"))) == {"deleted": 5}
    assert await listed(client, auth, {}) == []
    assert await listed(client, auth, {}, "bob") == as_json(ordered(to_clear["bob"], "-created_at"))
    assert ok(await client.delete(clear, headers=auth("alice"))) == {"deleted": 0}


@pytest.mark.parametrize(
    "query",
    ["", "?status=", "?status=pending", "?status=COMPLETED", "?status=done", "?completed=true"],
)
async def test_clear_without_a_known_status_is_422_and_removes_nothing(
    client: httpx.AsyncClient, auth: Auth, to_clear: dict[str, list[Task]], query: str
) -> None:
    response = await client.delete(f"/api/alice/tasks{query}", headers=auth("alice"))
    assert_validation(response, "status")
    assert await listed(client, auth, {}) == as_json(ordered(to_clear["alice"], "-created_at"))


@pytest.mark.parametrize(
    "query",
    ["?status=completed&status=all", "?status=all&status=all", "?status=all&status=completed"],
)
async def test_clear_with_status_repeated_is_422_and_removes_nothing(
    client: httpx.AsyncClient, auth: Auth, to_clear: dict[str, list[Task]], query: str
) -> None:
    # The last value used to win: "completed" then "all" deleted everything.
    response = await client.delete(f"/api/alice/tasks{query}", headers=auth("alice"))
    assert_validation(response, "status")
    assert response.json()["detail"] == "status: must be given once"
    assert await listed(client, auth, {}) == as_json(ordered(to_clear["alice"], "-created_at"))


async def test_clear_another_users_tasks_is_403_and_removes_nothing(
    client: httpx.AsyncClient, auth: Auth, to_clear: dict[str, list[Task]]
) -> None:
    response = await client.delete("/api/alice/tasks?status=all", headers=auth("bob"))
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "FORBIDDEN"
    assert await listed(client, auth, {}) == as_json(ordered(to_clear["alice"], "-created_at"))
    assert await listed(client, auth, {}, "bob") == as_json(ordered(to_clear["bob"], "-created_at"))


async def test_the_whole_lists_total_is_the_kept_count_and_follows_every_change(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    # Without a filter the total is the count the database keeps for the user (sync_state);
    # with one that matches every task it is counted: both must agree after any change.
    async def totals() -> tuple[int, int, int]:
        whole = await client.get("/api/alice/tasks", headers=auth("alice"))
        counted = await client.get(
            "/api/alice/tasks?priority=low,medium,high&limit=1", headers=auth("alice")
        )
        return (
            int(whole.headers["x-total-count"]),
            int(counted.headers["x-total-count"]),
            len(ok(whole)),
        )

    assert await totals() == (0, 0, 0)
    first = await create(client, auth, {"title": "a"})
    await create(client, auth, {"title": "b", "completed": True})
    recurring = await create(
        client,
        auth,
        {"title": "c", "due_at": "2026-12-01T09:00:00Z", "recurrence": {"frequency": "daily"}},
    )
    assert await totals() == (3, 3, 3)
    completed = await client.patch(
        f"/api/alice/tasks/{recurring['id']}/complete", headers=auth("alice")
    )
    ok(completed)  # and its next occurrence is created
    assert await totals() == (4, 4, 4)
    ok(await client.delete(f"/api/alice/tasks/{first['id']}", headers=auth("alice")))
    assert await totals() == (3, 3, 3)
    cleared = await client.delete("/api/alice/tasks?status=completed", headers=auth("alice"))
    assert ok(cleared) == {"deleted": 2}
    assert await totals() == (1, 1, 1)
    await create(client, auth, {"title": "d"}, user="bob")  # another user's task counts for bob
    assert await totals() == (1, 1, 1)
    ok(await client.delete("/api/alice/tasks?status=all", headers=auth("alice")))
    assert await totals() == (0, 0, 0)


async def test_the_calendar_s_ends_come_back_in_utc_and_page_by_due_date(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    # PostgreSQL's driver stores the first and last instants Python can hold as -infinity and
    # infinity, and read them back without a time zone: the service's own Link cursor was then
    # 422, and a recurrence 500. The API refuses them now, but a database may hold them from
    # before: they are read as UTC, and paging by due date walks past them.
    stored = await insert_rows(
        engine,
        [
            row(1, due_at=TIME_MIN),
            row(2, due_at=TIME_MAX),
            row(3, due_at=BASE),
            row(4, due_at=TIME_MAX),
            row(5),
        ],
    )
    for sort in ("due_at", "-due_at"):
        pages = await walk(client, auth, tasks_url({"sort": sort, "limit": "1"}))
        walked = [task for page in pages for task in page.tasks]
        assert ids(walked) == ids(ordered(as_json(stored), sort))
        assert {task["due_at"] for task in walked} == {
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999Z",
            "2026-01-01T00:00:00Z",
            None,
        }


@pytest.mark.parametrize(
    "when", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59.999999"]
)
async def test_the_calendar_s_ends_are_refused_as_filters(
    client: httpx.AsyncClient, auth: Auth, when: str
) -> None:
    response = await client.get(tasks_url({"due_before": when}), headers=auth("alice"))
    assert_validation(response, "due_before")
