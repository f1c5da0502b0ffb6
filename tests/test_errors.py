"""Every failure is the contract's JSON body `{"detail", "code"}` (+ `field`, `errors`), with the
right status and headers, and nothing of the server's insides leaks out."""

import ast
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.errors import error_codes
from backend.main import create_app
from backend.services import listing
from backend.web.cors import LOG_EVERY_SECONDS, ORIGINS_REMEMBERED, Cors
from backend.web.state import app_state
from tests.fixtures.app import app_client, running_app
from tests.fixtures.databases import make_settings
from tests.fixtures.processes import free_port
from tests.helpers import LEAKS, Auth, assert_error, create

LIST = "/api/alice/tasks"
MiB = 1024 * 1024


async def _create(client: httpx.AsyncClient, auth: Auth, title: str = "original") -> str:
    return f"{LIST}/{(await create(client, auth, {'title': title}))['id']}"


# --- 404 and 405 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/", "/nope", "/api", "/api/", "/api/alice", "/api/alice/tasks/1/nope", "/api/alice/todos"],
)
async def test_unknown_route_is_404(client: httpx.AsyncClient, auth: Auth, path: str) -> None:
    for method in ("GET", "POST", "DELETE"):
        response = await client.request(method, path, headers=auth("alice"))
        assert_error(response, 404, "NOT_FOUND")
    assert_error(await client.get(path), 404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", LIST, {"GET", "POST", "DELETE"}),
        ("PATCH", LIST, {"GET", "POST", "DELETE"}),
        ("POST", f"{LIST}/1", {"GET", "PUT", "PATCH", "DELETE"}),
        ("GET", f"{LIST}/1/complete", {"PATCH"}),
        ("POST", f"{LIST}/1/complete", {"PATCH"}),
    ],
)
async def test_wrong_method_is_405_with_allow(
    client: httpx.AsyncClient, auth: Auth, method: str, path: str, allowed: set[str]
) -> None:
    response = await client.request(method, path, headers=auth("alice"))
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    allow = {m.strip() for m in response.headers["allow"].split(",")}
    # HEAD and OPTIONS may be listed on top of the routes' methods.
    assert allow - {"HEAD", "OPTIONS"} == allowed


# --- 400 malformed JSON ------------------------------------------------------------------------

MALFORMED = [
    pytest.param(b'{"title": "a"', id="truncated"),
    pytest.param(b'{"title": "\xff\xfe"}', id="invalid-utf8"),
    pytest.param(b'{"title": "a"} trailing', id="trailing-garbage"),
    pytest.param(b"{'title': 'a'}", id="single-quotes"),
    pytest.param(b'{"title": "a",}', id="trailing-comma"),
]


@pytest.mark.parametrize("body", MALFORMED)
async def test_malformed_json_is_400(client: httpx.AsyncClient, auth: Auth, body: bytes) -> None:
    task = await _create(client, auth)
    headers = auth("alice") | {"Content-Type": "application/json"}
    targets = (("POST", LIST), ("PUT", task), ("PATCH", task), ("PATCH", f"{task}/complete"))
    for method, path in targets:
        response = await client.request(method, path, content=body, headers=headers)
        assert_error(response, 400, "MALFORMED_JSON")
    response = await client.get(task, headers=auth("alice"))
    assert response.json()["title"] == "original"
    assert response.json()["completed"] is False


@pytest.mark.parametrize("depth", [5_000, 100_000])
async def test_deeply_nested_json_is_never_500(
    client: httpx.AsyncClient, auth: Auth, depth: int
) -> None:
    headers = auth("alice") | {"Content-Type": "application/json"}
    unclosed = b"[" * depth
    response = await client.post(LIST, content=unclosed, headers=headers)
    assert_error(response, 400, "MALFORMED_JSON")
    # Well-formed but absurdly deep: refusing it as malformed or as invalid are both fine.
    nested = b'{"title": ' + b"[" * depth + b"]" * depth + b"}"
    response = await client.post(LIST, content=nested, headers=headers)
    assert response.status_code in (400, 422), response.text
    if response.status_code == 400:
        assert_error(response, 400, "MALFORMED_JSON")
    else:
        assert_error(response, 422, "VALIDATION_ERROR", field="title")


