"""Every route of /api/{user_id}/tasks… through the real app: success paths with exact bodies,
then input hardening (limits, control characters, strict types, task ids, Unicode)."""

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, update

from backend import db
from backend.config import Settings
from backend.schemas.task import TaskRead
from backend.services.tables import PUBLIC_COLUMNS, task_table
from tests.fixtures.app import SteppingClock
from tests.helpers import (
    Auth,
    Task,
    assert_error,
    assert_validation,
    create,
    fetch,
    list_all,
    ok,
    parse_time,
)

TASK_KEYS = {
    "id",
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
    "version",
}
JSON = {"content-type": "application/json"}


async def set_created_at(settings: Settings, times: dict[int, datetime]) -> None:
    """Pin created_at in the database, to test ordering without depending on the clock."""
    engine = db.make_engine(settings, for_requests=False)
    try:
        async with engine.begin() as conn:
            for task_id, created_at in times.items():
                await conn.execute(
                    update(task_table)
                    .where(task_table.c.id == task_id)
                    .values(created_at=created_at, updated_at=created_at)
                )
    finally:
        await engine.dispose()


# --- list ---------------------------------------------------------------------------------


async def test_list_is_empty_at_first(client: httpx.AsyncClient, auth: Auth) -> None:
    assert ok(await client.get("/api/alice/tasks", headers=auth("alice"))) == []


async def test_list_is_newest_first(
    client: httpx.AsyncClient, clock: SteppingClock, auth: Auth
) -> None:
    first = await create(client, auth, {"title": "first"})
    second = await create(client, auth, {"title": "second"})
    third = await create(client, auth, {"title": "third"})
    assert await list_all(client, auth) == [third, second, first]


async def test_list_orders_by_created_at_then_id_descending(
    client: httpx.AsyncClient, auth: Auth, settings: Settings
) -> None:
    a, b, c, d = [await create(client, auth, {"title": title}) for title in "abcd"]
    early = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    late = datetime(2026, 1, 2, 12, 0, 0, tzinfo=UTC)
    # a is the oldest id but the newest task; b, c and d tie on created_at.
    await set_created_at(settings, {a["id"]: late, b["id"]: early, c["id"]: early, d["id"]: early})
    listed = await list_all(client, auth)
    assert [task["id"] for task in listed] == [a["id"], d["id"], c["id"], b["id"]]
    assert [task["created_at"] for task in listed] == [
        "2026-01-02T12:00:00Z",
        "2026-01-01T12:00:00Z",
        "2026-01-01T12:00:00Z",
        "2026-01-01T12:00:00Z",
    ]


async def test_list_without_limit_returns_at_most_500_newest_first(
    client: httpx.AsyncClient, auth: Auth, settings: Settings
) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        {
            "user_id": "alice",
            "title": f"task {n}",
            "completed": False,
            "created_at": start + timedelta(seconds=n),
            "updated_at": start + timedelta(seconds=n),
        }
        for n in range(501)
    ]
    engine = db.make_engine(settings, for_requests=False)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(task_table), rows)
    finally:
        await engine.dispose()
    listed = await list_all(client, auth)
    assert [task["title"] for task in listed] == [f"task {n}" for n in range(500, 0, -1)]


async def test_list_limit(client: httpx.AsyncClient, clock: SteppingClock, auth: Auth) -> None:
    tasks = []
    for title in ("one", "two", "three"):
        tasks.append(await create(client, auth, {"title": title}))
    newest_first = tasks[::-1]
    for limit, expected in ((1, newest_first[:1]), (2, newest_first[:2]), (3, newest_first)):
        response = await client.get(
            "/api/alice/tasks", params={"limit": limit}, headers=auth("alice")
        )
        assert ok(response) == expected
    response = await client.get("/api/alice/tasks", params={"limit": 500}, headers=auth("alice"))
    assert ok(response) == newest_first


@pytest.mark.parametrize("limit", ["0", "-1", "501", "1000000", "abc", "1.5"])
async def test_list_bad_limit_is_422(client: httpx.AsyncClient, auth: Auth, limit: str) -> None:
    response = await client.get("/api/alice/tasks", params={"limit": limit}, headers=auth("alice"))
    assert_validation(response, "limit")


async def test_list_ignores_unknown_query_parameters(client: httpx.AsyncClient, auth: Auth) -> None:
    task = await create(client, auth, {"title": "kept"})
    response = await client.get(
        "/api/alice/tasks", params={"foo": "bar", "user_id": "bob"}, headers=auth("alice")
    )
    assert ok(response) == [task]


async def test_list_has_only_the_users_tasks(client: httpx.AsyncClient, auth: Auth) -> None:
    mine = await create(client, auth, {"title": "mine"})
    theirs = await create(client, auth, {"title": "theirs"}, user="bob")
    assert await list_all(client, auth) == [mine]
    assert await list_all(client, auth, "bob") == [theirs]


