"""The error body, and the error responses of the OpenAPI document (errors.py renders them).

Each documented error response carries an example rendered by the error itself, so the
document shows exactly what the service sends; `field` and `errors` are left out when they do
not apply (never null), and `code` is one of the codes of the error family.
"""

from typing import Any

from pydantic import BaseModel, Field, JsonValue
from pydantic.json_schema import SkipJsonSchema

from backend.errors import AppError, error_body, error_codes
from backend.schemas.task import TaskRead


class FieldProblem(BaseModel):
    field: str = Field(description="`title`, `tags.2`, `limit`, `Idempotency-Key`…")
    message: str


_CODES: list[JsonValue] = [*error_codes()]


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong, for people: show it, don't parse it")
    code: str = Field(
        json_schema_extra={"enum": _CODES},
        description="What went wrong, for programs: stable, UPPER_SNAKE",
    )
    field: str | SkipJsonSchema[None] = Field(
        default=None, description="The request field at fault (422 and some 400s)"
    )
    errors: list[FieldProblem] | SkipJsonSchema[None] = Field(
        default=None, description="Every problem found, when the input was invalid (422)"
    )


class PreconditionFailedBody(ErrorBody):
    current: TaskRead = Field(description="The task as it is now; its version is the ETag")


# Headers an error may carry, as the document describes them.
HEADERS: dict[str, dict[str, Any]] = {
    "WWW-Authenticate": {
        "description": '`Bearer`, or `Bearer error="invalid_token"` when a token was refused',
        "schema": {"type": "string"},
    },
    "Allow": {
        "description": "The methods this path takes: `GET, POST, DELETE`",
        "schema": {"type": "string"},
    },
    "ETag": {"description": 'The task\'s version now: `"3"`', "schema": {"type": "string"}},
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 1},
    },
    "RateLimit-Limit": {
        "description": "Requests a minute allowed (RATE_LIMIT; sent while it is on)",
        "schema": {"type": "integer", "minimum": 1},
    },
    "RateLimit-Remaining": {
        "description": "Requests left in this minute's window",
        "schema": {"type": "integer", "minimum": 0},
    },
    "RateLimit-Reset": {
        "description": "Seconds until the window closes",
        "schema": {"type": "integer", "minimum": 0},
    },
}


def documented(
    description: str,
    *examples: AppError,
    model: type[ErrorBody] = ErrorBody,
    headers: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One error status of an operation: its body's schema, one example per error that may
    answer with it, and the headers it carries."""
    names = [*dict.fromkeys(name for error in examples for name in error.headers()), *headers]
    bodies = {error.code: {"value": error_body(error)} for error in examples}
    response: dict[str, Any] = {
        "model": model,
        "description": description,
        "content": {"application/json": {"examples": bodies}},
    }
    if names:
        response["headers"] = {name: HEADERS[name] for name in dict.fromkeys(names)}
    return response
