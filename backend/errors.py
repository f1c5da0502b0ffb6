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
412 the task as it is now in "current".
Nothing else raises HTTPException; no response carries a traceback, SQL or a driver's message.
The HTTP server answers a few requests before the application sees them (server.py: a request
that is not HTTP, a head too large or too slow) with the same bodies, built from these classes.
An HTTPException that Starlette or FastAPI raise themselves keeps its status and headers and
gets the code of its status. Unexpected failures are answered by `UnexpectedErrors`, a
middleware inside CORS, so that even a 500 carries the CORS headers a browser needs to read it.
"""

import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from http import HTTPStatus
from typing import Any, ClassVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.db import DatabaseUnavailable
from backend.models.task import etag

logger = logging.getLogger("backend.errors")


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
        "This sync token is older than the deletions the service remembers (30 days), or not "
        "one of this user's: list the tasks again and follow the change feed from its "
        "X-Sync-Token"
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
        "the last 24 hours; send a new key for a new request"
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
        return {
            "Retry-After": str(self.retry_after),
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(self.retry_after),
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


def error_response(error: AppError, *, errors: Sequence[dict[str, str]] | None = None) -> Response:
    return _render(error_body(error, errors=errors), error.status_code, error.headers())


def _render(
    body: dict[str, Any], status_code: int, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_UTC_Z),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


def _field_of(loc: Sequence[int | str]) -> str:
    # ("body", "title") -> "title"; ("path", "task_id") -> "task_id"; ("body",) -> "body".
    parts = [str(p) for p in loc[1:] if not isinstance(p, int)] if len(loc) > 1 else []
    return ".".join(parts) or str(loc[0] if loc else "body")


def _message(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "Invalid value"))
    # pydantic prefixes the messages of errors raised in validators with "Value error, ".
    return msg.removeprefix("Value error, ")


async def _on_app_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    return error_response(exc)


async def _on_validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"field": _field_of(err.get("loc", ())), "message": _message(err)} for err in exc.errors()
    ]
    first = problems[0] if problems else {"field": "body", "message": "Invalid request"}
    return error_response(
        ValidationFailed(f"{first['field']}: {first['message']}", field=first["field"]),
        errors=problems,
    )


def flat_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    for route in routes:
        # FastAPI keeps an included router as one entry that wraps the router's own routes
        # (whose paths already carry the router's prefix; this app includes without a prefix).
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from flat_routes(included.routes)
        else:
            yield route


def _allowed_methods(request: Request) -> list[str]:
    # Of the routes whose path matches, the most specific ones (fewest parameters: `…/changes`
    # is not a task whose id is "changes"), and only those the API documents.
    matching: list[tuple[int, set[str]]] = []
    for route in flat_routes(request.app.router.routes):
        match, _ = route.matches(request.scope)
        if match is not Match.NONE and getattr(route, "include_in_schema", True):
            path = str(getattr(route, "path", ""))
            matching.append((path.count("{"), set(getattr(route, "methods", None) or ())))
    fewest = min((parameters for parameters, _ in matching), default=0)
    methods = {m for parameters, found in matching if parameters == fewest for m in found}
    order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return sorted(methods, key=lambda m: order.index(m) if m in order else len(order))


# The family member for each status an HTTPException of Starlette or FastAPI may carry.
_BY_STATUS: dict[int, type[AppError]] = {
    error.status_code: error
    for error in (
        BadRequest,
        AuthRequired,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        RequestTimeout,
        PayloadTooLarge,
        UnsupportedMediaType,
        ValidationFailed,
        HeadersTooLarge,
        ServiceUnavailable,
    )
}


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    known = _BY_STATUS.get(exc.status_code)
    if exc.status_code == 404:
        # Starlette's detail is just "Not Found"; ours says what was not found.
        response = error_response(NotFound())
    elif exc.status_code == 405:
        response = error_response(MethodNotAllowed())
    elif exc.status_code >= 500:
        response = error_response(AppError())  # a 5xx detail may hold internals
        response.status_code = exc.status_code
    else:
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail else None
        if known is not None:
            response = error_response(known(detail))
        else:  # a status no member is made for: a code of the family all the same
            phrase = HTTPStatus(exc.status_code).phrase
            code = RateLimited.code if exc.status_code == 429 else BadRequest.code
            response = _render({"detail": detail or phrase, "code": code}, exc.status_code)
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    if exc.status_code == 405:
        # Starlette names the methods of the first route whose path matched; RFC 9110 wants
        # every method of the resource.
        response.headers["Allow"] = ", ".join(_allowed_methods(request))
    return response


async def _on_unavailable(_: Request, exc: Exception) -> Response:
    # The database is down, restarting, out of connections, locked or too slow (db.py sorts the
    # driver's errors where they arise): the request may well succeed if retried, so 503 with
    # Retry-After rather than a 500. Logged here and only here, by its reason: no SQL, no values.
    assert isinstance(exc, DatabaseUnavailable)
    logger.warning("database unavailable: %s", exc.reason)
    return error_response(ServiceUnavailable())


class UnexpectedErrors:
    """Answers an exception nobody handled with the contract's 500 body, and logs it once.

    Starlette answers them in its outermost middleware, outside CORS, so a browser would see a
    CORS failure instead of the error; this one sits inside CORS. A response that has already
    started cannot be replaced: then the exception goes on to the server, which closes the
    connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            logger.error("unhandled error", exc_info=exc)
            if started:
                raise
            await error_response(AppError())(scope, receive, send)


def install_error_handlers(
    app: FastAPI, *, unrouted: Callable[[Scope], Awaitable[AppError | None]] | None = None
) -> None:
    """`unrouted` is consulted before a request that no route takes (404, 405) is answered; the
    error it returns, if any, is answered instead (main.py: the client address's budget)."""

    async def on_http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if unrouted is not None and exc.status_code in (404, 405):
            instead = await unrouted(request.scope)
            if instead is not None:
                return error_response(instead)
        return await _on_http_exception(request, exc)

    app.add_exception_handler(AppError, _on_app_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(DatabaseUnavailable, _on_unavailable)