# --- create -------------------------------------------------------------------------------


async def test_create_defaults(client: httpx.AsyncClient, auth: Auth) -> None:
    before = datetime.now(UTC)
    response = await client.post(
        "/api/alice/tasks", json={"title": "  Buy milk \n"}, headers=auth("alice")
    )
    after = datetime.now(UTC)
    task = ok(response, 201)
    assert set(task) == TASK_KEYS
    assert isinstance(task["id"], int)
    assert response.headers["location"] == f"/api/alice/tasks/{task['id']}"
    assert task == {
        "id": task["id"],
        "user_id": "alice",
        "title": "Buy milk",
        "description": None,
        "completed": False,
        "created_at": task["created_at"],
        "updated_at": task["created_at"],
        "priority": "medium",
        "tags": [],
        "due_at": None,
        "remind_at": None,
        "recurrence": None,
        "completed_at": None,
        "version": 1,
    }
    assert response.headers["etag"] == '"1"'
    assert before <= parse_time(task["created_at"]) <= after
    assert await fetch(client, auth, task["id"]) == task
    assert await list_all(client, auth) == [task]


async def test_create_with_every_original_field(client: httpx.AsyncClient, auth: Auth) -> None:
    task = await create(
        client, auth, {"title": "Write report", "description": "  by Friday  ", "completed": True}
    )
    assert task == {
        "id": task["id"],
        "user_id": "alice",
        "title": "Write report",
        "description": "  by Friday  ",  # descriptions are stored exactly, not trimmed
        "completed": True,
        "created_at": task["created_at"],
        "updated_at": task["created_at"],
        "priority": "medium",
        "tags": [],
        "due_at": None,
        "remind_at": None,
        "recurrence": None,
        "completed_at": task["created_at"],  # completed when created
        "version": 1,
    }
    parse_time(task["created_at"])


async def test_create_ignores_unknown_and_read_only_fields(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    body = {
        "title": "t",
        "id": 424242,
        "user_id": "bob",
        "created_at": "2000-01-01T00:00:00Z",
        "updated_at": "2000-01-01T00:00:00Z",
        "version": 7,
        "foo": "bar",
        "nested": {"a": [1, 2]},
    }
    task = await create(client, auth, body)
    assert task["id"] != 424242
    assert task["version"] == 1
    assert task["user_id"] == "alice"
    assert task["created_at"] != "2000-01-01T00:00:00Z"
    assert task["updated_at"] == task["created_at"]
    assert set(task) == TASK_KEYS
    assert await list_all(client, auth, "bob") == []
    assert await list_all(client, auth) == [task]


async def test_create_ids_are_distinct(client: httpx.AsyncClient, auth: Auth) -> None:
    a = await create(client, auth, {"title": "a"})
    b = await create(client, auth, {"title": "b"})
    assert a["id"] != b["id"]


async def test_create_without_title_is_422(client: httpx.AsyncClient, auth: Auth) -> None:
    response = await client.post(
        "/api/alice/tasks", json={"description": "d"}, headers=auth("alice")
    )
    assert_validation(response, "title")
    assert await list_all(client, auth) == []


# --- get ----------------------------------------------------------------------------------


async def test_get(client: httpx.AsyncClient, auth: Auth) -> None:
    created = await create(client, auth, {"title": "t", "description": "d", "completed": True})
    response = await client.get(f"/api/alice/tasks/{created['id']}", headers=auth("alice"))
    assert ok(response) == created


async def test_get_missing_is_404(client: httpx.AsyncClient, auth: Auth) -> None:
    response = await client.get("/api/alice/tasks/123456", headers=auth("alice"))
    assert_error(response, 404, "TASK_NOT_FOUND")


# --- PUT ----------------------------------------------------------------------------------


async def test_put_replaces_every_field(
    client: httpx.AsyncClient, clock: SteppingClock, auth: Auth
) -> None:
    created = await create(client, auth, {"title": "old", "description": "old d"})
    response = await client.put(
        f"/api/alice/tasks/{created['id']}",
        json={"title": "  new  ", "description": "new d", "completed": True},
        headers=auth("alice"),
    )
    task = ok(response)
    assert task == {
        **created,
        "title": "new",
        "description": "new d",
        "completed": True,
        "updated_at": task["updated_at"],
        "completed_at": task["updated_at"],
        "version": 2,
    }
    assert parse_time(task["updated_at"]) > parse_time(created["updated_at"])
    assert "location" not in response.headers
    assert response.headers["etag"] == '"2"'
    assert await fetch(client, auth, created["id"]) == task


async def test_put_description_may_be_null(client: httpx.AsyncClient, auth: Auth) -> None:
    created = await create(client, auth, {"title": "t", "description": "d", "completed": True})
    response = await client.put(
        f"/api/alice/tasks/{created['id']}",
        json={"title": "t", "description": None, "completed": False},
        headers=auth("alice"),
    )
    task = ok(response)
    assert task == {
        **created,
        "description": None,
        "completed": False,
        "updated_at": task["updated_at"],
        "completed_at": None,
        "version": 2,
    }
    assert await fetch(client, auth, created["id"]) == task


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="empty"),
        pytest.param({"status": "IN_PROGRESS"}, id="only-a-field-this-api-does-not-have"),
        pytest.param({"description": "new", "completed": True}, id="no-title"),
        pytest.param({"title": None, "completed": True}, id="null-title"),
    ],
)
async def test_put_without_title_is_422_and_changes_nothing(
    client: httpx.AsyncClient, auth: Auth, body: dict[str, Any]
) -> None:
    created = await create(client, auth, {"title": "t", "description": "d"})
    response = await client.put(
        f"/api/alice/tasks/{created['id']}", json=body, headers=auth("alice")
    )
    assert_validation(response, "title")
    assert await fetch(client, auth, created["id"]) == created


