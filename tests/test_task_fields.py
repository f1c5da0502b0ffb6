"""The organising fields — priority, tags, due_at, remind_at, recurrence, completed_at — through
the real app on both databases: their rules and errors on create, PUT and PATCH, and that a
client which does not know them never wipes them."""

from typing import Any

import httpx
import pytest
from sqlalchemy import event

from backend.schemas.task import TaskCreate, TaskRead, TaskReplace, TaskUpdate
from backend.services.tables import PUBLIC_COLUMNS, task_table
from backend.web.state import app_state
from tests.helpers import Auth, assert_validation, create, fetch, list_all, ok

READ_ONLY = {"id", "user_id", "created_at", "updated_at", "completed_at", "version"}
DUE = "2026-12-01T09:00:00Z"
ORGANISED = {
    "title": "Pay rent",
    "priority": "high",
    "tags": ["home", "money"],
    "due_at": DUE,
    "remind_at": "2026-12-01T08:00:00Z",
    "recurrence": {"frequency": "monthly", "interval": 1},
}


# --- one definition ------------------------------------------------------------------------------


def test_the_fields_are_declared_once_and_checked_against_each_other() -> None:
    public = list(TaskRead.model_fields)
    writable = list(TaskUpdate.model_fields)
    # PUT and POST take exactly PATCH's fields (only the title's requiredness differs).
    assert list(TaskReplace.model_fields) == writable
    assert list(TaskCreate.model_fields) == writable
    # Every writable field is public, and every public field is writable or read-only.
    assert set(writable) <= set(public)
    assert set(public) - set(writable) == READ_ONLY
    # Every public field is a column, and the services return exactly those.
    assert [column.name for column in PUBLIC_COLUMNS] == public
    assert set(public) <= set(task_table.c.keys())


# --- defaults and a full task --------------------------------------------------------------------


async def test_create_with_every_field(client: httpx.AsyncClient, auth: Auth) -> None:
    task = await create(client, auth, {**ORGANISED, "description": "by the 1st"})
    assert task == {
        "id": task["id"],
        "user_id": "alice",
        "description": "by the 1st",
        "completed": False,
        "completed_at": None,
        "created_at": task["created_at"],
        "updated_at": task["created_at"],
        "version": 1,
        **ORGANISED,
    }
    assert await fetch(client, auth, task["id"]) == task


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        pytest.param("2026-12-01T10:00:00+01:00", "2026-12-01T09:00:00Z", id="offset"),
        pytest.param("2026-12-01T04:00:00-05:00", "2026-12-01T09:00:00Z", id="negative-offset"),
        pytest.param("2026-12-01T09:00:00.5Z", "2026-12-01T09:00:00.500000Z", id="fraction"),
        pytest.param("2026-12-01T09:00Z", "2026-12-01T09:00:00Z", id="no-seconds"),
        # The nearest to the calendar's ends that is kept (see the refused ends below).
        pytest.param("0001-01-01T00:00:00.000001Z", "0001-01-01T00:00:00.000001Z", id="first"),
        pytest.param("9999-12-31T23:59:59.999998Z", "9999-12-31T23:59:59.999998Z", id="last"),
    ],
)
async def test_dates_are_returned_in_utc(
    client: httpx.AsyncClient, auth: Auth, sent: str, stored: str
) -> None:
    task = await create(client, auth, {"title": "t", "due_at": sent, "remind_at": sent})
    assert (task["due_at"], task["remind_at"]) == (stored, stored)
    assert await fetch(client, auth, task["id"]) == task


# --- validation ----------------------------------------------------------------------------------