# --- 415 and the content types that are accepted -----------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/xml",
    ],
)
async def test_non_json_body_is_415(
    client: httpx.AsyncClient, auth: Auth, content_type: str
) -> None:
    task = await _create(client, auth)
    headers = auth("alice") | {"Content-Type": content_type}
    body = b'{"title": "changed", "description": null, "completed": true}'
    for method, path in (("POST", LIST), ("PUT", task), ("PATCH", task)):
        response = await client.request(method, path, content=body, headers=headers)
        assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    response = await client.get(LIST, headers=auth("alice"))
    assert [(t["title"], t["completed"]) for t in response.json()] == [("original", False)]


async def test_json_body_without_content_type_is_accepted(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    response = await client.post(LIST, content=b'{"title": "no type"}', headers=auth("alice"))
    assert "content-type" not in response.request.headers
    assert response.status_code == 201, response.text
    assert response.json()["title"] == "no type"
    task = f"{LIST}/{response.json()['id']}"
    response = await client.patch(task, content=b'{"completed": true}', headers=auth("alice"))
    assert response.status_code == 200, response.text
    assert response.json()["completed"] is True


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "Application/JSON",
        "application/vnd.api+json",
        "application/merge-patch+json",
    ],
)
async def test_json_content_types_are_accepted(
    client: httpx.AsyncClient, auth: Auth, content_type: str
) -> None:
    headers = auth("alice") | {"Content-Type": content_type}
    response = await client.post(LIST, content=b'{"title": "created"}', headers=headers)
    assert response.status_code == 201, response.text
    task = f"{LIST}/{response.json()['id']}"
    response = await client.patch(task, content=b'{"title": "patched"}', headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["title"] == "patched"
    body = b'{"title": "replaced", "description": "d", "completed": true}'
    response = await client.put(task, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert (response.json()["title"], response.json()["completed"]) == ("replaced", True)


async def test_json_content_type_without_body_is_harmless(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    task = await _create(client, auth)
    headers = auth("alice") | {"Content-Type": "application/json"}
    response = await client.get(LIST, headers=headers)
    assert response.status_code == 200, response.text
    assert [t["title"] for t in response.json()] == ["original"]
    response = await client.get(task, headers=headers)
    assert response.status_code == 200, response.text
    response = await client.patch(task + "/complete", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["completed"] is True
    response = await client.delete(task, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["title"] == "original"


# --- 413 -----------------------------------------------------------------------------------------


def _json_of_size(size: int) -> bytes:
    """A valid JSON task body of exactly `size` bytes (its description is far too long)."""
    head, tail = b'{"title": "big", "description": "', b'"}'
    body = head + b"d" * (size - len(head) - len(tail)) + tail
    assert len(body) == size
    return body


async def _chunked(body: bytes, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), chunk):
        yield body[start : start + chunk]


async def test_body_over_1_mib_with_content_length_is_413(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    task = await _create(client, auth)
    headers = auth("alice") | {"Content-Type": "application/json"}
    for size in (2 * MiB, MiB + 1):
        for method, path in (("POST", LIST), ("PUT", task), ("PATCH", task)):
            response = await client.request(
                method, path, content=_json_of_size(size), headers=headers
            )
            assert response.request.headers["content-length"] == str(size)
            assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    # The server keeps serving, on the same client, and nothing changed.
    response = await client.get(LIST, headers=auth("alice"))
    assert response.status_code == 200, response.text
    assert [t["title"] for t in response.json()] == ["original"]


async def test_chunked_body_over_1_mib_is_413(client: httpx.AsyncClient, auth: Auth) -> None:
    headers = auth("alice") | {"Content-Type": "application/json"}
    response = await client.post(LIST, content=_chunked(_json_of_size(2 * MiB)), headers=headers)
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    response = await client.post(LIST, json={"title": "after"}, headers=auth("alice"))
    assert response.status_code == 201, response.text
    response = await client.get(LIST, headers=auth("alice"))
    assert [t["title"] for t in response.json()] == ["after"]


async def test_body_of_exactly_1_mib_is_parsed(client: httpx.AsyncClient, auth: Auth) -> None:
    headers = auth("alice") | {"Content-Type": "application/json"}
    for content in (_json_of_size(MiB), _chunked(_json_of_size(MiB))):
        response = await client.post(LIST, content=content, headers=headers)
        assert_error(response, 422, "VALIDATION_ERROR", field="description")


# --- 500 -----------------------------------------------------------------------------------------

SECRET_MESSAGE = "secret /path/to/file.py SELECT * FROM task WHERE user_id = 'alice'"


def _assert_hidden(response: httpx.Response) -> None:
    body = assert_error(response, 500, "INTERNAL_ERROR")
    for fragment in ("secret", "/path/to/file", "SELECT", "Traceback", "RuntimeError"):
        assert fragment not in response.text
    assert set(body) == {"detail", "code"}


def _assert_logged(caplog: pytest.LogCaptureFixture) -> None:
    records = [r for r in caplog.records if r.name == "backend.errors"]
    assert [r.levelno for r in records] == [logging.ERROR]
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], RuntimeError)
    assert str(records[0].exc_info[1]) == SECRET_MESSAGE


async def test_unexpected_error_is_500_without_details(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_settings(f"sqlite:///{tmp_path / 'unused.db'}"))

    async def boom() -> None:
        raise RuntimeError(SECRET_MESSAGE)

    app.add_api_route("/boom", boom, methods=["GET", "POST"])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    caplog.set_level(logging.ERROR, logger="backend.errors")
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            _assert_hidden(await http.get("/boom"))
            _assert_logged(caplog)
            caplog.clear()
            _assert_hidden(await http.post("/boom", json={"x": 1}))
            _assert_logged(caplog)
            response = await http.get("/nope")  # still serving
            assert_error(response, 404, "NOT_FOUND")
    finally:
        await app_state(app).aclose()


async def test_unexpected_error_in_a_task_route_is_500_without_details(
    client: httpx.AsyncClient,
    auth: Auth,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(SECRET_MESSAGE)

    monkeypatch.setattr(listing, "list_tasks", boom)
    caplog.set_level(logging.ERROR, logger="backend.errors")
    _assert_hidden(await client.get(LIST, headers=auth("alice")))
    _assert_logged(caplog)


# --- 503 -----------------------------------------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections (into the backlog) and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


async def _assert_unavailable(url: str, auth: Auth) -> None:
    settings = make_settings(url, db_connect_timeout=1, db_pool_timeout=1)
    async with app_client(settings) as http:
        for method, path, body in (
            ("GET", LIST, None),
            ("POST", LIST, {"title": "t"}),
            ("GET", f"{LIST}/1", None),
        ):
            started = time.monotonic()
            response = await http.request(method, path, json=body, headers=auth("alice"))
            assert time.monotonic() - started < 15  # bounded: 1 s timeouts, a busy machine
            assert_error(response, 503, "SERVICE_UNAVAILABLE")
            assert 1 <= int(response.headers["retry-after"]) <= 5


async def test_unreachable_database_is_503(auth: Auth) -> None:
    await _assert_unavailable(f"postgresql://u:p@127.0.0.1:{free_port()}/tasks", auth)


async def test_database_that_never_answers_is_503(auth: Auth, silent_server: int) -> None:
    await _assert_unavailable(f"postgresql://u:p@127.0.0.1:{silent_server}/tasks", auth)


# --- 422 -----------------------------------------------------------------------------------------


async def test_validation_error_lists_every_problem(client: httpx.AsyncClient, auth: Auth) -> None:
    response = await client.post(
        LIST, json={"title": "", "description": 5, "completed": "yes"}, headers=auth("alice")
    )
    body = assert_error(response, 422, "VALIDATION_ERROR", field="title")
    assert [e["field"] for e in body["errors"]] == ["title", "description", "completed"]
    for problem in body["errors"]:
        assert set(problem) == {"field", "message"}
        assert isinstance(problem["message"], str)
        assert problem["message"] != ""


async def test_validation_error_for_every_missing_required_field(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    task = await _create(client, auth)
    response = await client.put(task, json={}, headers=auth("alice"))
    body = assert_error(response, 422, "VALIDATION_ERROR", field="title")
    assert [e["field"] for e in body["errors"]] == ["title"]  # PUT requires only the title


async def test_validation_error_in_path_and_body(client: httpx.AsyncClient, auth: Auth) -> None:
    response = await client.put(f"{LIST}/abc", json={"title": 1}, headers=auth("alice"))
    body = assert_error(response, 422, "VALIDATION_ERROR", field="task_id")
    fields = [e["field"] for e in body["errors"]]
    assert fields[0] == "task_id"
    assert sorted(fields) == ["task_id", "title"]


@pytest.mark.parametrize(("path", "field"), [(f"{LIST}/abc", "task_id"), (f"{LIST}/0", "task_id")])
async def test_bad_path_parameter_is_422(
    client: httpx.AsyncClient, auth: Auth, path: str, field: str
) -> None:
    body = assert_error(
        await client.get(path, headers=auth("alice")), 422, "VALIDATION_ERROR", field=field
    )
    assert [e["field"] for e in body["errors"]] == [field]


async def test_no_error_body_carries_a_traceback(client: httpx.AsyncClient, auth: Auth) -> None:
    huge = "9" * 400
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", LIST, {}),
        ("GET", LIST, {"headers": {"Authorization": "Bearer a.b.c"}}),
        ("GET", f"{LIST}/{huge}", {"headers": auth("alice")}),
        ("GET", f"{LIST}/-1", {"headers": auth("alice")}),
        ("GET", f"{LIST}/1e3", {"headers": auth("alice")}),
        ("POST", LIST, {"headers": auth("alice"), "content": b"\x00\x01"}),
        ("POST", LIST, {"headers": auth("alice"), "json": {"title": "\x00"}}),
        ("POST", LIST, {"headers": auth("alice"), "content": b'{"title": "\\ud800"}'}),
        ("POST", LIST, {"headers": auth("alice"), "json": [{"title": "a"}]}),
        ("POST", LIST, {"headers": auth("alice"), "content": b'{"title": NaN}'}),
        ("PATCH", f"{LIST}/{2**63}/complete", {"headers": auth("alice"), "json": {}}),
        ("DELETE", f"{LIST}/{2**64}", {"headers": auth("alice")}),
        ("GET", "/api/alice/tasks?limit=abc", {"headers": auth("alice")}),
    ]
    for method, path, kwargs in requests:
        response = await client.request(method, path, **kwargs)
        assert 400 <= response.status_code < 500, (method, path, response.text)
        assert response.headers["content-type"] == "application/json"
        for leak in LEAKS:
            assert leak not in response.text, (method, path, response.text)
        assert {"detail", "code"} <= set(response.json())


# --- HTTPExceptions that are not ours ------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "detail", "headers", "code", "expected_detail"),
    [
        (400, "Bad thing", None, "BAD_REQUEST", "Bad thing"),
        # A status no member of the family is made for still gets a code of the family.
        (409, None, {"X-Reason": "conflict"}, "BAD_REQUEST", "Conflict"),
        (418, None, None, "BAD_REQUEST", "I'm a Teapot"),
        (429, None, {"Retry-After": "7"}, "RATE_LIMITED", "Too Many Requests"),
        (401, "Nope", {"WWW-Authenticate": "Basic"}, "AUTH_REQUIRED", "Nope"),
        (413, None, None, "PAYLOAD_TOO_LARGE", "Request Entity Too Large"),
        (503, "db: secret detail", {"Retry-After": "3"}, "INTERNAL_ERROR", "Internal server error"),
    ],
)
async def test_http_exception_of_the_framework_keeps_status_headers_and_gets_its_code(
    tmp_path: Path,
    status: int,
    detail: str | None,
    headers: dict[str, str] | None,
    code: str,
    expected_detail: str,
) -> None:
    app = create_app(make_settings(f"sqlite:///{tmp_path / 'unused.db'}"))

    async def refuse() -> None:
        raise StarletteHTTPException(status, detail=detail, headers=headers)

    app.add_api_route("/refuse", refuse)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            response = await http.get("/refuse")
    finally:
        await app_state(app).aclose()
    body = assert_error(response, status, code)
    assert body["detail"] == expected_detail
    for name, value in (headers or {}).items():
        assert response.headers[name] == value


# --- CORS on every error -------------------------------------------------------------------------

ORIGIN = "https://app.example"


async def test_every_error_carries_the_cors_headers_500_included(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, auth: Auth
) -> None:
    app = create_app(make_settings(f"sqlite:///{tmp_path / 'cors.db'}", cors_origins=ORIGIN))

    async def boom() -> None:
        raise RuntimeError(SECRET_MESSAGE)

    app.add_api_route("/boom", boom)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    caplog.set_level(logging.ERROR)
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("GET", "/boom", {}, 500),
        ("GET", "/nope", {}, 404),
        ("PUT", LIST, {}, 405),
        ("GET", LIST, {}, 401),
        ("POST", LIST, {"content": b"x" * (MiB + 1), "headers": auth("alice")}, 413),
        ("GET", f"{LIST}/abc", {"headers": auth("alice")}, 422),
    ]
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            for method, path, kwargs, status in cases:
                headers = {"Origin": ORIGIN, **kwargs.pop("headers", {})}
                response = await http.request(method, path, headers=headers, **kwargs)
                assert response.status_code == status, (path, response.text)
                assert response.headers["content-type"] == "application/json"
                assert response.headers["access-control-allow-origin"] == ORIGIN, path
                assert response.headers["access-control-allow-credentials"] == "true", path
    finally:
        await app_state(app).aclose()
    # Logged once, by us, not again by the server.
    assert [r.name for r in caplog.records if r.exc_info] == ["backend.errors"]


async def test_refused_preflight_is_a_json_error(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'cors.db'}", cors_origins=ORIGIN)
    async with app_client(settings) as http:
        response = await http.options(
            LIST,
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        body = assert_error(response, 400, "CORS_REFUSED")
        assert body["detail"] == (
            'The origin "https://evil.example" may not call this API: the allowed origins are '
            f"{ORIGIN}. Add it to CORS_ORIGINS (scheme://host[:port], as the browser sends it), "
            "or match it with CORS_ORIGIN_REGEX"
        )
        assert "access-control-allow-origin" not in response.headers
        response = await http.options(
            LIST,
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "x-custom",
            },
        )
        body = assert_error(response, 400, "CORS_REFUSED")
        assert body["detail"] == (
            f'The origin "{ORIGIN}" is allowed, but this API takes only the methods GET, POST, '
            "PUT, PATCH, DELETE and the request headers Authorization, Content-Type, If-Match, "
            'If-None-Match, Idempotency-Key, Last-Event-ID: asked for "GET" with "x-custom"'
        )


PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization",
}


def _cors(app: Any) -> Cors:
    layer = app.middleware_stack
    while not isinstance(layer, Cors):
        layer = layer.app
    return layer


async def test_without_cors_origins_a_preflight_is_refused_naming_the_setting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # It was a bare 405 "Method not allowed", and nothing anywhere mentioned CORS_ORIGINS.
    settings = make_settings(f"sqlite:///{tmp_path / 'cors.db'}")
    async with app_client(settings) as http:
        with caplog.at_level(logging.WARNING, logger="backend.cors"):
            for _ in range(3):
                response = await http.options(
                    LIST, headers={"Origin": "http://localhost:3000", **PREFLIGHT}
                )
                body = assert_error(response, 400, "CORS_REFUSED")
                assert '"http://localhost:3000"' in body["detail"]
                assert "none (CORS_ORIGINS is not set)" in body["detail"]
    # Logged once a minute per origin, naming it and the setting.
    (line,) = [r.getMessage() for r in caplog.records if r.name == "backend.cors"]
    assert line == (
        'CORS: refused a preflight from the origin "http://localhost:3000", which is not allowed '
        "(allowed: none (CORS_ORIGINS is not set)); add it to CORS_ORIGINS or match it with "
        "CORS_ORIGIN_REGEX"
    )


async def test_refused_origins_are_logged_once_a_minute_and_remembered_within_a_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'cors.db'}", cors_origins=ORIGIN)
    async with running_app(settings) as (app, http):
        await http.get("/health")
        cors = _cors(app)
        now = [1000.0]
        cors.clock = lambda: now[0]
        with caplog.at_level(logging.WARNING, logger="backend.cors"):
            # A request (no preflight) from a foreign origin is logged too; the browser hides
            # its answer. The API's own origin (its /docs page) is not foreign.
            await http.get("/health", headers={"Origin": "https://evil.example"})
            await http.get("/health", headers={"Origin": "http://testserver"})
            await http.options(LIST, headers={"Origin": "https://evil.example", **PREFLIGHT})
            now[0] += LOG_EVERY_SECONDS
            await http.options(LIST, headers={"Origin": "https://evil.example", **PREFLIGHT})
            for n in range(ORIGINS_REMEMBERED + 50):
                await http.get("/health", headers={"Origin": f"https://o{n}.example"})
    lines = [r.getMessage() for r in caplog.records if r.name == "backend.cors"]
    assert [line.split(" from ")[0] for line in lines[:2]] == [
        "CORS: refused a request",
        "CORS: refused a preflight",
    ]
    assert len(lines) == 2 + ORIGINS_REMEMBERED + 50
    assert len(cors._logged) == ORIGINS_REMEMBERED


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://my-app-git-feature-x.vercel.app", True),
        ("https://my-app-pr-12.vercel.app", True),
        ("https://my-app-pr-12.vercel.app.evil.example", False),  # the whole origin must match
        ("http://my-app-pr-12.vercel.app", False),
        (ORIGIN, True),
    ],
)
async def test_cors_origin_regex_allows_preview_deployments(
    database_url: str, auth: Auth, origin: str, allowed: bool
) -> None:
    settings = make_settings(
        database_url,
        cors_origins=ORIGIN,
        cors_origin_regex=r"https://my-app-[a-z0-9-]+\.vercel\.app",
    )
    async with app_client(settings) as http:
        preflight = await http.options(LIST, headers={"Origin": origin, **PREFLIGHT})
        listed = await http.get(LIST, headers={"Origin": origin, **auth("alice")})
    assert listed.status_code == 200
    if allowed:
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        assert listed.headers["access-control-allow-origin"] == origin
        assert "X-Total-Count" in listed.headers["access-control-expose-headers"]
    else:
        assert_error(preflight, 400, "CORS_REFUSED")
        assert "access-control-allow-origin" not in listed.headers