# What frontends written for the original spec send as their "update" (seen in real client code).
PUT_BODIES_OF_REAL_CLIENTS = [
    pytest.param({"title": "new"}, {}, id="title-only"),
    pytest.param({"title": "new", "description": "nd"}, {"description": "nd"}, id="title-desc"),
    pytest.param({"title": "new", "completed": True}, {"completed": True}, id="title-completed"),
    pytest.param(
        {
            "title": "new",
            "description": "nd",
            "due_date": "2026-12-01",
            "priority": "high",
            "status": "IN_PROGRESS",
        },
        {"description": "nd", "priority": "high"},
        id="title-desc-priority-and-fields-this-api-does-not-have",
    ),
    pytest.param(
        {"title": "new", "description": "nd", "due_date": None},
        {"description": "nd"},
        id="title-desc-due-date",
    ),
]


@pytest.mark.parametrize(("body", "changed"), PUT_BODIES_OF_REAL_CLIENTS)
async def test_put_keeps_every_field_left_out(
    client: httpx.AsyncClient,
    clock: SteppingClock,
    auth: Auth,
    body: dict[str, Any],
    changed: dict[str, Any],
) -> None:
    created = await create(client, auth, {"title": "t", "description": "d", "completed": True})
    created = ok(
        await client.patch(
            f"/api/alice/tasks/{created['id']}", json={"completed": False}, headers=auth("alice")
        )
    )
    response = await client.put(
        f"/api/alice/tasks/{created['id']}", json=body, headers=auth("alice")
    )
    task = ok(response)
    completed_at = task["updated_at"] if changed.get("completed") else None
    assert created["version"] == 2
    expected = {**created, "title": "new", **changed, "completed_at": completed_at, "version": 3}
    assert task == {**expected, "updated_at": task["updated_at"]}
    assert parse_time(task["updated_at"]) > parse_time(created["updated_at"])
    assert await fetch(client, auth, created["id"]) == task


