"""One user can never see or touch another's tasks.

Under his own user id, bob gets 404 for alice's tasks (existence is never leaked); under
alice's user id he gets 403 on every route, before anything about the request is validated.
"""

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import APIRouter
from starlette.requests import Request

from backend.errors import Forbidden
from backend.main import create_app
from backend.web import routing
from backend.web.auth import OutsidePipeline, verified_user
from backend.web.dependencies import Conn, CurrentUser
from tests.fixtures.app import running_app
from tests.fixtures.databases import make_settings
from tests.helpers import Auth, Task, assert_error, ok

MISSING_ID = "987654321"


async def make_alices_tasks(client: httpx.AsyncClient, auth: Auth) -> list[Task]:
    bodies: list[dict[str, Any]] = [
        {"title": "alice: plain"},
        {"title": "alice: done", "description": "secret notes", "completed": True},
        {"title": "alice: described", "description": "more\nnotes"},
    ]
    tasks: list[Task] = []
    for body in bodies:
        tasks.append(
            ok(await client.post("/api/alice/tasks", json=body, headers=auth("alice")), 201)
        )
    return tasks


async def snapshot(client: httpx.AsyncClient, auth: Auth, user: str) -> list[Task]:
    tasks: list[Task] = ok(await client.get(f"/api/{user}/tasks", headers=auth(user)))
    return tasks


async def assert_unchanged(client: httpx.AsyncClient, auth: Auth, tasks: list[Task]) -> None:
    for task in tasks:
        response = await client.get(f"/api/alice/tasks/{task['id']}", headers=auth("alice"))
        assert ok(response) == task
    listed = await snapshot(client, auth, "alice")
    assert sorted(listed, key=lambda t: t["id"]) == sorted(tasks, key=lambda t: t["id"])


# --- bob under his own user id: alice's tasks do not exist --------------------------------


@dataclass(frozen=True)
class TaskRoute:
    method: str
    suffix: str
    body: dict[str, Any] | None


FOREIGN_TASK_ROUTES = [
    pytest.param(TaskRoute("GET", "", None), id="get"),
    pytest.param(
        TaskRoute("PUT", "", {"title": "hijacked", "description": None, "completed": False}),
        id="put",
    ),
    pytest.param(TaskRoute("PATCH", "", {"title": "hijacked"}), id="patch"),
    pytest.param(TaskRoute("PATCH", "", {}), id="patch-empty"),
    pytest.param(TaskRoute("PATCH", "/complete", None), id="complete-toggle"),
    pytest.param(TaskRoute("PATCH", "/complete", {"completed": False}), id="complete-set"),
    pytest.param(TaskRoute("DELETE", "", None), id="delete"),
]


@pytest.mark.parametrize("route", FOREIGN_TASK_ROUTES)
async def test_other_users_task_is_not_found_under_own_user_id(
    client: httpx.AsyncClient, auth: Auth, route: TaskRoute
) -> None:
    alices = await make_alices_tasks(client, auth)
    for task in alices:
        response = await client.request(
            route.method,
            f"/api/bob/tasks/{task['id']}{route.suffix}",
            json=route.body,
            headers=auth("bob"),
        )
        assert_error(response, 404, "TASK_NOT_FOUND")
        # Exactly what a task that never existed gets: nothing tells the two apart.
        missing = await client.request(
            route.method,
            f"/api/bob/tasks/{MISSING_ID}{route.suffix}",
            json=route.body,
            headers=auth("bob"),
        )
        assert missing.json() == response.json()
    assert await snapshot(client, auth, "bob") == []
    await assert_unchanged(client, auth, alices)


async def test_lists_hold_only_own_tasks(client: httpx.AsyncClient, auth: Auth) -> None:
    alices = await make_alices_tasks(client, auth)
    assert await snapshot(client, auth, "bob") == []
    bobs = ok(
        await client.post("/api/bob/tasks", json={"title": "bob's"}, headers=auth("bob")), 201
    )
    assert bobs["user_id"] == "bob"
    assert await snapshot(client, auth, "bob") == [bobs]
    response = await client.get("/api/bob/tasks", params={"limit": 500}, headers=auth("bob"))
    assert ok(response) == [bobs]
    await assert_unchanged(client, auth, alices)
    # And the other way round.
    response = await client.get(f"/api/alice/tasks/{bobs['id']}", headers=auth("alice"))
    assert_error(response, 404, "TASK_NOT_FOUND")


