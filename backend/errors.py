"""The error family, and the one installer that turns every failure into the contract's body.

    AppError                       500 INTERNAL_ERROR
    ├── MalformedJSON              400 MALFORMED_JSON
    ├── AuthError                  401, with WWW-Authenticate: Bearer
    │   ├── AuthRequired               AUTH_REQUIRED   (no credentials sent)
    │   ├── TokenInvalid               TOKEN_INVALID   (sent but refused: error="invalid_token")
    │   └── TokenExpired               TOKEN_EXPIRED
    ├── Forbidden                  403 FORBIDDEN
    ├── NotFound                   404 NOT_FOUND
    │   └── TaskNotFound               TASK_NOT_FOUND
    ├── MethodNotAllowed           405 METHOD_NOT_ALLOWED
    ├── PayloadTooLarge            413 PAYLOAD_TOO_LARGE
    ├── UnsupportedMediaType       415 UNSUPPORTED_MEDIA_TYPE
    ├── ValidationFailed           422 VALIDATION_ERROR (+ field)
    └── ServiceUnavailable         503 SERVICE_UNAVAILABLE (+ Retry-After)

Body: {"detail": str, "code": str, "field"?: str, "errors"?: [{"field", "message"}]}.
Nothing else raises HTTPException; no response carries a traceback, SQL or a driver's message.
"""

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Match

from backend.db import DatabaseUnavailable

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


class MalformedJSON(AppError):
    status_code = 400
    code = "MALFORMED_JSON"
    default_detail = "The request body is not valid JSON"


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


class ServiceUnavailable(AppError):
    status_code = 503
    code = "SERVICE_UNAVAILABLE"
    default_detail = "The service is temporarily unavailable; try again shortly"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


def error_response(error: AppError, *, errors: Sequence[dict[str, str]] | None = None) -> Response:
    body: dict[str, Any] = {"detail": error.detail, "code": error.code}
    if error.field is not None:
        body["field"] = error.field
    if errors:
        body["errors"] = list(errors)
    return Response(
        orjson.dumps(body),
        status_code=error.status_code,
        headers=error.headers(),
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


def _flat_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    for route in routes:
        # FastAPI keeps an included router as one entry that wraps the router's own routes
        # (whose paths already carry the router's prefix; this app includes without a prefix).
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _flat_routes(included.routes)
        else:
            yield route


def _allowed_methods(request: Request) -> list[str]:
    # Starlette names only the first route whose path matches; RFC 9110 wants every method
    # the resource supports.
    methods: set[str] = set()
    for route in _flat_routes(request.app.router.routes):
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return sorted(methods, key=lambda m: order.index(m) if m in order else len(order))


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return error_response(NotFound())
    if exc.status_code == 405:
        response = error_response(MethodNotAllowed())
        response.headers["Allow"] = ", ".join(_allowed_methods(request))
        return response
    error = AppError("Bad request" if exc.status_code < 500 else None)
    response = error_response(error)
    response.status_code = exc.status_code
    return response


async def _on_unavailable(_: Request, exc: Exception) -> Response:
    # The database is down, restarting, out of connections, locked or too slow (db.py sorts the
    # driver's errors where they arise): the request may well succeed if retried, so 503 with
    # Retry-After rather than a 500. Logged here and only here, by its reason: no SQL, no values.
    assert isinstance(exc, DatabaseUnavailable)
    logger.warning("database unavailable: %s", exc.reason)
    return error_response(ServiceUnavailable())


async def _on_unexpected(_: Request, exc: Exception) -> Response:
    logger.error("unhandled error", exc_info=exc)
    return error_response(AppError())


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _on_app_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(DatabaseUnavailable, _on_unavailable)
    app.add_exception_handler(Exception, _on_unexpected)