# --- trailing slashes ----------------------------------------------------------------------------


async def test_trailing_slash_is_served_without_a_redirect(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    # Starlette would redirect, with a Location built from the Host header.
    headers = {**auth("alice"), "Host": "evil.example"}
    created = await client.post(f"{LIST}/", json={"title": "slash"}, headers=headers)
    assert created.status_code == 201, created.text
    task = created.json()
    assert created.headers["location"] == f"{LIST}/{task['id']}"
    for method, path in (
        ("GET", f"{LIST}/"),
        ("GET", f"{LIST}/{task['id']}/"),
        ("PATCH", f"{LIST}/{task['id']}/complete/"),
        ("DELETE", f"{LIST}/{task['id']}/"),
    ):
        response = await client.request(method, path, headers=headers)
        assert response.status_code == 200, (method, path, response.text)
        assert "location" not in response.headers
    response = await client.get(f"{LIST}/", headers=headers)
    assert response.json() == []
    assert_error(await client.get("/api/alice/", headers=headers), 404, "NOT_FOUND")
    assert_error(await client.get(f"{LIST}//", headers=headers), 404, "NOT_FOUND")


# --- one family of codes -----------------------------------------------------------------------

BACKEND = Path(__file__).resolve().parent.parent / "backend"
CODE_ROW = re.compile(r"^\| \d{3} \| `([A-Z_]+)` \|", re.MULTILINE)


def test_every_code_is_the_family_s_and_said_everywhere() -> None:
    # The server once sent HEADERS_TOO_LARGE and REQUEST_TIMEOUT, which the document's enum and
    # the TypeScript client's ErrorCode lacked. Codes come from the family's classes only: no
    # module writes a "code" of its own, and the document, the reference and the TypeScript
    # types list exactly the family.
    for module in BACKEND.rglob("*.py"):
        if module.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Dict):
                keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
                assert "code" not in keys, f"{module}: an error body built by hand"
    codes = error_codes()
    assert len(codes) == len(set(codes))
    document = json.loads((BACKEND.parent / "openapi.json").read_text())
    assert document["components"]["schemas"]["ErrorBody"]["properties"]["code"]["enum"] == codes
    reference = (BACKEND.parent / "docs" / "api.md").read_text()
    assert sorted(CODE_ROW.findall(reference)) == sorted(codes)
    schema = (BACKEND.parent / "clients" / "typescript" / "src" / "schema.ts").read_text()
    union = re.search(r'code: ("[A-Z_]+"(?: \| "[A-Z_]+")*);', schema)
    assert union is not None
    assert sorted(re.findall(r'"([A-Z_]+)"', union[1])) == sorted(codes)
