"""HTTP handlers for /api/{user_id}/tasks…: authorise, call one service function, render.

Rows are rendered straight to JSON (orjson); `response_model` documents the shape in OpenAPI
without re-validating what the database just returned. The HTTP side of safe edits lives here:
ETag / If-Match / If-None-Match are versions, Idempotency-Key wraps a write in
`services.idempotency.once`, and the event stream follows the change feed.
"""

import re
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

import orjson
from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from pydantic import MISSING, BeforeValidator
from pydantic_core import PydanticUndefined as Undefined
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.types import Receive, Scope, Send

from backend.errors import (
    AppError,
    AuthRequired,
    Forbidden,
    IdempotencyKeyReused,
    MalformedJSON,
    MethodNotAllowed,
    PayloadTooLarge,
    PreconditionFailed,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
    SyncTokenExpired,
    TaskNotFound,
    TokenExpired,
    TokenInvalid,
    TooManyStreams,
    UnsupportedMediaType,
    ValidationFailed,
)
from backend.middleware.jwt_auth import CurrentUser, authenticate
from backend.middleware.rate_limit import Quota, RateLimiter
from backend.models.sync import IDEMPOTENCY_KEY_MAX
from backend.models.task import VERSION_MAX, etag
from backend.routes.binding import Binder
from backend.schemas.error import PreconditionFailedBody, documented
from backend.schemas.task import (
    EXAMPLE_TASK,
    MAX_LIST_LIMIT,
    ChangesRead,
    CompleteBody,
    DeletedCount,
    TaskCreate,
    TaskQuery,
    TaskRead,
    TaskReplace,
    TaskUpdate,
)
from backend.services import changes, idempotency, listing, tasks
from backend.services.events import ChangeHub
from backend.services.streams import RECONNECT_SECONDS, Stream
from backend.services.tables import TaskRecord, Versions

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
    the user's rate limit (RateLimit-* headers on the answer), then the body (size, content
    type, JSON syntax), and only then the parameters' validation. It also holds the request's
    database connection (`Conn`) around the handler, when the handler takes one.

    It is served below FastAPI's request handling: a `Binder` validates the parameters with
    their own validators and the handler is called directly. A request the binder leaves alone
    (an invalid value) goes through FastAPI's handler, which answers with its 422 as always."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self._reads_body = self.body_field is not None
        self._uses_connection = any(d.call is _connection for d in self.dependant.dependencies)
        binder = Binder.for_dependant(self.dependant, _PROVIDED)
        if binder is None:
            raise TypeError(f"{path}: {endpoint.__name__} takes a parameter a Binder cannot bind")
        self.binder = binder
        # A write must not be taken on the last of several values it was given: `DELETE
        # …?status=completed&status=all` would delete everything (last value wins).
        self._once_only = (
            tuple(field.alias for field in self.dependant.query_params)
            if self.methods and not self.methods <= {"GET", "HEAD"}
            else ()
        )
        self.app = self._serve

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        self._solve = super().get_route_handler()  # FastAPI's: solves, then calls
        return self._solve

    async def _check(self, request: Request) -> Quota | None:
        """Authentication, the owner, the rate limit, then the body's size, type and syntax."""
        user_id = await authenticate(request)
        limiter: RateLimiter = request.app.state.rate_limiter
        quota = await limiter.hit(user_id)
        if quota is not None and not quota.allowed:
            raise RateLimited(limit=quota.limit, retry_after=quota.reset)
        if self._reads_body and await request.body():
            if not _is_json(request.headers.get("content-type")):
                raise UnsupportedMediaType()
            try:
                await request.json()  # parsed once; the binder or FastAPI reuses it
            # JSONDecodeError, bytes that are not UTF-8, or nesting deeper than the parser's
            # recursion limit (a 1 KB body of "[[[[…" must be a 400, not a 500).
            except (ValueError, RecursionError):
                raise MalformedJSON() from None
        return quota

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        quota = await self._check(request)
        for key in self._once_only:
            if len(request.query_params.getlist(key)) > 1:
                raise ValidationFailed(f"{key}: must be given once", field=key)
        body = await request.json() if self._reads_body and await request.body() else Undefined
        if self._uses_connection:
            # The request's connection, for the handler's `conn: Conn` (opened here, not by a
            # yield dependency, whose exit stack and cancel scopes cost more than the checkout);
            # back in the pool once the handler has rendered its response.
            async with request.app.state.db.connect() as conn:
                scope[_CONNECTION] = conn
                response = await self._call(request, body)
        else:
            response = await self._call(request, body)
        if quota is not None:
            # Appended as they are: a handler never sets RateLimit-* itself.
            response.raw_headers.extend(quota.raw_headers())
        await response(scope, receive, send)

    async def _call(self, request: Request, body: Any) -> Response:
        arguments = self.binder.bind(request, body)
        if arguments is None:  # FastAPI validates, and answers 422
            async with AsyncExitStack() as stack:
                request.scope["fastapi_inner_astack"] = stack
                request.scope["fastapi_function_astack"] = stack
                return await self._solve(request)
        response: Response = await self.endpoint(**arguments)
        return response


