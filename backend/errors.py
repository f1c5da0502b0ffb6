"""The error family, and the one installer that turns every failure into the contract's body.

    AppError                       500 INTERNAL_ERROR
    ├── BadRequest                 400 BAD_REQUEST
    │   ├── MalformedJSON              MALFORMED_JSON
    │   └── CorsRefused                CORS_REFUSED    (a preflight from a foreign origin)
    ├── AuthError                  401, with WWW-Authenticate: Bearer
    │   ├── AuthRequired               AUTH_REQUIRED   (no credentials sent)
    │   ├── TokenInvalid               TOKEN_INVALID   (sent but refused: error="invalid_token")
    │   └── TokenExpired               TOKEN_EXPIRED
    ├── Forbidden                  403 FORBIDDEN
    ├── NotFound                   404 NOT_FOUND
    │   └── TaskNotFound               TASK_NOT_FOUND
    ├── MethodNotAllowed           405 METHOD_NOT_ALLOWED
    ├── RequestTimeout             408 REQUEST_TIMEOUT (a request head too slow: server.py)
    ├── QuotaExceeded              409 QUOTA_EXCEEDED  (MAX_TASKS_PER_USER)
    ├── SyncTokenExpired           410 SYNC_TOKEN_EXPIRED
    ├── PreconditionFailed         412 PRECONDITION_FAILED (+ current, ETag)
    ├── PayloadTooLarge            413 PAYLOAD_TOO_LARGE
    ├── UnsupportedMediaType       415 UNSUPPORTED_MEDIA_TYPE
    ├── ValidationFailed           422 VALIDATION_ERROR (+ field)
    │   └── IdempotencyKeyReused       IDEMPOTENCY_KEY_REUSED
    ├── RateLimited                429 RATE_LIMITED    (+ Retry-After, RateLimit-*)
    │   └── TooManyStreams             RATE_LIMITED    (SSE_MAX_STREAMS…; + Retry-After only)
    ├── HeadersTooLarge            431 HEADERS_TOO_LARGE (a request head too large: server.py)
    └── ServiceUnavailable         503 SERVICE_UNAVAILABLE (+ Retry-After)

Body: {"detail": str, "code": str, "field"?: str, "errors"?: [{"field", "message"}]}, and for a
412 the task as it is now in "current" (`error_body`). web/errors.py installs the handlers
that answer with it, and web/middleware.py's `UnexpectedErrors` answers anything else with a
500, inside CORS, so that even a 500 carries the CORS headers a browser needs to read it.
Nothing else raises HTTPException; no response carries a traceback, SQL or a driver's message.
The HTTP server answers a few requests before the application sees them (server.py: a request
that is not HTTP, a head too large or too slow) with the same bodies, built from these classes.
"""

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from backend.models.sync import KEY_HOURS, TOMBSTONE_DAYS
from backend.models.task import etag

# The headers that describe a rate-limit budget (draft-ietf-httpapi-ratelimit-headers), in the
# order they are sent: the limit, what is left of it, the seconds until the window closes.
RATE_LIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


class AppError(Exception):
    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "INTERNAL_ERROR"
    default_detail: ClassVar[str] = "Internal server error"

    def __init__(self, detail: str | None = None, *, field: str | None = None) -> None:
        self.detail = detail or self.default_detail
        self.field = field
        super().__init__(self.detail)

    def headers(self) -> dict[str, str]:
        return {}

    def extra(self) -> dict[str, Any]:
        """Members of the body beyond detail, code and field."""
        return {}


class BadRequest(AppError):
    status_code = 400
    code = "BAD_REQUEST"
    default_detail = "Bad request"


class MalformedJSON(BadRequest):
    code = "MALFORMED_JSON"
    default_detail = "The request body is not valid JSON"


class CorsRefused(BadRequest):
    code = "CORS_REFUSED"
    default_detail = "This origin, method or header is not allowed (CORS_ORIGINS)"


class AuthError(AppError):
    status_code = 401

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class AuthRequired(AuthError):
    code = "AUTH_REQUIRED"
    default_detail = "Authentication required: send Authorization: Bearer <JWT>"

    def headers(self) -> dict[str, str]:
        # RFC 6750 §3.1: no error code when the request carried no credentials at all.
        return {"WWW-Authenticate": "Bearer"}


class TokenInvalid(AuthError):
    code = "TOKEN_INVALID"
    default_detail = "The bearer token is invalid"


class TokenExpired(AuthError):
    code = "TOKEN_EXPIRED"
    default_detail = "The bearer token has expired"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer error="invalid_token", error_description="expired"'}


class Forbidden(AppError):
    status_code = 403
    code = "FORBIDDEN"
    default_detail = "The token's user may not access this user's tasks"


class NotFound(AppError):
    status_code = 404
    code = "NOT_FOUND"
    default_detail = "Not found"


class TaskNotFound(NotFound):
    code = "TASK_NOT_FOUND"
    default_detail = "Task not found"


