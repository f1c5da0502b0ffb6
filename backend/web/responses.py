"""Responses as the handlers send them: JSON rendered once by `schemas.rendering.to_json` (rows
go straight to JSON; `response_model` documents the shape without re-validating what the
database just returned), a task with its ETag, and the answer that replays a stored one."""

from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from backend.models.task import etag
from backend.schemas.rendering import to_json

if TYPE_CHECKING:  # types only: the error handlers use this module, and need no services
    from backend.services.tables import TaskRecord
    from backend.services.tasks import Written

# A recurring task completed while its user had MAX_TASKS_PER_USER tasks: no next occurrence.
OCCURRENCE_SKIPPED = "X-Next-Occurrence-Skipped"
REPLAYED = "Idempotent-Replayed"


def json_response(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        to_json(content), status_code=status_code, headers=headers, media_type="application/json"
    )


class Replayed(Response):
    """The stored answer to a repeated Idempotency-Key: nothing was written this time, so
    TaskRoute announces no change."""


def task_headers(task: "TaskRecord", *, skipped: bool = False) -> dict[str, str]:
    headers = {"ETag": etag(task["version"])}
    if skipped:
        headers[OCCURRENCE_SKIPPED] = "quota"
    return headers


def task_response(task: "TaskRecord") -> Response:
    return json_response(task, headers=task_headers(task))


def written_response(written: "Written") -> Response:
    return json_response(
        written.task, headers=task_headers(written.task, skipped=written.occurrence_skipped)
    )
