"""The one place that turns a failure into the contract's body: the exception handlers of the
app (AppError, request validation, Starlette's and FastAPI's HTTPException, an unavailable
database). An unexpected exception is answered by middleware.UnexpectedErrors, inside CORS.

An HTTPException that Starlette or FastAPI raise themselves keeps its status and headers and
gets the code of its status; Starlette's 404 and 405 get ours, and a 405 the `Allow` of every
method of the resource.
"""

import logging
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Scope

from backend.db import DatabaseUnavailable
from backend.errors import (
    AppError,
    AuthRequired,
    BadRequest,
    Forbidden,
    HeadersTooLarge,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    ServiceUnavailable,
    UnsupportedMediaType,
    ValidationFailed,
    error_body,
)
from backend.web.matching import allowed_methods
from backend.web.responses import json_response

logger = logging.getLogger("backend.errors")


def error_response(error: AppError, *, errors: Sequence[dict[str, str]] | None = None) -> Response:
    return json_response(error_body(error, errors=errors), error.status_code, error.headers())


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
            response = json_response({"detail": detail or phrase, "code": code}, exc.status_code)
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    if exc.status_code == 405:
        # Starlette names the methods of the first route whose path matched; RFC 9110 wants
        # every method of the resource.
        response.headers["Allow"] = ", ".join(
            allowed_methods(request.app.router.routes, request.scope)
        )
    return response


async def _on_unavailable(_: Request, exc: Exception) -> Response:
    # The database is down, restarting, out of connections, locked or too slow (db/ sorts the
    # driver's errors where they arise): the request may well succeed if retried, so 503 with
    # Retry-After rather than a 500. Logged here and only here, by its reason: no SQL, no values.
    assert isinstance(exc, DatabaseUnavailable)
    logger.warning("database unavailable: %s", exc.reason)
    return error_response(ServiceUnavailable())


def install_error_handlers(
    app: FastAPI, *, unrouted: Callable[[Scope], Awaitable[AppError | None]]
) -> None:
    """`unrouted` is consulted before a request that no route takes (404, 405) is answered; the
    error it returns, if any, is answered instead (main.py: the client address's budget)."""

    async def on_http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code in (404, 405):
            instead = await unrouted(request.scope)
            if instead is not None:
                return error_response(instead)
        return await _on_http_exception(request, exc)

    app.add_exception_handler(AppError, _on_app_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(DatabaseUnavailable, _on_unavailable)
