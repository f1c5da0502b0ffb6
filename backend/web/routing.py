"""TaskRoute: the request pipeline of every route under /api/{user_id}/, as one visible room.

For each request, in the contract's order: authentication and the owner check first
(web/auth.py), then the user's rate limit (RateLimit-* headers on the answer), then the body
(size, content type, JSON syntax), and only then the parameters' validation. It holds the
request's database connection (`Conn`) around the handler when the handler takes one, and after
a successful write it tells the change hub, once, whoever the handler was (`written`: the event
streams of this process wake up).

It is served below FastAPI's request handling: a `Binder` validates the parameters with their
own validators, supplies the marker dependencies (web/dependencies.py) without solving them,
and the handler is called directly. A request the binder leaves alone (an invalid value) goes
through FastAPI's handler, which answers with its 422 as always.
"""

from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic_core import PydanticUndefined as Undefined
from starlette.types import Receive, Scope, Send

from backend.errors import MalformedJSON, RateLimited, UnsupportedMediaType, ValidationFailed
from backend.middleware.rate_limit import Quota
from backend.web.auth import authenticate
from backend.web.binding import Binder
from backend.web.dependencies import CONNECTION, PROVIDED, connection
from backend.web.responses import Replayed
from backend.web.state import app_state


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return True  # no Content-Type: read the body as JSON, as most servers do
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class TaskRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self._reads_body = self.body_field is not None
        self._uses_connection = any(d.call is connection for d in self.dependant.dependencies)
        binder = Binder.for_dependant(self.dependant, PROVIDED)
        if binder is None:
            raise TypeError(f"{path}: {endpoint.__name__} takes a parameter a Binder cannot bind")
        self.binder = binder
        self._writes = bool((self.methods or set()) - {"GET", "HEAD"})
        # A write must not be taken on the last of several values it was given: `DELETE
        # …?status=completed&status=all` would delete everything (last value wins).
        self._once_only = (
            tuple(field.alias for field in self.dependant.query_params) if self._writes else ()
        )
        self.app = self._serve

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        self._solve = super().get_route_handler()  # FastAPI's: solves, then calls
        return self._solve

    async def _check(self, request: Request) -> tuple[str, Quota | None]:
        """Authentication, the owner, the rate limit, then the body's size, type and syntax."""
        user_id = await authenticate(request)
        quota = await app_state(request).rate_limiter.hit(user_id)
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
        return user_id, quota

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        user_id, quota = await self._check(request)
        for key in self._once_only:
            if len(request.query_params.getlist(key)) > 1:
                raise ValidationFailed(f"{key}: must be given once", field=key)
        body = await request.json() if self._reads_body and await request.body() else Undefined
        if self._uses_connection:
            async with app_state(request).db.connect() as conn:
                scope[CONNECTION] = conn
                response = await self._call(request, body)
        else:
            response = await self._call(request, body)
        if self._writes and 200 <= response.status_code < 300 and type(response) is not Replayed:
            app_state(request).changes.written(user_id)
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