class MethodNotAllowed(AppError):
    status_code = 405
    code = "METHOD_NOT_ALLOWED"
    default_detail = "Method not allowed"

    def __init__(self, detail: str | None = None, *, allow: str | None = None) -> None:
        super().__init__(detail)
        self.allow = allow  # the methods the resource has, when the raiser knows them

    def headers(self) -> dict[str, str]:
        return {} if self.allow is None else {"Allow": self.allow}


class RequestTimeout(AppError):
    status_code = 408
    code = "REQUEST_TIMEOUT"
    default_detail = "The request line and headers did not arrive in time (HTTP_HEADER_TIMEOUT)"


class QuotaExceeded(AppError):
    status_code = 409
    code = "QUOTA_EXCEEDED"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"This user has {limit} tasks, the most allowed (MAX_TASKS_PER_USER): "
            "delete some to create more"
        )


class SyncTokenExpired(AppError):
    status_code = 410
    code = "SYNC_TOKEN_EXPIRED"
    default_detail = (
        f"This sync token is older than the deletions the service remembers ({TOMBSTONE_DAYS} "
        "days), or not one of this user's: list the tasks again and follow the change feed "
        "from its X-Sync-Token"
    )


class PreconditionFailed(AppError):
    status_code = 412
    code = "PRECONDITION_FAILED"
    default_detail = (
        "The task has changed since the version in If-Match: `current` is the task as it is "
        "now; apply the change to it and send its ETag"
    )

    def __init__(self, current: dict[str, Any]) -> None:
        super().__init__()
        self.current = current

    def headers(self) -> dict[str, str]:
        return {"ETag": etag(self.current["version"])}

    def extra(self) -> dict[str, Any]:
        return {"current": self.current}


class PayloadTooLarge(AppError):
    status_code = 413
    code = "PAYLOAD_TOO_LARGE"
    default_detail = "The request body is too large"


class UnsupportedMediaType(AppError):
    status_code = 415
    code = "UNSUPPORTED_MEDIA_TYPE"
    default_detail = "Send the body as JSON with Content-Type: application/json"


class ValidationFailed(AppError):
    status_code = 422
    code = "VALIDATION_ERROR"
    default_detail = "Invalid request"


class IdempotencyKeyReused(ValidationFailed):
    code = "IDEMPOTENCY_KEY_REUSED"
    default_detail = (
        "Idempotency-Key: this key was used with another request (method, path or body) in "
        f"the last {KEY_HOURS} hours; send a new key for a new request"
    )

    def __init__(self) -> None:
        super().__init__(field="Idempotency-Key")


class RateLimited(AppError):
    status_code = 429
    code = "RATE_LIMITED"

    def __init__(
        self, *, limit: int, retry_after: int, of: str = "requests a minute (RATE_LIMIT)"
    ) -> None:
        super().__init__(f"More than {limit} {of}: retry in {retry_after} s")
        self.limit = limit
        self.retry_after = retry_after  # seconds until the window closes, at least 1

    def headers(self) -> dict[str, str]:
        values = (self.limit, 0, self.retry_after)
        return {
            "Retry-After": str(self.retry_after),
            **{name: str(value) for name, value in zip(RATE_LIMIT_HEADERS, values, strict=True)},
        }


class HeadersTooLarge(AppError):
    status_code = 431
    code = "HEADERS_TOO_LARGE"
    default_detail = "The request line and headers are too large"


class TooManyStreams(RateLimited):
    """An event stream beyond SSE_MAX_STREAMS_PER_USER (`per_user`) or SSE_MAX_STREAMS. No
    request budget is involved: only Retry-After, no RateLimit-* headers."""

    def __init__(self, *, limit: int, per_user: bool, retry_after: int) -> None:
        if per_user:
            detail = (
                f"This user has {limit} event streams open on this server process, the most "
                f"allowed (SSE_MAX_STREAMS_PER_USER): close one, or retry in {retry_after} s"
            )
        else:
            detail = (
                f"This server process has {limit} event streams open, the most it allows "
                f"(SSE_MAX_STREAMS): retry in {retry_after} s"
            )
        AppError.__init__(self, detail)
        self.limit = limit
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ServiceUnavailable(AppError):
    status_code = 503
    code = "SERVICE_UNAVAILABLE"
    default_detail = "The service is temporarily unavailable; try again shortly"

    def __init__(self, detail: str | None = None, *, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after  # seconds until a retry has a chance

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


def error_codes() -> list[str]:
    """Every code the service answers with, in the tree's order."""

    def family(cls: type[AppError]) -> Iterator[type[AppError]]:
        yield cls
        for sub in cls.__subclasses__():
            yield from family(sub)

    return list(dict.fromkeys(member.code for member in family(AppError)))


def error_body(
    error: AppError, *, errors: Sequence[dict[str, str]] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"detail": error.detail, "code": error.code}
    if error.field is not None:
        body["field"] = error.field
        if errors is None and isinstance(error, ValidationFailed):
            # A rule checked outside the schema (in the database, say) is listed like the rest.
            errors = [
                {"field": error.field, "message": error.detail.removeprefix(f"{error.field}: ")}
            ]
    if errors:
        body["errors"] = list(errors)
    body.update(error.extra())
    return body
