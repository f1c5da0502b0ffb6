"""Recurring tasks: the date arithmetic (table-driven), and that completing one creates its next
occurrence exactly once, however the completion arrives and even when completions race."""

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from backend.services.recurrence import next_due
from tests.helpers import Auth, create, list_all, ok


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# (anchor, frequency, interval, the next occurrences in order)
SERIES = [
    pytest.param(
        "2026-01-31T09:00:00+00:00",
        "monthly",
        1,
        ["2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31"],
        id="monthly-31st",
    ),
    pytest.param(
        "2028-01-31T09:00:00+00:00",
        "monthly",
        1,
        ["2028-02-29", "2028-03-31"],
        id="monthly-31st-leap-year",
    ),
    pytest.param(
        "2026-01-30T09:00:00+00:00", "monthly", 1, ["2026-02-28", "2026-03-30"], id="monthly-30th"
    ),
    pytest.param(
        "2026-11-30T09:00:00+00:00",
        "monthly",
        3,
        ["2027-02-28", "2027-05-30", "2027-08-30"],
        id="quarterly-across-a-year",
    ),
    pytest.param(
        "2028-02-29T09:00:00+00:00",
        "yearly",
        1,
        ["2029-02-28", "2030-02-28", "2031-02-28", "2032-02-29"],
        id="yearly-leap-day",
    ),
    pytest.param(
        "2026-03-15T09:00:00+00:00", "yearly", 2, ["2028-03-15", "2030-03-15"], id="biennial"
    ),
    pytest.param(
        "2026-12-30T09:00:00+00:00",
        "daily",
        1,
        ["2026-12-31", "2027-01-01", "2027-01-02"],
        id="daily-across-a-year",
    ),
    pytest.param(
        "2028-02-27T09:00:00+00:00", "daily", 2, ["2028-02-29", "2028-03-02"], id="every-2-days"
    ),
    pytest.param(
        "2026-12-28T09:00:00+00:00",
        "weekly",
        1,
        ["2027-01-04", "2027-01-11"],
        id="weekly-across-a-year",
    ),
    pytest.param(
        "2026-01-01T09:00:00+00:00", "weekly", 52, ["2026-12-31", "2027-12-30"], id="every-52-weeks"
    ),
]


@pytest.mark.parametrize(("anchor", "frequency", "interval", "dates"), SERIES)
def test_next_due(anchor: str, frequency: str, interval: int, dates: list[str]) -> None:
    start = _at(anchor)
    got = [
        next_due(start, offset_minutes=0, count=n, frequency=frequency, interval=interval)
        for n in range(len(dates))
    ]
    assert [when.date().isoformat() if when else None for when in got] == dates
    assert all(when is not None and when.time() == start.time() for when in got)


def test_next_due_counts_in_the_calendar_of_the_offset_it_was_given_in() -> None:
    # 09:00 on Jan 31 in Sydney (+11:00) is Jan 30 in UTC: the series is on the 31st there.
    sydney = timezone(timedelta(hours=11))
    anchor = datetime(2026, 1, 31, 9, 0, tzinfo=sydney)
    got = [
        next_due(anchor, offset_minutes=660, count=n, frequency="monthly", interval=1)
        for n in range(3)
    ]
    assert [when.astimezone(sydney).isoformat() for when in got if when] == [
        "2026-02-28T09:00:00+11:00",
        "2026-03-31T09:00:00+11:00",
        "2026-04-30T09:00:00+11:00",
    ]


def test_a_series_ends_at_year_9999() -> None:
    anchor = datetime(9999, 12, 1, tzinfo=UTC)
    assert next_due(anchor, offset_minutes=0, count=0, frequency="monthly", interval=1) is None
    assert next_due(anchor, offset_minutes=0, count=0, frequency="daily", interval=31) is None
    assert next_due(anchor, offset_minutes=0, count=0, frequency="daily", interval=30) == datetime(
        9999, 12, 31, tzinfo=UTC
    )