async def test_own_writes_leave_other_users_tasks_alone(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    alices = await make_alices_tasks(client, auth)
    bobs = ok(await client.post("/api/bob/tasks", json={"title": "b"}, headers=auth("bob")), 201)
    url = f"/api/bob/tasks/{bobs['id']}"
    body = {"title": "b2", "description": "x", "completed": True}
    ok(await client.put(url, json=body, headers=auth("bob")))
    ok(await client.patch(f"{url}/complete", headers=auth("bob")))
    ok(await client.delete(url, headers=auth("bob")))
    await assert_unchanged(client, auth, alices)


# --- bob under alice's user id: 403 on every route, before any validation -----------------

VALID_BODIES: dict[str, dict[str, Any]] = {
    "POST": {"title": "planted"},
    "PUT": {"title": "hijacked", "description": None, "completed": False},
    "PATCH": {"title": "hijacked"},
    "complete": {"completed": False},
}
INVALID_BODIES: dict[str, bytes | None] = {
    "none": None,
    "empty": b"",
    "wrong-types": b'{"title": 123, "description": 5, "completed": "yes"}',
    "missing-fields": b"{}",
    "array": b"[]",
    "malformed": b'{"title": ',
    "not-utf8": b'{"title": "\xff\xfe"}',
    "lone-surrogate": b'{"title": "\\ud800"}',
}
TASK_IDS = {
    "existing": "{existing}",
    "missing": MISSING_ID,
    "not-an-int": "abc",
    "zero": "0",
    "negative": "-5",
    "too-big": str(2**64),
}


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str  # under /api/{user_id}; {task_id} is filled in
    body_kind: str | None  # key of VALID_BODIES, or None for routes without a body


ROUTES = [
    pytest.param(Route("list", "GET", "/tasks", None), id="list"),
    pytest.param(Route("create", "POST", "/tasks", "POST"), id="create"),
    pytest.param(Route("get", "GET", "/tasks/{task_id}", None), id="get"),
    pytest.param(Route("put", "PUT", "/tasks/{task_id}", "PUT"), id="put"),
    pytest.param(Route("patch", "PATCH", "/tasks/{task_id}", "PATCH"), id="patch"),
    pytest.param(
        Route("complete", "PATCH", "/tasks/{task_id}/complete", "complete"), id="complete"
    ),
    pytest.param(Route("delete", "DELETE", "/tasks/{task_id}", None), id="delete"),
]


def _variants(route: Route, existing_id: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(description, url, request kwargs) for every combination of task id and body."""
    ids = TASK_IDS if "{task_id}" in route.path else {"none": ""}
    bodies: dict[str, dict[str, Any]] = {"no-body": {}}
    if route.body_kind is not None:
        bodies = {"valid": {"json": VALID_BODIES[route.body_kind]}}
        for name, raw in INVALID_BODIES.items():
            bodies[name] = {} if raw is None else {"content": raw}
            if raw is not None:
                bodies[name]["headers"] = {"content-type": "application/json"}
    queries: dict[str, dict[str, str]] = {"no-query": {}}
    if route.name == "list":
        queries.update({"bad-limit": {"limit": "0"}, "junk-limit": {"limit": "abc"}})
    variants = []
    for id_name, task_id in ids.items():
        path = route.path.format(task_id=task_id.format(existing=existing_id))
        for body_name, kwargs in bodies.items():
            for query_name, query in queries.items():
                description = f"{route.name} id={id_name} body={body_name} query={query_name}"
                variants.append((description, f"/api/alice{path}", {**kwargs, "params": query}))
    return variants


@pytest.mark.parametrize("route", ROUTES)
async def test_other_users_path_is_forbidden(
    client: httpx.AsyncClient, auth: Auth, route: Route
) -> None:
    alices = await make_alices_tasks(client, auth)
    variants = _variants(route, alices[0]["id"])
    for description, url, kwargs in variants:
        headers = {**auth("bob"), **kwargs.pop("headers", {})}
        response = await client.request(route.method, url, headers=headers, **kwargs)
        assert response.status_code == 403, f"{description}: {response.text}"
        assert_error(response, 403, "FORBIDDEN")
    await assert_unchanged(client, auth, alices)
    assert await snapshot(client, auth, "bob") == []


@pytest.mark.parametrize("route", ROUTES)
async def test_forbidden_even_with_alices_id_in_bobs_token_claims(
    client: httpx.AsyncClient, auth: Auth, route: Route
) -> None:
    """Only `sub` names the user: other claims that mention alice change nothing."""
    alices = await make_alices_tasks(client, auth)
    description, url, kwargs = _variants(route, alices[0]["id"])[0]
    headers = {**auth("bob", user_id="alice", name="alice", email="alice@example.com")}
    headers.update(kwargs.pop("headers", {}))
    response = await client.request(route.method, url, headers=headers, **kwargs)
    assert response.status_code == 403, f"{description}: {response.text}"
    assert_error(response, 403, "FORBIDDEN")
    await assert_unchanged(client, auth, alices)


@pytest.mark.parametrize("path_user", ["Alice", "alice ", " alice", "alice%00", "alic"])
async def test_near_miss_user_ids_are_forbidden(
    client: httpx.AsyncClient, auth: Auth, path_user: str
) -> None:
    """The path's user must equal `sub` exactly: no case folding, trimming or prefixing."""
    response = await client.get(f"/api/{quote(path_user, safe='%')}/tasks", headers=auth("alice"))
    assert_error(response, 403, "FORBIDDEN")


# --- user ids with URL-special characters --------------------------------------------------

SPECIAL_USER_IDS = [
    "user with space",
    "ü@x.y",
    "a+b&c=d",
    "50%off",
    "what?#frag",
    "semi;colon,comma",
    "emoji😀",
    "kX9f2-_.~!$'()*",
]


@pytest.mark.parametrize("user_id", SPECIAL_USER_IDS)
async def test_user_id_with_url_special_characters(
    client: httpx.AsyncClient, auth: Auth, user_id: str
) -> None:
    headers = auth(user_id)
    base = f"/api/{quote(user_id, safe='')}/tasks"
    assert ok(await client.get(base, headers=headers)) == []

    response = await client.post(base, json={"title": "t"}, headers=headers)
    task = ok(response, 201)
    assert task["user_id"] == user_id
    assert response.headers["location"] == f"{base}/{task['id']}"
    location = response.headers["location"]

    assert ok(await client.get(location, headers=headers)) == task
    assert ok(await client.get(base, headers=headers)) == [task]

    body = {"title": "t2", "description": "d", "completed": False}
    replaced = ok(await client.put(location, json=body, headers=headers))
    assert replaced == {**task, **body, "updated_at": replaced["updated_at"], "version": 2}
    patched = ok(await client.patch(location, json={"title": "t3"}, headers=headers))
    expected = {**replaced, "title": "t3", "version": 3}
    assert patched == {**expected, "updated_at": patched["updated_at"]}
    completed = ok(await client.patch(f"{location}/complete", headers=headers))
    assert completed == {
        **patched,
        "completed": True,
        "updated_at": completed["updated_at"],
        "completed_at": completed["updated_at"],
        "version": 4,
    }
    assert ok(await client.delete(location, headers=headers)) == completed
    assert_error(await client.get(location, headers=headers), 404, "TASK_NOT_FOUND")

    # Another user is still forbidden from this path, and this user from alice's.
    assert_error(await client.get(base, headers=auth("alice")), 403, "FORBIDDEN")
    assert_error(await client.get("/api/alice/tasks", headers=headers), 403, "FORBIDDEN")


def test_every_route_of_a_user_authenticates_before_anything_else() -> None:
    # A handler's `user_id: CurrentUser` is the user TaskRoute verified (the token's sub, equal
    # to the path's); every route of a user's path is one.
    app = create_app(make_settings("sqlite:///unused.db"))
    user_routes = [route for route in app.routes if "{user_id}" in getattr(route, "path", "")]
    assert len(user_routes) >= 10
    for route in user_routes:
        assert isinstance(route, routing.TaskRoute), getattr(route, "path", route)
    # The routes are the app's own, never an included router's (whose routes a matcher would
    # have to look into): the access line's template and a 405's Allow see every route.
    assert not [route for route in app.routes if hasattr(route, "original_router")]


async def test_a_route_added_without_the_pipeline_fails_instead_of_trusting_the_path(
    database_url: str, auth: Auth, caplog: pytest.LogCaptureFixture
) -> None:
    # A plain FastAPI route that takes CurrentUser: nothing verified the token, so the
    # dependency refuses to name a user, and the request is a 500 (logged), never alice's data.
    served: list[str] = []
    stray = APIRouter()

    @stray.get("/api/{user_id}/stray")
    async def stray_handler(user_id: CurrentUser) -> dict[str, str]:
        served.append(user_id)
        return {"user": user_id}

    @stray.get("/api/{user_id}/stray-connection")
    async def stray_connection(conn: Conn) -> dict[str, str]:
        served.append("connection")
        return {}

    async with running_app(make_settings(database_url)) as (app, http):
        app.router.routes[:0] = stray.routes
        for path in ("stray", "stray-connection"):
            for headers in ({}, auth("bob"), auth("alice")):
                response = await http.get(f"/api/alice/{path}", headers=headers)
                assert_error(response, 500, "INTERNAL_ERROR")
    assert served == []
    failures = [r for r in caplog.records if r.exc_info and r.name == "backend.errors"]
    assert failures
    assert all(isinstance(r.exc_info[1], OutsidePipeline) for r in failures if r.exc_info)


def test_the_verified_user_must_be_the_paths() -> None:
    def request(verified: str | None, path_user: str) -> Request:
        state = {} if verified is None else {"user_id": verified}
        return Request(
            {"type": "http", "method": "GET", "state": state, "path_params": {"user_id": path_user}}
        )

    assert verified_user(request("alice", "alice")) == "alice"
    with pytest.raises(Forbidden):
        verified_user(request("bob", "alice"))
    with pytest.raises(OutsidePipeline):
        verified_user(request(None, "alice"))