_CONNECTION = "taskapi.connection"


async def _connection(request: Request) -> AsyncConnection:
    conn: AsyncConnection = request.scope[_CONNECTION]  # TaskRoute opened it
    return conn


def _digits_only(value: object) -> object:
    # pydantic's int parsing is lenient ("1.0", "+1", " 1" are all 1): an id in a URL is plain
    # decimal digits, so that one task has one URL.
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be a positive integer")
    return value


def _hub(request: Request) -> ChangeHub:
    hub: ChangeHub = request.app.state.changes
    return hub


# What TaskRoute's binder gives the handlers' dependencies, without calling them.
_PROVIDED: dict[Callable[..., Any], Callable[[Request], Any]] = {
    _connection: lambda request: request.scope[_CONNECTION],
    _hub: _hub,
}


Conn = Annotated[AsyncConnection, Depends(_connection)]
Hub = Annotated[ChangeHub, Depends(_hub)]
TaskIdPath = Annotated[
    int,
    Path(ge=1, le=MAX_TASK_ID, description="The task's id"),
    BeforeValidator(_digits_only),
]


IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='Change the task only if it is still at this version: its ETag, `"3"`. '
        "A stale one is 412 with the task as it is now in `current`.",
    ),
]
IfNoneMatch = Annotated[
    str | None,
    Header(alias="If-None-Match", description="The ETag you have: 304 if it is still current."),
]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=IDEMPOTENCY_KEY_MAX,
        pattern=r"^[\x20-\x7e]+$",
        description="Any unique string (a UUID): a repeat of this request with the same key, "
        "within 24 hours, gets the first response again with `Idempotent-Replayed: true` and "
        "changes nothing; the same key with another request is 422 IDEMPOTENCY_KEY_REUSED.",
    ),
]
_ENTITY_TAG = re.compile(r'(W/)?"(\d{1,18})"|(\d{1,18})')


def _versions(header: str | None, *, weak: bool) -> Versions | None:
    """The task versions an If-Match (strong comparison) or If-None-Match (`weak`) names; None
    for none at all (no header) or any (`*`). A bare number is taken as the ETag a client
    forgot to quote; any other entity tag, or a version no task can have, matches none."""
    if header is None:
        return None
    versions = set()
    for member in header.split(","):
        member = member.strip()
        if member == "*":
            return None
        match = _ENTITY_TAG.fullmatch(member)
        if match and (weak or not match.group(1)):
            version = int(match.group(2) or match.group(3))
            if version <= VERSION_MAX:
                versions.add(version)
    return frozenset(versions)


Responses = dict[int | str, dict[str, Any]]