def test_a_series_ends_before_the_last_instant_a_database_can_hold() -> None:
    # PostgreSQL's driver would store 9999-12-31T23:59:59.999999Z as infinity.
    anchor = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)
    assert next_due(anchor, offset_minutes=0, count=0, frequency="daily", interval=1) is None
    earlier = datetime(9999, 12, 30, 23, 59, 59, 999998, tzinfo=UTC)
    assert next_due(earlier, offset_minutes=0, count=0, frequency="daily", interval=1) == (
        datetime(9999, 12, 31, 23, 59, 59, 999998, tzinfo=UTC)
    )


# --- through the API -----------------------------------------------------------------------------

MONTHLY = {
    "title": "Pay rent",
    "description": "flat 3",
    "priority": "high",
    "tags": ["home", "money"],
    "due_at": "2026-01-31T09:00:00Z",
    "remind_at": "2026-01-30T18:00:00Z",
    "recurrence": {"frequency": "monthly", "interval": 1},
}
COMPLETIONS: list[Any] = [
    pytest.param("PATCH", "/complete", None, id="toggle"),
    pytest.param("PATCH", "/complete", {"completed": True}, id="set-complete"),
    pytest.param("PATCH", "", {"completed": True}, id="patch"),
    pytest.param("PUT", "", {"title": "Pay rent", "completed": True}, id="put"),
]


def _occurrences(tasks: list[dict[str, Any]], title: str = "Pay rent") -> list[dict[str, Any]]:
    return sorted((t for t in tasks if t["title"] == title), key=lambda t: t["due_at"])


@pytest.mark.parametrize(("method", "suffix", "body"), COMPLETIONS)
async def test_a_reminder_that_would_leave_the_calendar_is_dropped_not_the_completion(
    client: httpx.AsyncClient, auth: Auth, method: str, suffix: str, body: dict[str, Any] | None
) -> None:
    # The next reminder is the next due date plus (remind_at - due_at): with the reminder far
    # after the due date that overflowed, a 500, and the task could never be completed.
    first = await create(client, auth, {**MONTHLY, "remind_at": "9999-12-31T00:00:00Z"})
    url = f"/api/alice/tasks/{first['id']}{suffix}"
    done = ok(await client.request(method, url, json=body, headers=auth("alice")))
    assert done["completed"] is True
    (nxt,) = [t for t in await list_all(client, auth) if t["id"] != first["id"]]
    assert (nxt["due_at"], nxt["remind_at"]) == ("2026-02-28T09:00:00Z", None)


@pytest.mark.parametrize(("method", "suffix", "body"), COMPLETIONS)
async def test_completing_creates_the_next_occurrence_once(
    client: httpx.AsyncClient, auth: Auth, method: str, suffix: str, body: dict[str, Any] | None
) -> None:
    first = await create(client, auth, MONTHLY)
    url = f"/api/alice/tasks/{first['id']}{suffix}"
    done = ok(await client.request(method, url, json=body, headers=auth("alice")))
    assert done["completed"] is True
    assert done["completed_at"] == done["updated_at"]
    assert done["version"] == 2
    tasks = await list_all(client, auth)
    assert len(tasks) == 2
    (nxt,) = [t for t in tasks if t["id"] != first["id"]]
    assert nxt == {
        **MONTHLY,
        "id": nxt["id"],
        "user_id": "alice",
        "completed": False,
        "completed_at": None,
        "due_at": "2026-02-28T09:00:00Z",
        "remind_at": "2026-02-27T18:00:00Z",  # the same 15 hours before
        "created_at": nxt["created_at"],
        "updated_at": nxt["created_at"],
        "version": 1,
    }
    # Repeating the completion, or toggling back and forth, never makes another.
    ok(await client.request(method, url, json=body, headers=auth("alice")))
    for _ in range(3):
        ok(await client.patch(f"/api/alice/tasks/{first['id']}/complete", headers=auth("alice")))
    assert len(await list_all(client, auth)) == 2


