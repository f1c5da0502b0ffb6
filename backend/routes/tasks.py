"""The task handlers of /api/{user_id}/tasks…: each calls one service function and renders.

What every request goes through first (the token, the owner, the rate limit, the body), the
ETag and Idempotency-Key machinery and the document's shared parts are web/'s; the change feed
and the event stream are routes/sync.py's. The collection's routes and the single task's are two
routers because the sync routes must be tried between them (routes/__init__.py).
"""

from typing import Annotated, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Body, Path, Query, Request, Response
from pydantic import MISSING, BeforeValidator

from backend.errors import QuotaExceeded
from backend.models.task import ID_MAX
from backend.schemas.error import documented
from backend.schemas.task import (
    CompleteBody,
    DeletedCount,
    TaskCreate,
    TaskQuery,
    TaskRead,
    TaskReplace,
    TaskUpdate,
)
from backend.services import listing, tasks
from backend.services.tasks import Written
from backend.web.dependencies import Conn, CurrentUser, SettingsDep
from backend.web.openapi import (
    API_RESPONSES,
    BODY_ERRORS,
    COMPLETING_HEADERS,
    ETAG_HEADER,
    KEY_REUSED,
    NOT_FOUND,
    PRECONDITION,
    REPLAYED_HEADER,
    SKIPPED_HEADER,
    TASK_HEADERS,
)
from backend.web.responses import json_response, task_headers, task_response, written_response
from backend.web.routing import TaskRoute
from backend.web.writes import IdempotencyKeyHeader, IfMatch, IfNoneMatch, once, versions


def _digits_only(value: object) -> object:
    # pydantic's int parsing is lenient ("1.0", "+1", " 1" are all 1): an id in a URL is plain
    # decimal digits, so that one task has one URL.
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be a positive integer")
    return value


TaskIdPath = Annotated[
    int,
    Path(ge=1, le=ID_MAX, description="The task's id"),
    BeforeValidator(_digits_only),
]


def _router() -> APIRouter:
    return APIRouter(
        prefix="/api", route_class=TaskRoute, strict_content_type=False, responses=API_RESPONSES
    )


collection = _router()  # /api/{user_id}/tasks
router = _router()  # /api/{user_id}/tasks/{task_id}…

_PAGED_BY = frozenset(TaskQuery.model_fields) - {"cursor"}

_LIST_HEADERS = {
    "X-Total-Count": {
        "description": "How many tasks match the filters (on every page)",
        "schema": {"type": "integer"},
    },
    "Link": {
        "description": 'The next page, while there is one: `</api/…/tasks?…&cursor=…>; rel="next"`',
        "schema": {"type": "string"},
    },
    "X-Sync-Token": {
        "description": "Where the change feed (`…/tasks/changes?since=`) takes over from this list",
        "schema": {"type": "string"},
    },
}