async def test_put_of_a_form_that_drops_an_empty_description(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    # `description: value.trim() || undefined`: JSON drops the field for a task that has none.
    created = await create(client, auth, {"title": "t"})
    response = await client.put(
        f"/api/alice/tasks/{created['id']}", json={"title": "edited"}, headers=auth("alice")
    )
    task = ok(response)
    assert task == {**created, "title": "edited", "updated_at": task["updated_at"], "version": 2}


async def test_put_null_completed_is_422(client: httpx.AsyncClient, auth: Auth) -> None:
    created = await create(client, auth, {"title": "t", "completed": True})
    response = await client.put(
        f"/api/alice/tasks/{created['id']}",
        json={"title": "t2", "completed": None},
        headers=auth("alice"),
    )
    assert_validation(response, "completed")
    assert await fetch(client, auth, created["id"]) == created


async def test_put_ignores_read_only_and_unknown_fields(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    created = await create(client, auth, {"title": "t"})
    # A client PUTs back the whole object it read, edited, plus things it should not send.
    body = {
        **created,
        "title": "edited",
        "id": created["id"] + 1000,
        "user_id": "bob",
        "created_at": "2000-01-01T00:00:00Z",
        "updated_at": "2000-01-01T00:00:00Z",
        "version": 1000,
        "foo": [1, 2, 3],
    }
    response = await client.put(
        f"/api/alice/tasks/{created['id']}", json=body, headers=auth("alice")
    )
    task = ok(response)
    assert task == {**created, "title": "edited", "updated_at": task["updated_at"], "version": 2}
    assert task["updated_at"] != "2000-01-01T00:00:00Z"
    assert await list_all(client, auth) == [task]
    assert await list_all(client, auth, "bob") == []
    response = await client.get(f"/api/bob/tasks/{created['id']}", headers=auth("bob"))
    assert_error(response, 404, "TASK_NOT_FOUND")


async def test_put_same_values_keeps_updated_at(
    client: httpx.AsyncClient, clock: SteppingClock, auth: Auth
) -> None:
    created = await create(client, auth, {"title": "t", "description": "d", "completed": True})
    response = await client.put(
        f"/api/alice/tasks/{created['id']}",
        json={"title": " t ", "description": "d", "completed": True},
        headers=auth("alice"),
    )
    assert ok(response) == created


async def test_put_missing_task_is_404(client: httpx.AsyncClient, auth: Auth) -> None:
    response = await client.put(
        "/api/alice/tasks/123456",
        json={"title": "t", "description": None, "completed": False},
        headers=auth("alice"),
    )
    assert_error(response, 404, "TASK_NOT_FOUND")
    assert await list_all(client, auth) == []


# --- PATCH --------------------------------------------------------------------------------


async def test_patch_changes_only_the_fields_sent(
    client: httpx.AsyncClient, clock: SteppingClock, auth: Auth
) -> None:
    created = await create(client, auth, {"title": "t", "description": "d", "completed": True})
    url = f"/api/alice/tasks/{created['id']}"
    task = ok(await client.patch(url, json={"title": " new "}, headers=auth("alice")))
    assert task == {**created, "title": "new", "updated_at": task["updated_at"], "version": 2}
    assert parse_time(task["updated_at"]) > parse_time(created["updated_at"])

    later = ok(await client.patch(url, json={"completed": False}, headers=auth("alice")))
    expected = {**task, "completed": False, "completed_at": None, "version": 3}
    assert later == {**expected, "updated_at": later["updated_at"]}
    assert parse_time(later["updated_at"]) > parse_time(task["updated_at"])

    last = ok(await client.patch(url, json={"description": "e"}, headers=auth("alice")))
    expected = {**later, "description": "e", "version": 4}
    assert last == {**expected, "updated_at": last["updated_at"]}
    assert parse_time(last["updated_at"]) > parse_time(later["updated_at"])
    assert last["created_at"] == created["created_at"]
    assert await fetch(client, auth, created["id"]) == last


async def test_patch_empty_object_changes_nothing(
    client: httpx.AsyncClient, clock: SteppingClock, auth: Auth
) -> None:
    created = await create(client, auth, {"title": "t", "description": "d", "completed": True})
    response = await client.patch(
        f"/api/alice/tasks/{created['id']}", json={}, headers=auth("alice")
    )
    assert ok(response) == created
    assert await fetch(client, auth, created["id"]) == created


async def test_patch_ignores_unknown_and_read_only_fields(
    client: httpx.AsyncClient, clock: SteppingClock, auth: Auth
) -> None:
    created = await create(client, auth, {"title": "t"})
    body = {"id": 999, "user_id": "bob", "created_at": "2000-01-01T00:00:00Z", "foo": 1}
    response = await client.patch(
        f"/api/alice/tasks/{created['id']}", json=body, headers=auth("alice")
    )
    assert ok(response) == created
    assert await list_all(client, auth, "bob") == []


async def test_patch_description_null_clears_it(
    client: httpx.AsyncClient, clock: SteppingClock, auth: Auth
) -> None:
    created = await create(client, auth, {"title": "t", "description": "d"})
    response = await client.patch(
        f"/api/alice/tasks/{created['id']}", json={"description": None}, headers=auth("alice")
    )
    task = ok(response)
    assert task == {
        **created,
        "description": None,
        "updated_at": task["updated_at"],
        "version": 2,
    }
    assert parse_time(task["updated_at"]) > parse_time(created["updated_at"])
    assert await fetch(client, auth, created["id"]) == task


@pytest.mark.parametrize("field", ["title", "completed"])
async def test_patch_null_title_or_completed_is_422(
    client: httpx.AsyncClient, auth: Auth, field: str
) -> None:
    created = await create(client, auth, {"title": "t", "completed": True})
    response = await client.patch(
        f"/api/alice/tasks/{created['id']}", json={field: None}, headers=auth("alice")
    )
    assert_validation(response, field)
    assert await fetch(client, auth, created["id"]) == created


@pytest.mark.parametrize(
    "body",
    [
        {"title": "t"},
        {"title": "  t\t"},
        {"description": "d"},
        {"completed": True},
        {"title": "t", "description": "d", "completed": True},
    ],
)
async def test_patch_same_value_keeps_updated_at(
    client: httpx.AsyncClient, clock: SteppingClock, auth: Auth, body: dict[str, Any]
) -> None:
    created = await create(client, auth, {"title": "t", "description": "d", "completed": True})
    response = await client.patch(
        f"/api/alice/tasks/{created['id']}", json=body, headers=auth("alice")
    )
    assert ok(response) == created
    assert await fetch(client, auth, created["id"]) == created


async def test_patch_null_description_when_already_null_keeps_updated_at(
    client: httpx.AsyncClient, clock: SteppingClock, auth: Auth
) -> None:
    created = await create(client, auth, {"title": "t"})
    response = await client.patch(
        f"/api/alice/tasks/{created['id']}", json={"description": None}, headers=auth("alice")
    )
    assert ok(response) == created


@pytest.mark.parametrize("body", [{"title": "x"}, {}])
async def test_patch_missing_task_is_404(
    client: httpx.AsyncClient, auth: Auth, body: dict[str, Any]
) -> None:
    response = await client.patch("/api/alice/tasks/123456", json=body, headers=auth("alice"))
    assert_error(response, 404, "TASK_NOT_FOUND")


# --- PATCH …/complete ---------------------------------------------------------------------


async def _toggle_twice(
    client: httpx.AsyncClient, auth: Auth, request_kwargs: dict[str, Any]
) -> tuple[Task, Task, Task]:
    created = await create(client, auth, {"title": "t", "description": "d"})
    url = f"/api/alice/tasks/{created['id']}/complete"
    request = dict(request_kwargs)
    headers = {**auth("alice"), **request.pop("headers", {})}
    on = ok(await client.patch(url, headers=headers, **request))
    off = ok(await client.patch(url, headers=headers, **request))
    return created, on, off


@pytest.mark.parametrize(
    "request_kwargs",
    [
        pytest.param({}, id="no-body"),
        pytest.param({"content": b""}, id="empty-body"),
        pytest.param({"content": b"", "headers": JSON}, id="empty-body-json-type"),
        pytest.param({"json": {}}, id="empty-object"),
        pytest.param({"content": b"{}"}, id="empty-object-no-type"),
    ],
)
async def test_complete_toggles(
    client: httpx.AsyncClient, clock: SteppingClock, auth: Auth, request_kwargs: dict[str, Any]
) -> None:
    created, on, off = await _toggle_twice(client, auth, request_kwargs)
    assert on == {
        **created,
        "completed": True,
        "updated_at": on["updated_at"],
        "completed_at": on["updated_at"],
        "version": 2,
    }
    assert parse_time(on["updated_at"]) > parse_time(created["updated_at"])
    expected = {**created, "completed": False, "version": 3}
    assert off == {**expected, "updated_at": off["updated_at"]}
    assert off["completed_at"] is None
    assert parse_time(off["updated_at"]) > parse_time(on["updated_at"])
    assert await fetch(client, auth, created["id"]) == off


@pytest.mark.parametrize("value", [True, False])
async def test_complete_sets_idempotently(
    client: httpx.AsyncClient, clock: SteppingClock, auth: Auth, value: bool
) -> None:
    created = await create(client, auth, {"title": "t", "completed": not value})
    url = f"/api/alice/tasks/{created['id']}/complete"
    first = ok(await client.patch(url, json={"completed": value}, headers=auth("alice")))
    completed_at = first["updated_at"] if value else None
    assert first == {
        **created,
        "completed": value,
        "updated_at": first["updated_at"],
        "completed_at": completed_at,
        "version": 2,
    }
    assert parse_time(first["updated_at"]) > parse_time(created["updated_at"])
    second = ok(await client.patch(url, json={"completed": value}, headers=auth("alice")))
    assert second == first
    assert await fetch(client, auth, created["id"]) == first


@pytest.mark.parametrize("value", ["yes", "true", 1, 0, [True], {"v": True}, None])
async def test_complete_wrong_type_is_422(
    client: httpx.AsyncClient, auth: Auth, value: Any
) -> None:
    created = await create(client, auth, {"title": "t"})
    response = await client.patch(
        f"/api/alice/tasks/{created['id']}/complete",
        json={"completed": value},
        headers=auth("alice"),
    )
    assert_validation(response, "completed")
    assert await fetch(client, auth, created["id"]) == created


async def test_complete_missing_task_is_404(client: httpx.AsyncClient, auth: Auth) -> None:
    attempts: list[dict[str, Any]] = [{}, {"json": {"completed": True}}]
    for kwargs in attempts:
        response = await client.patch(
            "/api/alice/tasks/123456/complete", headers=auth("alice"), **kwargs
        )
        assert_error(response, 404, "TASK_NOT_FOUND")


# --- DELETE -------------------------------------------------------------------------------


async def test_delete_returns_the_task_then_it_is_gone(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    kept = await create(client, auth, {"title": "kept"})
    doomed = await create(client, auth, {"title": "doomed", "description": "d", "completed": True})
    url = f"/api/alice/tasks/{doomed['id']}"
    response = await client.delete(url, headers=auth("alice"))
    assert ok(response) == doomed

    assert_error(await client.get(url, headers=auth("alice")), 404, "TASK_NOT_FOUND")
    assert_error(await client.delete(url, headers=auth("alice")), 404, "TASK_NOT_FOUND")
    body = {"title": "x", "description": None, "completed": False}
    assert_error(await client.put(url, json=body, headers=auth("alice")), 404, "TASK_NOT_FOUND")
    assert_error(await client.patch(url, json={}, headers=auth("alice")), 404, "TASK_NOT_FOUND")
    response = await client.patch(f"{url}/complete", headers=auth("alice"))
    assert_error(response, 404, "TASK_NOT_FOUND")
    assert await list_all(client, auth) == [kept]


# --- input hardening: lengths and white space ---------------------------------------------


async def test_title_of_200_characters_is_accepted(client: httpx.AsyncClient, auth: Auth) -> None:
    title = "x" * 200
    task = await create(client, auth, {"title": title})
    assert task["title"] == title
    # Surrounding white space does not count: the limit applies after trimming.
    padded = await create(client, auth, {"title": f"  {title}  "})
    assert padded["title"] == title


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_title_of_201_characters_is_422(
    client: httpx.AsyncClient, auth: Auth, method: str
) -> None:
    await _assert_refused(client, auth, method, {"title": "x" * 201}, "title")


@pytest.mark.parametrize(
    "title",
    [
        "",
        " ",
        "   ",
        "\t",
        "\n",
        " \r\n\t ",
        "\u200b",  # zero-width space
        "\ufeff",  # BOM / zero-width no-break space
        "\u2060\u200d",  # word joiner, zero-width joiner
        " \u00a0\u3000\u2028 ",  # no-break, ideographic, line separator
    ],
    ids=repr,
)
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_blank_title_is_422(
    client: httpx.AsyncClient, auth: Auth, method: str, title: str
) -> None:
    await _assert_refused(client, auth, method, {"title": title}, "title")


async def test_description_of_1000_characters_is_accepted(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    description = "d" * 1000
    task = await create(client, auth, {"title": "t", "description": description})
    assert task["description"] == description
    assert await fetch(client, auth, task["id"]) == task


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_description_of_1001_characters_is_422(
    client: httpx.AsyncClient, auth: Auth, method: str
) -> None:
    await _assert_refused(client, auth, method, {"description": "d" * 1001}, "description")


async def _assert_refused(
    client: httpx.AsyncClient,
    auth: Auth,
    method: str,
    fields: dict[str, Any],
    field: str,
) -> None:
    """Send `fields` (over an otherwise valid body) by `method`: 422 naming `field`, and
    nothing changes."""
    existing = await create(client, auth, {"title": "existing", "description": "d"})
    valid = {"title": "t", "description": None, "completed": False}
    if method == "POST":
        response = await client.post(
            "/api/alice/tasks", json={**valid, **fields}, headers=auth("alice")
        )
    else:
        body = {**valid, **fields} if method == "PUT" else fields
        response = await client.request(
            method, f"/api/alice/tasks/{existing['id']}", json=body, headers=auth("alice")
        )
    assert_validation(response, field)
    assert await list_all(client, auth) == [existing]


# --- input hardening: control characters and surrogates -----------------------------------

# C0, DEL and C1: the same definition for every text the service stores (and the token's sub).
DEL_AND_C1 = ["\x7f", "\x80", "\x85", "\x9b", "\x9f"]
C0_IN_TITLE = ["\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\x1b", "\x1f", "\t", "\n", "\r"]
C0_IN_TITLE += DEL_AND_C1
C0_IN_DESCRIPTION = ["\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\x1b", "\x1f"]
C0_IN_DESCRIPTION += DEL_AND_C1


@pytest.mark.parametrize("char", C0_IN_TITLE, ids=[f"U+{ord(c):04X}" for c in C0_IN_TITLE])
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_control_character_in_title_is_422(
    client: httpx.AsyncClient, auth: Auth, method: str, char: str
) -> None:
    await _assert_refused(client, auth, method, {"title": f"a{char}b"}, "title")


@pytest.mark.parametrize(
    "char", C0_IN_DESCRIPTION, ids=[f"U+{ord(c):04X}" for c in C0_IN_DESCRIPTION]
)
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_control_character_in_description_is_422(
    client: httpx.AsyncClient, auth: Auth, method: str, char: str
) -> None:
    await _assert_refused(client, auth, method, {"description": f"a{char}b"}, "description")


async def test_tab_newline_and_cr_are_kept_in_description(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    description = "\tline one\r\nline two\n\n\tindented\r"
    task = await create(client, auth, {"title": "t", "description": description})
    assert task["description"] == description
    assert await fetch(client, auth, task["id"]) == task
    patched = ok(
        await client.patch(
            f"/api/alice/tasks/{task['id']}",
            json={"description": "a\tb\nc\rd"},
            headers=auth("alice"),
        )
    )
    assert patched["description"] == "a\tb\nc\rd"
    assert await fetch(client, auth, task["id"]) == patched


@pytest.mark.parametrize(
    ("method", "raw", "field"),
    [
        ("POST", b'{"title": "\\ud800"}', "title"),
        ("POST", b'{"title": "a\\udfffb"}', "title"),
        ("POST", b'{"title": "t", "description": "x\\ud800"}', "description"),
        ("PUT", b'{"title": "\\udc00", "description": null, "completed": false}', "title"),
        ("PUT", b'{"title": "t", "description": "\\ud800", "completed": false}', "description"),
        ("PATCH", b'{"title": "\\ud83d"}', "title"),
        ("PATCH", b'{"description": "\\ude00"}', "description"),
    ],
)
async def test_lone_surrogate_is_422(
    client: httpx.AsyncClient, auth: Auth, method: str, raw: bytes, field: str
) -> None:
    existing = await create(client, auth, {"title": "existing"})
    url = "/api/alice/tasks" if method == "POST" else f"/api/alice/tasks/{existing['id']}"
    response = await client.request(method, url, content=raw, headers={**auth("alice"), **JSON})
    assert_validation(response, field)
    assert await list_all(client, auth) == [existing]


async def test_escaped_surrogate_pair_is_one_character(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    response = await client.post(
        "/api/alice/tasks",
        content=b'{"title": "\\ud83d\\ude00", "description": "\\u00e9"}',
        headers={**auth("alice"), **JSON},
    )
    task = ok(response, 201)
    assert task["title"] == "\U0001f600"
    assert task["description"] == "\u00e9"


# --- input hardening: strict types and body shapes ----------------------------------------

WRONG_TYPES = [
    pytest.param("title", 123, id="title-int"),
    pytest.param("title", 1.5, id="title-float"),
    pytest.param("title", True, id="title-bool"),
    pytest.param("title", ["t"], id="title-list"),
    pytest.param("title", {"t": 1}, id="title-object"),
    pytest.param("completed", "yes", id="completed-str"),
    pytest.param("completed", "true", id="completed-str-true"),
    pytest.param("completed", 1, id="completed-int"),
    pytest.param("completed", 0, id="completed-zero"),
    pytest.param("description", 5, id="description-int"),
    pytest.param("description", False, id="description-bool"),
    pytest.param("description", ["d"], id="description-list"),
]


@pytest.mark.parametrize(("field", "value"), WRONG_TYPES)
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_wrong_json_type_is_422(
    client: httpx.AsyncClient, auth: Auth, method: str, field: str, value: Any
) -> None:
    await _assert_refused(client, auth, method, {field: value}, field)


NOT_OBJECTS = {
    "empty-array": b"[]",
    "array-of-task": b'[{"title": "t"}]',
    "string": b'"title"',
    "number": b"42",
    "boolean": b"true",
    "null": b"null",
}


@pytest.mark.parametrize(
    ("route", "body"),
    [
        pytest.param(route, body, id=f"{route}-{name}")
        for route in ("POST", "PUT", "PATCH", "complete")
        for name, body in NOT_OBJECTS.items()
        # Left out: the contract does not say whether a JSON null is "no body" there.
        if not (route == "complete" and name == "null")
    ],
)
async def test_body_that_is_not_an_object_is_422(
    client: httpx.AsyncClient, auth: Auth, route: str, body: bytes
) -> None:
    existing = await create(client, auth, {"title": "existing"})
    url = {
        "POST": "/api/alice/tasks",
        "PUT": f"/api/alice/tasks/{existing['id']}",
        "PATCH": f"/api/alice/tasks/{existing['id']}",
        "complete": f"/api/alice/tasks/{existing['id']}/complete",
    }[route]
    method = {"POST": "POST", "PUT": "PUT", "PATCH": "PATCH", "complete": "PATCH"}[route]
    response = await client.request(method, url, content=body, headers={**auth("alice"), **JSON})
    assert_validation(response, "body")
    assert await list_all(client, auth) == [existing]


# --- input hardening: task ids ------------------------------------------------------------

TASK_ROUTES = [
    pytest.param("GET", "", None, id="get"),
    pytest.param("PUT", "", {"title": "t", "description": None, "completed": False}, id="put"),
    pytest.param("PATCH", "", {"title": "t"}, id="patch"),
    pytest.param("PATCH", "/complete", None, id="complete"),
    pytest.param("DELETE", "", None, id="delete"),
]


@pytest.mark.parametrize(
    "task_id",
    [
        "abc",
        "1.5",
        "1e3",
        "0",
        "-1",
        "-9223372036854775808",
        str(2**63),
        str(10**30),
        # pydantic's lenient int would read each of these as task 1:
        "1.0",
        "+1",
        "%201",
        "1%20",
        "1_0",
        "\uff11",  # fullwidth digit one
        "\u00b9",  # superscript one
    ],
)
@pytest.mark.parametrize(("method", "suffix", "body"), TASK_ROUTES)
async def test_invalid_task_id_is_422(
    client: httpx.AsyncClient,
    auth: Auth,
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
    task_id: str,
) -> None:
    response = await client.request(
        method, f"/api/alice/tasks/{task_id}{suffix}", json=body, headers=auth("alice")
    )
    assert_validation(response, "task_id")


@pytest.mark.parametrize(("method", "suffix", "body"), TASK_ROUTES)
async def test_largest_task_id_is_404(
    client: httpx.AsyncClient,
    auth: Auth,
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
) -> None:
    response = await client.request(
        method, f"/api/alice/tasks/{2**63 - 1}{suffix}", json=body, headers=auth("alice")
    )
    assert_error(response, 404, "TASK_NOT_FOUND")


# --- Unicode round trips ------------------------------------------------------------------

ROUND_TRIP = [
    pytest.param("Buy milk 🥛🐄 and 👩‍👩‍👧‍👦 flags 🇫🇷", id="emoji"),
    pytest.param("اشترِ الحليب", id="arabic"),
    pytest.param("לקנות חלב", id="hebrew"),
    pytest.param("mixed ltr עברית and العربية \u200f\u200e", id="bidi-marks"),
    pytest.param("e\u0301 a\u0308 n\u0303 Z\u0335\u0321\u0330", id="combining-marks"),
    pytest.param("caf\u00e9 vs cafe\u0301", id="composed-vs-decomposed"),
    pytest.param("'single' \"double\" `back` «guillemets» „low“ 'curly'", id="quotes"),
    pytest.param("C:\\path\\to\\file \\n not a newline \\u0000 \\\\", id="backslashes"),
    pytest.param("'; DROP TABLE task; --", id="sql-drop"),
    pytest.param("' OR '1'='1", id="sql-or"),
    pytest.param("Robert'); DELETE FROM task WHERE ('1'='1", id="sql-delete"),
    pytest.param("%_ LIKE wildcards %% _ \\%", id="like-wildcards"),
    pytest.param("<script>alert('x')</script> &amp; {{template}} ${var}", id="markup"),
    pytest.param("日本語 中文 한국어 ελληνικά кириллица", id="scripts"),
    pytest.param("\u00a0nbsp\u2003em-space\u200bzero-width\ufeffbom", id="unicode-spaces"),
    pytest.param("\U0001d54f\U0001d550\U0001d551 \U00010348 astral", id="astral"),
    pytest.param("\u00a0\u00ad\u00a0 after C1: no-break space, soft hyphen", id="after-c1"),
]


@pytest.mark.parametrize("text", ROUND_TRIP)
async def test_unicode_round_trips_exactly(
    client: httpx.AsyncClient, auth: Auth, text: str
) -> None:
    task = await create(client, auth, {"title": text, "description": text})
    assert task["title"] == text.strip()
    assert task["description"] == text
    assert await fetch(client, auth, task["id"]) == task
    assert await list_all(client, auth) == [task]

    updated = ok(
        await client.put(
            f"/api/alice/tasks/{task['id']}",
            json={"title": f"{text} 2", "description": f"{text} 2", "completed": True},
            headers=auth("alice"),
        )
    )
    assert updated["title"] == f"{text} 2".strip()
    assert updated["description"] == f"{text} 2"
    assert await fetch(client, auth, task["id"]) == updated


async def test_title_of_200_emoji_round_trips(client: httpx.AsyncClient, auth: Auth) -> None:
    title = "😀" * 200
    task = await create(client, auth, {"title": title})
    assert task["title"] == title
    assert await fetch(client, auth, task["id"]) == task
    response = await client.post(
        "/api/alice/tasks", json={"title": title + "😀"}, headers=auth("alice")
    )
    assert_validation(response, "title")
    assert await list_all(client, auth) == [task]


async def test_description_of_1000_emoji_round_trips(client: httpx.AsyncClient, auth: Auth) -> None:
    description = "🦄" * 1000
    task = await create(client, auth, {"title": "t", "description": description})
    assert task["description"] == description
    assert await fetch(client, auth, task["id"]) == task


def test_the_public_fields_are_named_in_one_place() -> None:
    # Every statement returns PUBLIC_COLUMNS, which are the response schema's fields: a column
    # added to the table for internal use cannot reach a response unless TaskRead names it.
    assert [column.name for column in PUBLIC_COLUMNS] == list(TaskRead.model_fields)
    assert set(TaskRead.model_fields) == TASK_KEYS
