"""TaskRoute's binder against FastAPI's own dependency solving, on the same requests.

The binder serves valid requests below FastAPI's request handling; FastAPI answers the others.
So for a valid request both must produce the same arguments, and for an invalid one the binder
must step aside. No database is needed: nothing here reaches a handler.
"""

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import orjson
import pytest
from fastapi import Cookie, FastAPI
from fastapi.dependencies.utils import solve_dependencies
from pydantic_core import PydanticUndefined
from starlette.requests import Request
from starlette.routing import Match

from backend.main import create_app
from backend.web.dependencies import CONNECTION as CONNECTION_KEY
from backend.web.routing import TaskRoute
from tests.fixtures.databases import make_settings

USER = "alice"
CONNECTION = object()  # what TaskRoute would have opened


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    url = f"sqlite:///{tmp_path_factory.mktemp('binding') / Path('unused.db')}"
    return create_app(make_settings(url))


def _request(
    app: FastAPI,
    method: str,
    path: str,
    query: list[tuple[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[TaskRoute, Request]:
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": urlencode(query or []).encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "app": app,
    }
    for route in app.routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            assert isinstance(route, TaskRoute)
            scope.update(child)
            # What TaskRoute's pipeline would have set: the connection, the verified user.
            scope[CONNECTION_KEY] = CONNECTION
            scope["state"] = {"user_id": USER}
            return route, Request(scope)
    raise AssertionError(f"no route takes {method} {path}")


async def _fastapi_values(route: TaskRoute, request: Request, body: Any) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        request.scope["fastapi_inner_astack"] = stack
        request.scope["fastapi_function_astack"] = stack
        solved = await solve_dependencies(
            request=request,
            dependant=route.dependant,
            body=body,
            async_exit_stack=stack,
            embed_body_fields=False,
        )
    assert solved.errors == []
    return solved.values


TASK = f"/api/{USER}/tasks/7"
# method, path, query, headers, and the parsed body (PydanticUndefined: none)
Case = tuple[str, str, list[tuple[str, str]], dict[str, str], Any]
VALID: list[Case] = [
    ("GET", f"/api/{USER}/tasks", [], {}, PydanticUndefined),
    ("GET", f"/api/{USER}/tasks", [("limit", "20")], {}, PydanticUndefined),
    (
        "GET",
        f"/api/{USER}/tasks",
        [
            ("status", "pending"),
            ("priority", "high,low"),
            ("priority", "medium"),
            ("tag", "Work"),
            ("tag", "home"),
            ("q", "milk"),
            ("sort", "-due_at"),
            ("due_before", "2026-12-01T00:00:00+01:00"),
            ("overdue", "true"),
            ("unknown", "ignored"),
        ],
        {},
        PydanticUndefined,
    ),
    ("DELETE", f"/api/{USER}/tasks", [("status", "completed")], {}, PydanticUndefined),
    ("GET", f"/api/{USER}/tasks/changes", [("since", "12"), ("limit", "3")], {}, PydanticUndefined),
    ("GET", f"/api/{USER}/tasks/changes", [], {}, PydanticUndefined),
    ("GET", f"/api/{USER}/tasks/events", [], {"Last-Event-ID": "5"}, PydanticUndefined),
    ("POST", f"/api/{USER}/tasks", [], {}, {"title": " Buy milk ", "tags": ["a", "A"]}),
    (
        "POST",
        f"/api/{USER}/tasks",
        [],
        {"Idempotency-Key": "k-1"},
        {"title": "x", "due_at": "2026-12-01T09:00:00+01:00", "recurrence": {"frequency": "daily"}},
    ),
    ("GET", TASK, [], {}, PydanticUndefined),
    ("GET", TASK, [], {"If-None-Match": '"3"'}, PydanticUndefined),
    ("PUT", TASK, [], {"If-Match": '"1"'}, {"title": "t", "description": None}),
    ("PATCH", TASK, [], {}, {}),
    ("PATCH", TASK, [], {}, {"completed": True, "priority": "high"}),
    ("PATCH", f"{TASK}/complete", [], {}, PydanticUndefined),
    ("PATCH", f"{TASK}/complete", [], {}, {}),
    ("PATCH", f"{TASK}/complete", [], {"Idempotency-Key": "k"}, {"completed": False}),
    ("DELETE", TASK, [], {"If-Match": "*"}, PydanticUndefined),
]


def _same(binder: dict[str, Any], fastapi: dict[str, Any]) -> None:
    assert binder.keys() == fastapi.keys()
    for name, value in fastapi.items():
        if isinstance(value, Request):
            assert binder[name] is value
        else:
            # Models compare by their fields and by which were set (a PATCH's MISSING).
            assert binder[name] == value, name
            assert type(binder[name]) is type(value), name


@pytest.mark.parametrize("case", VALID)
async def test_a_valid_request_gets_the_arguments_fastapi_would_give(
    app: FastAPI, case: Case
) -> None:
    method, path, query, headers, body = case
    route, request = _request(app, method, path, query, headers)
    assert route.binder is not None
    bound = route.binder.bind(request, body)
    assert bound is not None
    _same(bound, await _fastapi_values(route, request, body))
    if "conn" in bound:
        assert bound["conn"] is CONNECTION


INVALID: list[Case] = [
    ("GET", f"/api/{USER}/tasks", [("limit", "0")], {}, PydanticUndefined),
    ("GET", f"/api/{USER}/tasks", [("priority", "critical")], {}, PydanticUndefined),
    ("GET", f"/api/{USER}/tasks", [("due_before", "2026-12-01T00:00:00")], {}, PydanticUndefined),
    ("DELETE", f"/api/{USER}/tasks", [], {}, PydanticUndefined),
    ("GET", f"/api/{USER}/tasks/changes", [("since", "x" * 101)], {}, PydanticUndefined),
    ("GET", f"/api/{USER}/tasks/abc", [], {}, PydanticUndefined),
    ("GET", f"/api/{USER}/tasks/+7", [], {}, PydanticUndefined),
    ("GET", f"/api/{USER}/tasks/{2**63}", [], {}, PydanticUndefined),
    ("POST", f"/api/{USER}/tasks", [], {}, PydanticUndefined),
    ("POST", f"/api/{USER}/tasks", [], {}, {"title": ""}),
    ("POST", f"/api/{USER}/tasks", [], {"Idempotency-Key": "é"}, {"title": "x"}),
    ("PUT", TASK, [], {}, {"description": "no title"}),
    ("PATCH", TASK, [], {}, {"completed": "yes"}),
    ("PATCH", TASK, [], {}, [1, 2]),
    ("PATCH", f"{TASK}/complete", [], {}, {"completed": None}),
]


@pytest.mark.parametrize("case", INVALID)
async def test_an_invalid_request_is_left_to_fastapi(app: FastAPI, case: Case) -> None:
    method, path, query, headers, body = case
    route, request = _request(app, method, path, query, headers)
    assert route.binder is not None
    assert route.binder.bind(request, body) is None


def test_every_task_route_is_bound(app: FastAPI) -> None:
    routes = [route for route in app.routes if isinstance(route, TaskRoute)]
    assert len(routes) == 12
    assert all(route.binder is not None for route in routes)


def test_a_handler_the_binder_cannot_bind_is_no_task_route() -> None:
    # Served below FastAPI, a TaskRoute must bind every parameter itself: a cookie it cannot.
    async def handler(session: Annotated[str, Cookie()]) -> None: ...

    with pytest.raises(TypeError, match="a Binder cannot bind"):
        TaskRoute("/api/{user_id}/tasks/odd", handler)


def test_the_body_is_validated_from_the_parsed_document(app: FastAPI) -> None:
    # What TaskRoute hands the binder is the JSON it parsed once (not the raw bytes).
    route, request = _request(app, "PATCH", TASK)
    assert route.binder is not None
    bound = route.binder.bind(request, orjson.loads(b'{"title": "t"}'))
    assert bound is not None
    assert bound["data"].title == "t"