router = APIRouter(
    prefix="/api",
    route_class=TaskRoute,
    strict_content_type=False,
    responses={
        401: documented(
            "No token, or one that is invalid or expired",
            AuthRequired(),
            TokenInvalid(),
            TokenExpired(),
        ),
        403: documented("The token's user is not the path's user", Forbidden()),
        405: documented(
            "This path does not take this method; `Allow` lists those it takes",
            MethodNotAllowed(allow="GET, POST, DELETE"),
        ),
        422: documented(
            "Invalid input: `field` names the first problem, `errors` lists them all",
            ValidationFailed("title: must not be empty", field="title"),
        ),
        429: documented(
            "More than RATE_LIMIT requests a minute by this user, or, for requests refused as "
            "unauthenticated or forbidden, more than RATE_LIMIT_ANONYMOUS a minute from this "
            "client address (RateLimit-* then describe that budget); retry after `Retry-After`",
            RateLimited(limit=600, retry_after=42),
        ),
        500: documented("An unexpected failure (nothing about it is shown)", AppError()),
        503: documented(
            "The database is unavailable, busy or too slow; retry after `Retry-After`",
            ServiceUnavailable(),
        ),
    },
)
_NOT_FOUND: Responses = {404: documented("No such task for this user", TaskNotFound())}
_ETAG_HEADER = {
    "ETag": {
        "description": 'The task\'s version: `"3"`',
        "schema": {"type": "string", "pattern": '^"[0-9]+"$'},
    }
}
_TASK_HEADERS: Responses = {200: {"headers": _ETAG_HEADER}}
# A recurring task completed while its user had MAX_TASKS_PER_USER tasks: no next occurrence.
OCCURRENCE_SKIPPED = "X-Next-Occurrence-Skipped"
_SKIPPED_HEADER = {
    OCCURRENCE_SKIPPED: {
        "description": "`quota`: this completed a recurring task while its user had "
        "MAX_TASKS_PER_USER tasks, so its next occurrence was not created (it is when the task "
        "is completed again below the quota)",
        "schema": {"type": "string", "enum": ["quota"]},
    }
}
_COMPLETING_HEADERS: Responses = {200: {"headers": {**_ETAG_HEADER, **_SKIPPED_HEADER}}}
_PRECONDITION: Responses = {
    412: documented(
        "If-Match names another version: `current` is the task as it is now, `ETag` its version",
        PreconditionFailed(EXAMPLE_TASK),
        model=PreconditionFailedBody,
    )
}
_REPLAYED_HEADER = {
    "Idempotent-Replayed": {
        "description": "`true` on the repeat of a request with an Idempotency-Key",
        "schema": {"type": "string", "enum": ["true"]},
    }
}
_BODY_ERRORS: Responses = {
    400: documented("The body is not valid JSON", MalformedJSON()),
    413: documented(
        "The body is larger than 1 MiB",
        PayloadTooLarge("The request body is larger than 1048576 bytes"),
    ),
    415: documented("The body is not JSON", UnsupportedMediaType()),
}
_KEY_REUSED: Responses = {
    422: documented(
        "Invalid input (`field` names the first problem, `errors` lists them all), or an "
        "Idempotency-Key already used for another request",
        ValidationFailed("title: must not be empty", field="title"),
        IdempotencyKeyReused(),
    )
}
_SYNC_TOKEN_EXPIRED: Responses = {
    410: documented(
        "The sync token is too old to be served, or not this user's", SyncTokenExpired()
    )
}


def _json(content: Any) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_UTC_Z)


def _render(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        _json(content), status_code=status_code, headers=headers, media_type="application/json"
    )


def _etag(task: TaskRecord) -> str:
    return etag(task["version"])


def _render_task(task: TaskRecord) -> Response:
    return _render(task, headers={"ETag": _etag(task)})


def _render_written(written: tasks.Written) -> Response:
    response = _render_task(written.task)
    if written.occurrence_skipped:
        response.headers[OCCURRENCE_SKIPPED] = "quota"
    return response


