"""HTTP handlers for /api/{user_id}/tasks…: authorise, call one service function, render.

Rows are rendered straight to JSON (orjson); `response_model` documents the shape in OpenAPI
without re-validating what the database just returned.
"""

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

import orjson
from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from fastapi.routing import APIRoute
from pydantic import MISSING, BeforeValidator
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.errors import MalformedJSON, UnsupportedMediaType
from backend.middleware.jwt_auth import CurrentUser, authenticate
from backend.schemas.error import ErrorBody
from backend.schemas.task import (
    CompleteBody,
    DeletedCount,
    TaskCreate,
    TaskQuery,
    TaskRead,
    TaskReplace,
    TaskUpdate,
)
from backend.services import tasks

MAX_TASK_ID = 2**63 - 1  # BIGINT; larger ids cannot exist, and would overflow the driver


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return True  # no Content-Type: read the body as JSON, as most servers do
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class TaskRoute(APIRoute):
    """Runs the checks in the contract's order: authentication and the owner check first, then
    the body (size, content type, JSON syntax), and only then FastAPI's own validation."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        reads_body = self.body_field is not None

        async def app(request: Request) -> Response:
            await authenticate(request)
            if reads_body and await request.body():
                if not _is_json(request.headers.get("content-type")):
                    raise UnsupportedMediaType()
                try:
                    await request.json()  # parsed once; FastAPI reuses the cached value
                # JSONDecodeError, bytes that are not UTF-8, or nesting deeper than the parser's
                # recursion limit (a 1 KB body of "[[[[…" must be a 400, not a 500).
                except (ValueError, RecursionError):
                    raise MalformedJSON() from None
            return await handler(request)

        return app


async def _connection(request: Request) -> AsyncIterator[AsyncConnection]:
    async with request.app.state.db.connect() as conn:
        yield conn


def _digits_only(value: object) -> object:
    # pydantic's int parsing is lenient ("1.0", "+1", " 1" are all 1): an id in a URL is plain
    # decimal digits, so that one task has one URL.
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be a positive integer")
    return value


Conn = Annotated[AsyncConnection, Depends(_connection)]
TaskIdPath = Annotated[
    int,
    Path(ge=1, le=MAX_TASK_ID, description="The task's id"),
    BeforeValidator(_digits_only),
]


Responses = dict[int | str, dict[str, Any]]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


router = APIRouter(
    prefix="/api",
    tags=["tasks"],
    route_class=TaskRoute,
    strict_content_type=False,
    responses={
        401: _error(
            "Missing, invalid or expired token (AUTH_REQUIRED, TOKEN_INVALID, TOKEN_EXPIRED)"
        ),
        403: _error("The token's user is not the path's user (FORBIDDEN)"),
        422: _error("Invalid input; `field` names it (VALIDATION_ERROR)"),
    },
)
_NOT_FOUND: Responses = {404: _error("No such task for this user (TASK_NOT_FOUND)")}
_BODY_ERRORS: Responses = {
    400: _error("The body is not valid JSON (MALFORMED_JSON)"),
    413: _error("The body is larger than 1 MiB (PAYLOAD_TOO_LARGE)"),
    415: _error("The body is not JSON (UNSUPPORTED_MEDIA_TYPE)"),
}


def _render(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(content, option=orjson.OPT_UTC_Z),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


_LIST_HEADERS = {
    "X-Total-Count": {
        "description": "How many tasks match the filters (on every page)",
        "schema": {"type": "integer"},
    },
    "Link": {
        "description": 'The next page, while there is one: `</api/…/tasks?…&cursor=…>; rel="next"`',
        "schema": {"type": "string"},
    },
}


@router.get(
    "/{user_id}/tasks",
    summary="List the user's tasks",
    description="Newest first by default, filtered, sorted and paged by key: at most `limit` "
    'tasks (default 500), `X-Total-Count` for all that match, and `Link: <…>; rel="next"` '
    "while there are more. A datetime's `+` must be sent as `%2B`.",
    response_model=list[TaskRead],
    responses={200: {"headers": _LIST_HEADERS}},
)
async def list_tasks(
    request: Request, user_id: CurrentUser, conn: Conn, query: Annotated[TaskQuery, Query()]
) -> Response:
    page = await tasks.list_tasks(conn, user_id=user_id, query=query)
    headers = {"X-Total-Count": str(page.total)}
    if page.cursor is not None:
        # Relative (RFC 8288): never built from the Host header. The user id is encoded as in
        # `Location`: a header is ASCII, and a `?` or `#` in the id must stay in the path.
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
        next_query = urlencode([*params, ("cursor", page.cursor)])
        path = f"/api/{quote(user_id, safe='')}/tasks"
        headers["Link"] = f'<{path}?{next_query}>; rel="next"'
    return _render(page.tasks, headers=headers)


@router.delete(
    "/{user_id}/tasks",
    summary="Clear completed tasks, or all of them",
    description='`?status=completed` removes the user\'s completed tasks ("clear completed"), '
    "`?status=all` every task (when the user deletes their account). Without `status`, or with "
    "another value, nothing is removed (422).",
    response_model=DeletedCount,
)
async def delete_tasks(
    user_id: CurrentUser,
    conn: Conn,
    status: Annotated[Literal["completed", "all"], Query(description="`completed` or `all`")],
) -> Response:
    deleted = await tasks.delete_tasks(conn, user_id=user_id, completed_only=status == "completed")
    return _render({"deleted": deleted})


@router.post(
    "/{user_id}/tasks",
    summary="Create a task",
    status_code=201,
    response_model=TaskRead,
    responses=_BODY_ERRORS,
)
async def create_task(user_id: CurrentUser, conn: Conn, data: TaskCreate) -> Response:
    task = await tasks.create_task(conn, user_id=user_id, data=data)
    location = f"/api/{quote(user_id, safe='')}/tasks/{task['id']}"
    return _render(task, status_code=201, headers={"Location": location})


@router.get(
    "/{user_id}/tasks/{task_id}",
    summary="Get a task",
    response_model=TaskRead,
    responses=_NOT_FOUND,
)
async def get_task(user_id: CurrentUser, conn: Conn, task_id: TaskIdPath) -> Response:
    return _render(await tasks.get_task(conn, user_id=user_id, task_id=task_id))


@router.put(
    "/{user_id}/tasks/{task_id}",
    summary="Update a task",
    description="`title` is required; every other field changes only if it is sent "
    '(`"description": null` clears it) and keeps its value if left out. Read-only fields sent '
    "back (`id`, timestamps…) are ignored.",
    response_model=TaskRead,
    responses={**_NOT_FOUND, **_BODY_ERRORS},
)
async def replace_task(
    user_id: CurrentUser, conn: Conn, task_id: TaskIdPath, data: TaskReplace
) -> Response:
    return _render(await tasks.update_task(conn, user_id=user_id, task_id=task_id, data=data))


@router.patch(
    "/{user_id}/tasks/{task_id}",
    summary="Update some fields of a task",
    description="Only the fields sent change; `{}` changes nothing.",
    response_model=TaskRead,
    responses={**_NOT_FOUND, **_BODY_ERRORS},
)
async def update_task(
    user_id: CurrentUser, conn: Conn, task_id: TaskIdPath, data: TaskUpdate
) -> Response:
    return _render(await tasks.update_task(conn, user_id=user_id, task_id=task_id, data=data))


@router.patch(
    "/{user_id}/tasks/{task_id}/complete",
    summary="Toggle or set completion",
    description='No body or `{}`: toggles `completed`. `{"completed": true|false}`: sets it. '
    '`{"completed": null}` is refused.',
    response_model=TaskRead,
    responses={**_NOT_FOUND, **_BODY_ERRORS},
)
async def complete_task(
    user_id: CurrentUser,
    conn: Conn,
    task_id: TaskIdPath,
    data: Annotated[CompleteBody | None, Body()] = None,
) -> Response:
    completed = None if data is None or data.completed is MISSING else data.completed
    return _render(
        await tasks.set_completed(conn, user_id=user_id, task_id=task_id, completed=completed)
    )


@router.delete(
    "/{user_id}/tasks/{task_id}",
    summary="Delete a task",
    description="Answers with the task that was deleted; a second DELETE is 404.",
    response_model=TaskRead,
    responses=_NOT_FOUND,
)
async def delete_task(user_id: CurrentUser, conn: Conn, task_id: TaskIdPath) -> Response:
    return _render(await tasks.delete_task(conn, user_id=user_id, task_id=task_id))