async def test_a_series_stays_anchored_to_its_first_day(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    task = await create(client, auth, MONTHLY)
    for _ in range(4):
        ok(await client.patch(f"/api/alice/tasks/{task['id']}/complete", headers=auth("alice")))
        pending = [t for t in await list_all(client, auth) if not t["completed"]]
        assert len(pending) == 1
        task = pending[0]
    dues = [t["due_at"][:10] for t in _occurrences(await list_all(client, auth))]
    assert dues == ["2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31"]


async def test_moving_the_due_date_restarts_the_series_from_it(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    task = await create(client, auth, MONTHLY)
    url = f"/api/alice/tasks/{task['id']}"
    ok(await client.patch(url, json={"due_at": "2026-02-15T09:00:00Z"}, headers=auth("alice")))
    ok(await client.patch(f"{url}/complete", headers=auth("alice")))
    dues = [t["due_at"] for t in _occurrences(await list_all(client, auth))]
    assert dues == ["2026-02-15T09:00:00Z", "2026-03-15T09:00:00Z"]


async def test_the_sender_s_offset_decides_the_day(client: httpx.AsyncClient, auth: Auth) -> None:
    body = {**MONTHLY, "due_at": "2026-01-31T09:00:00+11:00", "remind_at": None}
    task = await create(client, auth, body)
    assert task["due_at"] == "2026-01-30T22:00:00Z"
    ok(await client.patch(f"/api/alice/tasks/{task['id']}/complete", headers=auth("alice")))
    dues = [t["due_at"] for t in _occurrences(await list_all(client, auth))]
    assert dues == ["2026-01-30T22:00:00Z", "2026-02-27T22:00:00Z"]  # Feb 28, 09:00 at +11


async def test_completing_while_removing_the_recurrence_creates_nothing(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    task = await create(client, auth, MONTHLY)
    body = {"title": "Pay rent", "completed": True, "recurrence": None}
    done = ok(await client.put(f"/api/alice/tasks/{task['id']}", json=body, headers=auth("alice")))
    assert (done["completed"], done["recurrence"]) == (True, None)
    assert len(await list_all(client, auth)) == 1


async def test_making_a_task_recur_while_completing_it_creates_the_next(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    task = await create(client, auth, {"title": "Pay rent", "due_at": MONTHLY["due_at"]})
    body = {"completed": True, "recurrence": {"frequency": "weekly", "interval": 1}}
    ok(await client.patch(f"/api/alice/tasks/{task['id']}", json=body, headers=auth("alice")))
    dues = [t["due_at"] for t in _occurrences(await list_all(client, auth))]
    assert dues == ["2026-01-31T09:00:00Z", "2026-02-07T09:00:00Z"]


async def test_a_task_of_another_user_is_still_not_found(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    task = await create(client, auth, MONTHLY)
    for body in (None, {"completed": True}):
        response = await client.patch(
            f"/api/bob/tasks/{task['id']}/complete", json=body, headers=auth("bob")
        )
        assert response.status_code == 404, response.text
    assert len(await list_all(client, auth)) == 1
    assert await list_all(client, auth, "bob") == []


@pytest.mark.parametrize(
    "body", [pytest.param({"completed": True}, id="set"), pytest.param(None, id="toggle")]
)
async def test_racing_completions_create_one_occurrence(
    client: httpx.AsyncClient, auth: Auth, body: dict[str, Any] | None
) -> None:
    task = await create(client, auth, MONTHLY)
    url = f"/api/alice/tasks/{task['id']}/complete"
    n = 9
    responses = await asyncio.gather(
        *(client.patch(url, json=body, headers=auth("alice")) for _ in range(n))
    )
    assert [r.status_code for r in responses] == [200] * n, [r.text for r in responses]
    tasks = await list_all(client, auth)
    first = next(t for t in tasks if t["id"] == task["id"])
    # Toggles leave the parity of their number; either way one occurrence at most, and exactly
    # one as soon as the task was completed once.
    assert first["completed"] is True
    assert len(tasks) == 2
    assert sorted(t["due_at"] for t in tasks) == ["2026-01-31T09:00:00Z", "2026-02-28T09:00:00Z"]