async def _once(
    request: Request,
    conn: AsyncConnection,
    user_id: str,
    key: str | None,
    write: Callable[[], Awaitable[tasks.Written]],
    status_code: int = 200,
) -> Response:
    """Run a write, once per Idempotency-Key when one is sent, and answer with its task."""
    written: list[tasks.Written] = []  # the task, when this request wrote it

    async def run() -> tuple[int, bytes]:
        written.append(await write())
        return status_code, _json(written[0].task)

    if key is None:
        status, body = await run()
        replayed = False
    else:
        sent = await request.json() if await request.body() else None
        fingerprint = idempotency.request_hash(request.method, request.url.path, sent)
        outcome = await idempotency.once(
            conn, user_id=user_id, key=key, fingerprint=fingerprint, run=run
        )
        status, body, replayed = outcome.status, outcome.body, outcome.replayed
    if not replayed:
        _hub(request).written(user_id)
    # A replay has only the stored body to say which task and version it answered with.
    task = orjson.loads(body) if replayed else written[0].task
    headers = {"ETag": _etag(task)}
    if not replayed and written[0].occurrence_skipped:
        headers[OCCURRENCE_SKIPPED] = "quota"
    if status == 201:
        headers["Location"] = f"/api/{quote(user_id, safe='')}/tasks/{task['id']}"
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(body, status_code=status, headers=headers, media_type="application/json")


async def _created(task: Awaitable[TaskRecord]) -> tasks.Written:
    return tasks.Written(await task)


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


