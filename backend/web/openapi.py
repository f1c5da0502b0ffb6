"""The OpenAPI document: what the routes share (the error responses every route under /api/
can give, the headers of a task's answers), and the finishing FastAPI cannot do per route."""

import re
from typing import Any

from fastapi import FastAPI

from backend.errors import (
    RATE_LIMIT_HEADERS,
    AppError,
    AuthRequired,
    Forbidden,
    IdempotencyKeyReused,
    MalformedJSON,
    MethodNotAllowed,
    PreconditionFailed,
    RateLimited,
    ServiceUnavailable,
    SyncTokenExpired,
    TaskNotFound,
    TokenExpired,
    TokenInvalid,
    UnsupportedMediaType,
    ValidationFailed,
)
from backend.models.task import ETAG_PATTERN
from backend.schemas.error import HEADERS, PreconditionFailedBody, documented
from backend.schemas.task import EXAMPLE_TASK
from backend.web.middleware import MAX_BODY_BYTES, REQUEST_ID_PATTERN, body_too_large
from backend.web.responses import OCCURRENCE_SKIPPED, REPLAYED

Responses = dict[int | str, dict[str, Any]]

TAGS = [
    {"name": "tasks", "description": "A user's tasks: every route needs the user's token."},
    {
        "name": "sync",
        "description": "What changed since a sync token, as pages or as a live stream.",
    },
    {"name": "operations", "description": "Probes and metrics for operators; no token."},
]

# The bearer scheme, as the document states it on every /api route: declared here rather than
# as FastAPI's HTTPBearer dependency, which would parse the header a second time on every
# request after authenticate() has.
BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": "A Better Auth JWT whose `sub` is the user id in the path.",
}

# Every route under /api/ may answer these.
API_RESPONSES: Responses = {
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
}
NOT_FOUND: Responses = {404: documented("No such task for this user", TaskNotFound())}
ETAG_HEADER = {
    "ETag": {
        "description": 'The task\'s version: `"3"`',
        "schema": {"type": "string", "pattern": ETAG_PATTERN},
    }
}
TASK_HEADERS: Responses = {200: {"headers": ETAG_HEADER}}
SKIPPED_HEADER = {
    OCCURRENCE_SKIPPED: {
        "description": "`quota`: this completed a recurring task while its user had "
        "MAX_TASKS_PER_USER tasks, so its next occurrence was not created (it is when the task "
        "is completed again below the quota)",
        "schema": {"type": "string", "enum": ["quota"]},
    }
}
COMPLETING_HEADERS: Responses = {200: {"headers": {**ETAG_HEADER, **SKIPPED_HEADER}}}
PRECONDITION: Responses = {
    412: documented(
        "If-Match names another version: `current` is the task as it is now, `ETag` its version",
        PreconditionFailed(EXAMPLE_TASK),
        model=PreconditionFailedBody,
    )
}
REPLAYED_HEADER = {
    REPLAYED: {
        "description": "`true` on the repeat of a request with an Idempotency-Key",
        "schema": {"type": "string", "enum": ["true"]},
    }
}
BODY_ERRORS: Responses = {
    400: documented("The body is not valid JSON", MalformedJSON()),
    413: documented(f"The body is larger than {MAX_BODY_BYTES // 2**20} MiB", body_too_large()),
    415: documented("The body is not JSON", UnsupportedMediaType()),
}
KEY_REUSED: Responses = {
    422: documented(
        "Invalid input (`field` names the first problem, `errors` lists them all), or an "
        "Idempotency-Key already used for another request",
        ValidationFailed("title: must not be empty", field="title"),
        IdempotencyKeyReused(),
    )
}
SYNC_TOKEN_EXPIRED: Responses = {
    410: documented(
        "The sync token is too old to be served, or not this user's", SyncTokenExpired()
    )
}

_REQUEST_ID_HEADER = {
    "description": "The request's id: the one sent, when sane, or a new one; every log line "
    "of the request carries it",
    "schema": {"type": "string", "pattern": REQUEST_ID_PATTERN},
}
_RATE_LIMIT_HEADERS = {name: HEADERS[name] for name in RATE_LIMIT_HEADERS}


def finish(app: FastAPI) -> None:
    """The app serves FastAPI's document, finished, built once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _finished(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _finished(schema: dict[str, Any]) -> dict[str, Any]:
    """What FastAPI cannot say per route: every route under /api/ needs the bearer token, every
    response carries X-Request-ID, and every successful answer under /api/ the user's
    RateLimit-* headers. An optional query or header parameter is left out, never sent as null
    (a header or query value is text): FastAPI documents `str | None` as "a string or null", so
    a client generator or fuzzer would send the text "null". Such a parameter is documented as
    the string alone. Path parameters are listed in the path's order (FastAPI lists a
    dependency's, such as the verified user's, after the handler's own)."""
    schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schema["components"]["securitySchemes"]["HTTPBearer"] = BEARER_SCHEME
    for path, operations in schema.get("paths", {}).items():
        in_path = re.findall(r"{(\w+)}", path)
        for operation in operations.values():
            if path.startswith("/api/"):
                operation["security"] = [{"HTTPBearer": []}]
            for status, response in operation.get("responses", {}).items():
                headers = response.setdefault("headers", {})
                if path.startswith("/api/") and status.startswith("2"):
                    headers.update(_RATE_LIMIT_HEADERS)
                headers["X-Request-ID"] = _REQUEST_ID_HEADER
            parameters = operation.get("parameters", [])
            for parameter in parameters:
                choices = parameter.get("schema", {}).get("anyOf")
                if not choices or {"type": "null"} not in choices:
                    continue
                others = [choice for choice in choices if choice != {"type": "null"}]
                if len(others) == 1:
                    rest = {k: v for k, v in parameter["schema"].items() if k != "anyOf"}
                    parameter["schema"] = {**others[0], **rest}
            parameters.sort(
                key=lambda p: in_path.index(p["name"]) if p["in"] == "path" else len(in_path)
            )
    return schema