INVALID = [
    pytest.param("priority", "critical", id="priority-unknown"),
    pytest.param("priority", "CRITICAL", id="priority-unknown-upper"),
    pytest.param("priority", "", id="priority-empty"),
    pytest.param("priority", 3, id="priority-number"),
    pytest.param("priority", None, id="priority-null"),
    pytest.param("tags", "work", id="tags-string"),
    pytest.param("tags", None, id="tags-null"),
    pytest.param("tags", [1], id="tags-number"),
    pytest.param("tags", [""], id="tags-empty"),
    pytest.param("tags", ["   "], id="tags-blank"),
    pytest.param("tags", ["\u200b"], id="tags-zero-width"),
    pytest.param("tags", ["x" * 33], id="tags-33-characters"),
    pytest.param("tags", ["a\x00b"], id="tags-nul"),
    pytest.param("tags", ["a\u0085"], id="tags-c1"),
    pytest.param("tags", [f"t{n}" for n in range(21)], id="tags-21"),
    pytest.param("due_at", "2026-12-01T09:00:00", id="due-naive"),
    pytest.param("due_at", "2026-12-01", id="due-date-only"),
    pytest.param("due_at", "tomorrow", id="due-garbage"),
    pytest.param("due_at", 1764579600, id="due-number"),
    pytest.param("due_at", "1764579600", id="due-digits"),
    pytest.param("due_at", "-1764579600.5", id="due-negative-digits"),
    pytest.param("due_at", "0001-01-01T00:00:00+01:00", id="due-before-year-1-in-utc"),
    # PostgreSQL's driver would store these two as -infinity and infinity.
    pytest.param("due_at", "0001-01-01T00:00:00Z", id="due-first-instant"),
    pytest.param("due_at", "9999-12-31T23:59:59.999999Z", id="due-last-instant"),
    pytest.param("remind_at", "9999-12-31T23:59:59.999999+00:00", id="remind-last-instant"),
    pytest.param("remind_at", "2026-12-01T09:00:00", id="remind-naive"),
    pytest.param("remind_at", True, id="remind-bool"),
    pytest.param("recurrence", "daily", id="recurrence-string"),
    # The field names the member of the rule that is wrong.
    pytest.param("recurrence.frequency", {"frequency": "hourly"}, id="recurrence-frequency"),
    pytest.param("recurrence.frequency", {"interval": 2}, id="recurrence-no-frequency"),
    pytest.param("recurrence.interval", {"frequency": "daily", "interval": 0}, id="interval-0"),
    pytest.param("recurrence.interval", {"frequency": "daily", "interval": 366}, id="i-366"),
    pytest.param("recurrence.interval", {"frequency": "daily", "interval": "2"}, id="i-text"),
    pytest.param("recurrence.interval", {"frequency": "daily", "interval": 1.5}, id="i-float"),
]


@pytest.mark.parametrize(("field", "value"), INVALID)
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_invalid_value_is_422_and_changes_nothing(
    client: httpx.AsyncClient, auth: Auth, method: str, field: str, value: Any
) -> None:
    existing = await create(client, auth, {**ORGANISED, "title": "existing"})
    body = {"title": "t", "due_at": DUE, field.split(".")[0]: value}
    if method == "POST":
        response = await client.post("/api/alice/tasks", json=body, headers=auth("alice"))
    else:
        url = f"/api/alice/tasks/{existing['id']}"
        response = await client.request(method, url, json=body, headers=auth("alice"))
    assert_validation(response, field)
    assert await list_all(client, auth) == [existing]