@router.get(
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
    return _render(page.tasks, headers=headers)


@router.delete(
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
    hub: Hub,
    status: Annotated[Literal["completed", "all"], Query(description="`completed` or `all`")],
) -> Response:
    deleted = await tasks.delete_tasks(conn, user_id=user_id, completed_only=status == "completed")
    hub.written(user_id)
    return _render({"deleted": deleted})


SinceToken = Annotated[
    str | None,
    Query(
        max_length=100,
        json_schema_extra={"pattern": "^[0-9]{1,18}$"},
        description="A sync token: a list's `X-Sync-Token`, or the `next` of the last page of "
        "changes. Left out: every task there is.",
    ),
]


@router.get(
    "/{user_id}/tasks/changes",
    operation_id="listTaskChanges",
    response_description="The changes after `since`",
    tags=["sync"],
    summary="What changed since a sync token",
    description="Tasks created or changed (as they are now) and ids of tasks deleted after "
    "`since`, in the order they changed, at most `limit`; `next` is the token to ask with next "
    "time, and `has_more` says whether to ask at once. Deletions are remembered 30 days: an "
    "older token is 410 SYNC_TOKEN_EXPIRED (list the tasks again and go on from the list's "
    "X-Sync-Token).",
    response_model=ChangesRead,
    responses=_SYNC_TOKEN_EXPIRED,
)
async def list_changes(
    user_id: CurrentUser,
    conn: Conn,
    since: SinceToken = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = MAX_LIST_LIMIT,
) -> Response:
    feed = await changes.changes(conn, user_id=user_id, since=since, limit=limit)
    return _render(
        {
            "changed": [task for _, _, task in feed.items if task is not None],
            "deleted": [task_id for _, task_id, task in feed.items if task is None],
            "next": feed.next,
            "has_more": feed.has_more,
        }
    )


class _EventStream(StreamingResponse):
    """A stream's response: its slot under the caps is given back however the response ends
    (the client gone, a failure, the server stopping), not when its generator is collected."""

    def __init__(self, stream: Stream) -> None:
        super().__init__(
            stream.body(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._stream.close()


@router.get(
    "/{user_id}/tasks/events",
    operation_id="streamTaskEvents",
    tags=["sync"],
    summary="Live changes (Server-Sent Events)",
    description="A stream of the user's changes as they happen: `event: changed` with the "
    'task, `event: deleted` with `{"id"}`; each event\'s `id` is its sync token. A comment '
    "line is sent when nothing happened for a while (a heartbeat). Reconnect with "
    "`Last-Event-ID` (or `?since=`) to resume without a gap; without either the stream starts "
    "from now. Send the token in `Authorization` as for every route (a fetch-based "
    "EventSource client). The stream ends when the token expires (after JWT_LEEWAY_SECONDS), "
    "with a comment line saying so: reconnect with a fresh token and `Last-Event-ID`. At most "
    "SSE_MAX_STREAMS_PER_USER streams of one user (and SSE_MAX_STREAMS in all) are open on "
    "one server process: beyond, 429.",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {
                "text/event-stream": {
                    # Each event, as an SSE parser hands it over (OpenAPI before 3.2 has no
                    # itemSchema: the schema of a stream describes one event).
                    "schema": {
                        "type": "object",
                        "required": ["event", "data"],
                        "properties": {
                            "event": {"type": "string", "enum": ["changed", "deleted"]},
                            "id": {"type": "string", "pattern": "^[0-9]+$"},
                            "data": {
                                "type": "string",
                                "description": 'JSON: the task, or `{"id": …}` of a deleted one',
                            },
                            "retry": {"type": "integer"},
                        },
                    }
                }
            },
            "description": "The event stream",
        },
        **_SYNC_TOKEN_EXPIRED,
        429: documented(
            "This user has SSE_MAX_STREAMS_PER_USER streams open on this server process, or "
            "the process SSE_MAX_STREAMS (Retry-After only); or more than RATE_LIMIT requests a "
            "minute by this user, or, for requests refused as unauthenticated or forbidden, "
            "more than RATE_LIMIT_ANONYMOUS a minute from this client address (RateLimit-* "
            "then describe that budget). Retry after `Retry-After`",
            TooManyStreams(limit=10, per_user=True, retry_after=RECONNECT_SECONDS),
            headers=("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"),
        ),
    },
)
async def stream_events(
    request: Request,
    user_id: CurrentUser,
    hub: Hub,
    since: SinceToken = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=100,
            json_schema_extra={"pattern": "^[0-9]{1,18}$"},
            description="The last event's id",
        ),
    ] = None,
) -> StreamingResponse:
    # Both are checked when both are sent; the header, which a reconnecting client sends, wins.
    if since is not None:
        changes.parse_sync_token(since, field="since")
    if last_event_id is not None:
        changes.parse_sync_token(last_event_id, field="Last-Event-ID")
    # Counted from here, before anything is read, until the response ends (TooManyStreams).
    stream = hub.open(user_id, expires=request.state.token_expires)
    try:
        # An expired or foreign token is refused before the stream starts.
        async with request.app.state.db.connect() as conn:
            token = await changes.start_token(conn, user_id=user_id, since=last_event_id or since)
    except BaseException:
        stream.close()
        raise
    stream.follow(int(token))
    return _EventStream(stream)


async def _get_only() -> None:
    raise MethodNotAllowed(allow="GET")