@collection.get(
    "/{user_id}/tasks",
    operation_id="listTasks",
    response_description="One page of the user's tasks",
    tags=["tasks"],
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
    page = await listing.list_tasks(conn, user_id=user_id, query=query)
    headers = {"X-Total-Count": str(page.total), "X-Sync-Token": page.sync_token}
    if page.cursor is not None:
        # Relative (RFC 8288): never built from the Host header. The user id is encoded as in
        # `Location`: a header is ASCII, and a `?` or `#` in the id must stay in the path. Only
        # the parameters the list understands, as they were sent: an unknown one is ignored by
        # the list, and would only make the header long (a client may send 60 KB of them).
        params = [(k, v) for k, v in request.query_params.multi_items() if k in _PAGED_BY]
        next_query = urlencode([*params, ("cursor", page.cursor)])
        path = f"/api/{quote(user_id, safe='')}/tasks"
        headers["Link"] = f'<{path}?{next_query}>; rel="next"'
    return json_response(page.tasks, headers=headers)


@collection.delete(
    "/{user_id}/tasks",
    operation_id="clearTasks",
    response_description="How many tasks were removed",
    tags=["tasks"],
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
    return json_response({"deleted": deleted})


@collection.post(
    "/{user_id}/tasks",
    operation_id="createTask",
    response_description="The task created",
    tags=["tasks"],
    summary="Create a task",
    description="With an `Idempotency-Key`, a retry of the same request creates nothing and "
    "gets the first response again (`Idempotent-Replayed: true`), however many are in flight.",
    status_code=201,
    response_model=TaskRead,
    responses={
        201: {
            "headers": {
                **ETAG_HEADER,
                **REPLAYED_HEADER,
                "Location": {
                    "description": "`/api/{user_id}/tasks/{id}`",
                    "schema": {"type": "string"},
                },
            }
        },
        409: documented("The user has MAX_TASKS_PER_USER tasks already", QuotaExceeded(10000)),
        **KEY_REUSED,
        **BODY_ERRORS,
    },
)
async def create_task(
    request: Request,
    user_id: CurrentUser,
    conn: Conn,
    settings: SettingsDep,
    data: TaskCreate,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    async def create() -> Written:
        created = await tasks.create_task(
            conn, user_id=user_id, data=data, max_tasks=settings.max_tasks_per_user
        )
        return Written(created)

    return await once(request, conn, user_id, idempotency_key, create, status_code=201)


@router.get(
    "/{user_id}/tasks/{task_id}",
    operation_id="getTask",
    response_description="The task",
    tags=["tasks"],
    summary="Get a task",
    response_model=TaskRead,
    responses={
        **TASK_HEADERS,
        304: {
            "description": "If-None-Match names the current version: nothing to send",
            "headers": ETAG_HEADER,
        },
        **NOT_FOUND,
    },
)
async def get_task(
    user_id: CurrentUser, conn: Conn, task_id: TaskIdPath, if_none_match: IfNoneMatch = None
) -> Response:
    task = await tasks.get_task(conn, user_id=user_id, task_id=task_id)
    if if_none_match is not None:
        known = versions(if_none_match, weak=True)
        if known is None or task["version"] in known:
            return Response(status_code=304, headers=task_headers(task))
    return task_response(task)


@router.put(
    "/{user_id}/tasks/{task_id}",
    operation_id="replaceTask",
    response_description="The task as it is now",
    tags=["tasks"],
    summary="Update a task",
    description="`title` is required; every other field changes only if it is sent "
    '(`"description": null` clears it) and keeps its value if left out. Read-only fields sent '
    "back (`id`, timestamps…) are ignored.",
    response_model=TaskRead,
    responses={**COMPLETING_HEADERS, **NOT_FOUND, **PRECONDITION, **BODY_ERRORS},
)
async def replace_task(
    user_id: CurrentUser,
    conn: Conn,
    settings: SettingsDep,
    task_id: TaskIdPath,
    data: TaskReplace,
    if_match: IfMatch = None,
) -> Response:
    # The same update as PATCH; only what the body must hold (the title) differs.
    return await update_task(user_id, conn, settings, task_id, data, if_match)


@router.patch(
    "/{user_id}/tasks/{task_id}",
    operation_id="updateTask",
    response_description="The task as it is now",
    tags=["tasks"],
    summary="Update some fields of a task",
    description="Only the fields sent change; `{}` changes nothing.",
    response_model=TaskRead,
    responses={**COMPLETING_HEADERS, **NOT_FOUND, **PRECONDITION, **BODY_ERRORS},
)
async def update_task(
    user_id: CurrentUser,
    conn: Conn,
    settings: SettingsDep,
    task_id: TaskIdPath,
    data: TaskUpdate,
    if_match: IfMatch = None,
) -> Response:
    written = await tasks.update_task(
        conn,
        user_id=user_id,
        task_id=task_id,
        data=data,
        max_tasks=settings.max_tasks_per_user,
        if_match=versions(if_match, weak=False),
    )
    return written_response(written)


@router.patch(
    "/{user_id}/tasks/{task_id}/complete",
    operation_id="completeTask",
    response_description="The task as it is now",
    tags=["tasks"],
    summary="Toggle or set completion",
    description='No body or `{}`: toggles `completed`. `{"completed": true|false}`: sets it. '
    '`{"completed": null}` is refused. With an `Idempotency-Key`, a retried toggle does not '
    "toggle again.",
    response_model=TaskRead,
    responses={
        200: {"headers": {**ETAG_HEADER, **REPLAYED_HEADER, **SKIPPED_HEADER}},
        **NOT_FOUND,
        **PRECONDITION,
        **KEY_REUSED,
        **BODY_ERRORS,
    },
)
async def complete_task(
    request: Request,
    user_id: CurrentUser,
    conn: Conn,
    settings: SettingsDep,
    task_id: TaskIdPath,
    data: Annotated[CompleteBody | None, Body()] = None,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    completed = None if data is None or data.completed is MISSING else data.completed
    return await once(
        request,
        conn,
        user_id,
        idempotency_key,
        lambda: tasks.set_completed(
            conn,
            user_id=user_id,
            task_id=task_id,
            completed=completed,
            max_tasks=settings.max_tasks_per_user,
            if_match=versions(if_match, weak=False),
        ),
    )


@router.delete(
    "/{user_id}/tasks/{task_id}",
    operation_id="deleteTask",
    response_description="The task that was deleted",
    tags=["tasks"],
    summary="Delete a task",
    description="Answers with the task that was deleted; a second DELETE is 404.",
    response_model=TaskRead,
    responses={**TASK_HEADERS, **NOT_FOUND, **PRECONDITION},
)
async def delete_task(
    user_id: CurrentUser, conn: Conn, task_id: TaskIdPath, if_match: IfMatch = None
) -> Response:
    task = await tasks.delete_task(
        conn, user_id=user_id, task_id=task_id, if_match=versions(if_match, weak=False)
    )
    return task_response(task)