async def test_an_unknown_priority_is_422_naming_the_four(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    response = await client.post(
        "/api/alice/tasks", json={"title": "t", "priority": "Critical"}, headers=auth("alice")
    )
    assert_validation(response, "priority")
    assert response.json()["detail"] == (
        "priority: Input should be 'low', 'medium', 'high' or 'urgent'"
    )


@pytest.mark.parametrize("sent", ["urgent", "URGENT", "Urgent", "uRgEnT", "MEDIUM", "low", "High"])
async def test_a_priority_is_taken_in_any_case_and_returned_lowercase(
    client: httpx.AsyncClient, auth: Auth, sent: str
) -> None:
    # A public hackathon frontend sends "MEDIUM" from its LOW/MEDIUM/HIGH/URGENT options.
    stored = sent.lower()
    created = await create(client, auth, {"title": "t", "priority": sent})
    assert created["priority"] == stored
    url = f"/api/alice/tasks/{created['id']}"
    for method, body in (
        ("PATCH", {"priority": "low"}),
        ("PATCH", {"priority": sent}),
        ("PUT", {"title": "t", "priority": "LOW"}),
        ("PUT", {"title": "t", "priority": sent}),
    ):
        response = await client.request(method, url, json=body, headers=auth("alice"))
        assert ok(response)["priority"] == body["priority"].lower()
    assert (await fetch(client, auth, created["id"]))["priority"] == stored


async def test_tags_are_trimmed_deduplicated_in_any_case_and_keep_their_order(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    tags = [" Work ", "home", "WORK", "Été", "éTÉ", "x" * 32, "home"]
    task = await create(client, auth, {"title": "t", "tags": tags})
    assert task["tags"] == ["Work", "home", "Été", "x" * 32]
    # 25 given, 20 once duplicates are dropped: accepted.
    many = [f"t{n}" for n in range(20)] + [f"T{n}" for n in range(5)]
    task = await create(client, auth, {"title": "t", "tags": many})
    assert task["tags"] == [f"t{n}" for n in range(20)]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_recurrence_without_a_due_date_in_the_body_is_422(
    client: httpx.AsyncClient, auth: Auth, method: str
) -> None:
    existing = await create(client, auth, {"title": "existing"})
    body: dict[str, Any] = {"title": "t", "recurrence": {"frequency": "daily"}, "due_at": None}
    if method == "POST":
        del body["due_at"]
        response = await client.post("/api/alice/tasks", json=body, headers=auth("alice"))
    else:
        url = f"/api/alice/tasks/{existing['id']}"
        response = await client.request(method, url, json=body, headers=auth("alice"))
    assert_validation(response, "recurrence")
    assert await list_all(client, auth) == [existing]


async def test_recurrence_on_a_task_without_a_due_date_is_422(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    # The body alone looks fine; the task has no due date (a CHECK in the table says so).
    existing = await create(client, auth, {"title": "no due date"})
    url = f"/api/alice/tasks/{existing['id']}"
    for method in ("PATCH", "PUT"):
        body = {"title": "t", "recurrence": {"frequency": "weekly"}}
        response = await client.request(method, url, json=body, headers=auth("alice"))
        assert_validation(response, "recurrence")
        assert await fetch(client, auth, existing["id"]) == existing


async def test_clearing_the_due_date_of_a_recurring_task_is_422(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    existing = await create(client, auth, ORGANISED)
    url = f"/api/alice/tasks/{existing['id']}"
    response = await client.patch(url, json={"due_at": None}, headers=auth("alice"))
    assert_validation(response, "due_at")
    assert await fetch(client, auth, existing["id"]) == existing
    # Both together: no longer recurring, no due date.
    both = {"due_at": None, "recurrence": None}
    task = ok(await client.patch(url, json=both, headers=auth("alice")))
    assert (task["due_at"], task["recurrence"]) == (None, None)


async def test_recurrence_interval_defaults_to_1(client: httpx.AsyncClient, auth: Auth) -> None:
    task = await create(
        client, auth, {"title": "t", "due_at": DUE, "recurrence": {"frequency": "yearly"}}
    )
    assert task["recurrence"] == {"frequency": "yearly", "interval": 1}


# --- what a write changes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"title": "renamed"}, id="title"),
        pytest.param({"title": "renamed", "description": "d"}, id="title-description"),
        pytest.param({"title": "renamed", "completed": False}, id="title-completed"),
    ],
)
@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_a_client_of_the_original_fields_never_wipes_the_new_ones(
    client: httpx.AsyncClient, auth: Auth, method: str, body: dict[str, Any]
) -> None:
    existing = await create(client, auth, ORGANISED)
    url = f"/api/alice/tasks/{existing['id']}"
    task = ok(await client.request(method, url, json=body, headers=auth("alice")))
    for field in ORGANISED.keys() - {"title"}:
        assert task[field] == existing[field], field


async def test_each_field_changes_alone(client: httpx.AsyncClient, auth: Auth) -> None:
    existing = await create(client, auth, ORGANISED)
    url = f"/api/alice/tasks/{existing['id']}"
    changes: list[dict[str, Any]] = [
        {"priority": "low"},
        {"tags": ["other"]},
        {"tags": []},
        {"due_at": "2027-01-01T00:00:00Z"},
        {"remind_at": None},
        {"recurrence": {"frequency": "weekly", "interval": 2}},
        {"recurrence": None},
        {"due_at": None},
    ]
    expected = existing
    for change in changes:
        task = ok(await client.patch(url, json=change, headers=auth("alice")))
        version = expected["version"] + 1
        expected = {**expected, **change, "updated_at": task["updated_at"], "version": version}
        assert task == expected, change
        assert task["updated_at"] > existing["updated_at"]
    assert await fetch(client, auth, existing["id"]) == expected


async def test_sending_back_what_was_read_changes_nothing(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    # JSON values (tags, recurrence) compare by value on both databases: updated_at stays.
    existing = await create(client, auth, ORGANISED)
    url = f"/api/alice/tasks/{existing['id']}"
    for method in ("PUT", "PATCH"):
        task = ok(await client.request(method, url, json=existing, headers=auth("alice")))
        assert task == existing
    # The same instant written with another offset is the same value.
    same = {"due_at": "2026-12-01T10:00:00+01:00"}
    assert ok(await client.patch(url, json=same, headers=auth("alice"))) == existing


async def test_completed_at_follows_completed_and_is_read_only(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    task = await create(client, auth, {"title": "t", "completed_at": "2000-01-01T00:00:00Z"})
    assert task["completed_at"] is None
    url = f"/api/alice/tasks/{task['id']}"
    ways: list[tuple[str, str, dict[str, Any] | None]] = [
        ("PATCH", f"{url}/complete", None),  # toggle on
        ("PATCH", f"{url}/complete", None),  # toggle off
        ("PATCH", f"{url}/complete", {"completed": True}),
        ("PATCH", url, {"completed": False}),
        ("PUT", url, {"title": "t", "completed": True}),
    ]
    for method, path, body in ways:
        task = ok(await client.request(method, path, json=body, headers=auth("alice")))
        if task["completed"]:
            assert task["completed_at"] == task["updated_at"]
        else:
            assert task["completed_at"] is None
    # Completing what is already complete keeps the moment it was completed.
    again = ok(
        await client.patch(url, json={"completed": True, "title": "t2"}, headers=auth("alice"))
    )
    assert again["completed_at"] == task["completed_at"]
    assert again["updated_at"] > task["updated_at"]


# --- one statement per request -------------------------------------------------------------------


async def test_a_request_on_a_task_that_does_not_recur_is_one_statement(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    statements: list[str] = []
    engine = app_state(client._transport.app).db.engine.sync_engine  # type: ignore[attr-defined]

    def count(*args: Any) -> None:
        statements.append(args[2])

    task = await create(client, auth, {"title": "t", "tags": ["a"], "due_at": DUE})
    url = f"/api/alice/tasks/{task['id']}"
    requests: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", url, None),
        ("GET", "/api/alice/tasks?tag=a&sort=due_at", None),
        ("POST", "/api/alice/tasks", {"title": "u", "priority": "low"}),
        ("PUT", url, {"title": "t2", "tags": ["b"]}),
        ("PATCH", url, {"completed": True}),
        ("PATCH", f"{url}/complete", None),
        ("PATCH", f"{url}/complete", {"completed": True}),
        ("DELETE", url, None),
    ]
    event.listen(engine, "before_cursor_execute", count)
    try:
        for method, path, body in requests:
            statements.clear()
            response = await client.request(method, path, json=body, headers=auth("alice"))
            assert response.status_code in (200, 201), response.text
            assert len(statements) == 1, (method, path, statements)
    finally:
        event.remove(engine, "before_cursor_execute", count)