# Without these, PUT …/tasks/changes would be taken for an update of a task whose id is
# "changes" (422); it is a method the resource does not have.
for _name in ("changes", "events"):
    router.add_api_route(
        f"/{{user_id}}/tasks/{_name}",
        _get_only,
        methods=["POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )


@router.post(
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
                **_ETAG_HEADER,
                **_REPLAYED_HEADER,
                "Location": {
                    "description": "`/api/{user_id}/tasks/{id}`",
                    "schema": {"type": "string"},
                },
            }
        },
        409: documented("The user has MAX_TASKS_PER_USER tasks already", QuotaExceeded(10000)),
        **_KEY_REUSED,
        **_BODY_ERRORS,
    },
)
async def create_task(
    request: Request,
    user_id: CurrentUser,
    conn: Conn,
    data: TaskCreate,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    return await _once(
        request,
        conn,
        user_id,
        idempotency_key,
        lambda: _created(
            tasks.create_task(
                conn,
                user_id=user_id,
                data=data,
                max_tasks=request.app.state.settings.max_tasks_per_user,
            )
        ),
        status_code=201,
    )


@router.get(
    "/{user_id}/tasks/{task_id}",
    operation_id="getTask",
    response_description="The task",
    tags=["tasks"],
    summary="Get a task",
    response_model=TaskRead,
    responses={
        **_TASK_HEADERS,
        304: {
            "description": "If-None-Match names the current version: nothing to send",
            "headers": _ETAG_HEADER,
        },
        **_NOT_FOUND,
    },
)
async def get_task(
    user_id: CurrentUser, conn: Conn, task_id: TaskIdPath, if_none_match: IfNoneMatch = None
) -> Response:
    task = await tasks.get_task(conn, user_id=user_id, task_id=task_id)
    if if_none_match is not None:
        versions = _versions(if_none_match, weak=True)
        if versions is None or task["version"] in versions:
            return Response(status_code=304, headers={"ETag": _etag(task)})
    return _render_task(task)


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
    responses={**_COMPLETING_HEADERS, **_NOT_FOUND, **_PRECONDITION, **_BODY_ERRORS},
)
async def replace_task(
    request: Request,
    user_id: CurrentUser,
    conn: Conn,
    hub: Hub,
    task_id: TaskIdPath,
    data: TaskReplace,
    if_match: IfMatch = None,
) -> Response:
    # The same update as PATCH; only what the body must hold (the title) differs.
    return await update_task(request, user_id, conn, hub, task_id, data, if_match)


@router.patch(
    "/{user_id}/tasks/{task_id}",
    operation_id="updateTask",
    response_description="The task as it is now",
    tags=["tasks"],
    summary="Update some fields of a task",
    description="Only the fields sent change; `{}` changes nothing.",
    response_model=TaskRead,
    responses={**_COMPLETING_HEADERS, **_NOT_FOUND, **_PRECONDITION, **_BODY_ERRORS},
)
async def update_task(
    request: Request,
    user_id: CurrentUser,
    conn: Conn,
    hub: Hub,
    task_id: TaskIdPath,
    data: TaskUpdate,
    if_match: IfMatch = None,
) -> Response:
    written = await tasks.update_task(
        conn,
        user_id=user_id,
        task_id=task_id,
        data=data,
        max_tasks=request.app.state.settings.max_tasks_per_user,
        if_match=_versions(if_match, weak=False),
    )
    hub.written(user_id)
    return _render_written(written)


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
        200: {"headers": {**_ETAG_HEADER, **_REPLAYED_HEADER, **_SKIPPED_HEADER}},
        **_NOT_FOUND,
        **_PRECONDITION,
        **_KEY_REUSED,
        **_BODY_ERRORS,
    },
)
async def complete_task(
    request: Request,
    user_id: CurrentUser,
    conn: Conn,
    task_id: TaskIdPath,
    data: Annotated[CompleteBody | None, Body()] = None,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    completed = None if data is None or data.completed is MISSING else data.completed
    return await _once(
        request,
        conn,
        user_id,
        idempotency_key,
        lambda: tasks.set_completed(
            conn,
            user_id=user_id,
            task_id=task_id,
            completed=completed,
            max_tasks=request.app.state.settings.max_tasks_per_user,
            if_match=_versions(if_match, weak=False),
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
    responses={**_TASK_HEADERS, **_NOT_FOUND, **_PRECONDITION},
)
async def delete_task(
    user_id: CurrentUser, conn: Conn, hub: Hub, task_id: TaskIdPath, if_match: IfMatch = None
) -> Response:
    task = await tasks.delete_task(
        conn, user_id=user_id, task_id=task_id, if_match=_versions(if_match, weak=False)
    )
    hub.written(user_id)
    return _render_task(task)
