"""The sync routes: the change feed (`…/tasks/changes`, pages) and the event stream
(`…/tasks/events`, Server-Sent Events). The stream itself is services/events.py's and
services/streams.py's; the route opens it, checks where it starts, and frames its body.
"""

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from backend.errors import RATE_LIMIT_HEADERS, MethodNotAllowed, TooManyStreams
from backend.models.sync import SYNC_TOKEN_PATTERN, TOMBSTONE_DAYS
from backend.schemas.error import documented
from backend.schemas.task import MAX_LIST_LIMIT, ChangesRead
from backend.services import changes
from backend.services.streams import RECONNECT_SECONDS, Stream
from backend.web.dependencies import Conn, CurrentUser
from backend.web.openapi import API_RESPONSES, SYNC_TOKEN_EXPIRED
from backend.web.responses import json_response
from backend.web.routing import TaskRoute
from backend.web.state import app_state

router = APIRouter(
    prefix="/api", route_class=TaskRoute, strict_content_type=False, responses=API_RESPONSES
)

SinceToken = Annotated[
    str | None,
    Query(
        max_length=100,
        json_schema_extra={"pattern": SYNC_TOKEN_PATTERN},
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
    f"time, and `has_more` says whether to ask at once. Deletions are remembered {TOMBSTONE_DAYS} "
    "days: an older token is 410 SYNC_TOKEN_EXPIRED (list the tasks again and go on from the "
    "list's X-Sync-Token).",
    response_model=ChangesRead,
    responses=SYNC_TOKEN_EXPIRED,
)
async def list_changes(
    user_id: CurrentUser,
    conn: Conn,
    since: SinceToken = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = MAX_LIST_LIMIT,
) -> Response:
    feed = await changes.changes(conn, user_id=user_id, since=since, limit=limit)
    return json_response(
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
        **SYNC_TOKEN_EXPIRED,
        429: documented(
            "This user has SSE_MAX_STREAMS_PER_USER streams open on this server process, or "
            "the process SSE_MAX_STREAMS (Retry-After only); or more than RATE_LIMIT requests a "
            "minute by this user, or, for requests refused as unauthenticated or forbidden, "
            "more than RATE_LIMIT_ANONYMOUS a minute from this client address (RateLimit-* "
            "then describe that budget). Retry after `Retry-After`",
            TooManyStreams(limit=10, per_user=True, retry_after=RECONNECT_SECONDS),
            headers=RATE_LIMIT_HEADERS,
        ),
    },
)
async def stream_events(
    request: Request,
    user_id: CurrentUser,
    since: SinceToken = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=100,
            json_schema_extra={"pattern": SYNC_TOKEN_PATTERN},
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
    state = app_state(request)
    stream = state.changes.open(user_id, expires=request.state.token_expires)
    try:
        # An expired or foreign token is refused before the stream starts.
        async with state.db.connect() as conn:
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
