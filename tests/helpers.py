"""What many test modules use: the test secret and tokens, the contract's error body, creating
and reading tasks, and waiting without racing the clock. One definition each."""

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar
from uuid import uuid4

import httpx
import jwt

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
DEADLINE = 30.0  # seconds: loose, for a busy machine; every wait ends as soon as it can

Auth = Callable[..., dict[str, str]]  # the `auth` fixture: auth("alice") -> headers
Task = dict[str, Any]
T = TypeVar("T")

TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
# What no response may show: a traceback, a file, SQL, a driver.
LEAKS = ("Traceback", 'File "', ".py", "SELECT", "sqlalchemy", "asyncpg", "sqlite3")


def sign(sub: Any, *, secret: str = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    """A valid HS256 JWT for `sub` (an hour); keyword arguments override or add claims (a value
    of None removes the claim); `secret=` and `algorithm=` change the signing."""
    now = int(time.time())
    payload: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + 3600, **claims}
    payload = {key: value for key, value in payload.items() if value is not None}
    return jwt.encode(payload, secret, algorithm=algorithm)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def etag(task: Task) -> str:
    """The ETag a task's answers carry: its version, quoted."""
    return f'"{task["version"]}"'


def new_user() -> str:
    """A user of the test's own, for servers whose database is not emptied between tests."""
    return f"user-{uuid4().hex}"


def ok(response: httpx.Response, status: int = 200) -> Any:
    """The JSON body of a successful answer with this status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def assert_error(
    response: httpx.Response,
    status: int,
    code: str,
    field: str | None = None,
    *,
    fields: list[str] | None = None,
) -> dict[str, Any]:
    """The contract's error body: `detail` (not blank) and `code` always, nothing that leaks;
    for validation errors `field` and `errors: [{field, message}]` listing `fields` (default:
    just `field`); a refused token's challenge. Returns the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    for leak in LEAKS:
        assert leak not in response.text, leak
    body: dict[str, Any] = response.json()
    assert isinstance(body["detail"], str)
    assert body["detail"].strip() != ""
    assert body["code"] == code, body
    if code in ("TOKEN_INVALID", "TOKEN_EXPIRED"):  # RFC 6750: a token was sent and refused
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith('Bearer error="invalid_token"'), challenge
    if field is None:
        shown = {"detail", "code", "current"} if status == 412 else {"detail", "code"}
        assert set(body) == shown, body  # a 412 shows the task as it is now
        return body
    assert set(body) == {"detail", "code", "field", "errors"}, body
    assert body["field"] == field
    problems = body["errors"]
    assert isinstance(problems, list)
    for problem in problems:
        assert set(problem) == {"field", "message"}
        assert isinstance(problem["message"], str)
        assert problem["message"].strip() != ""
    if fields is not None or len(problems) == 1:
        assert [problem["field"] for problem in problems] == (fields or [field])
    else:
        assert problems[0]["field"] == field, problems
    return body


def check_rate_headers(responses: list[httpx.Response], limit: int) -> None:
    """`limit` of them succeeded, each with its own RateLimit-Remaining, and the rest are 429s
    with the contract's body and headers."""
    served = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert (len(served), len(refused)) == (limit, len(responses) - limit), [
        r.status_code for r in responses
    ]
    assert sorted(int(r.headers["RateLimit-Remaining"]) for r in served) == list(range(limit))
    for response in served + refused:
        assert response.headers["RateLimit-Limit"] == str(limit)
        assert 1 <= int(response.headers["RateLimit-Reset"]) <= 60
    for response in refused:
        assert response.json() == {
            "detail": f"More than {limit} requests a minute (RATE_LIMIT): retry in "
            f"{response.headers['Retry-After']} s",
            "code": "RATE_LIMITED",
        }
        assert response.headers["Retry-After"].isdigit()
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert response.headers["RateLimit-Remaining"] == "0"
        assert response.headers["RateLimit-Reset"] == response.headers["Retry-After"]


def assert_validation(response: httpx.Response, field: str, **kwargs: Any) -> dict[str, Any]:
    return assert_error(response, 422, "VALIDATION_ERROR", field, **kwargs)


def parse_time(value: str) -> datetime:
    """A timestamp as the API writes them (UTC, `Z`), read back."""
    assert TIMESTAMP.fullmatch(value), value
    return datetime.fromisoformat(value)


async def create(
    http: httpx.AsyncClient, auth: Auth, body: dict[str, Any] | None = None, *, user: str = "alice"
) -> Task:
    """A task created by `user` (`{"title": "t"}` unless a body is given); its ETag checked."""
    response = await http.post(
        f"/api/{user}/tasks", json=body or {"title": "t"}, headers=auth(user)
    )
    task: Task = ok(response, 201)
    assert response.headers["etag"] == etag(task)
    return task


async def fetch(http: httpx.AsyncClient, auth: Auth, task_id: int, user: str = "alice") -> Task:
    task: Task = ok(await http.get(f"/api/{user}/tasks/{task_id}", headers=auth(user)))
    return task


async def list_all(http: httpx.AsyncClient, auth: Auth, user: str = "alice") -> list[Task]:
    tasks: list[Task] = ok(await http.get(f"/api/{user}/tasks", headers=auth(user)))
    return tasks


async def until(condition: Callable[[], bool], what: str, *, seconds: float = DEADLINE) -> None:
    """Wait for something that is bound to happen (a request reaching a server, a task reaching
    a clock): only how long it takes varies, so the bound is loose."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds:g} s: {what}"
        await asyncio.sleep(0.005)


async def promptly(awaitable: Awaitable[T]) -> T:
    """`awaitable`'s result; a bug that would make it wait for a clock (which only the test
    moves) or for a held answer fails the test instead of hanging it."""
    return await asyncio.wait_for(awaitable, DEADLINE)


class ManualClock:
    """A clock moved by the test alone: `now()` changes only in `advance()`, and a `sleep()`
    returns once the clock has been advanced to its end. Whatever the machine's load, the code
    under test sees exactly the time the test says has passed."""

    def __init__(self) -> None:
        self._now = 1000.0  # seconds; every step the tests take is exact in binary floating point
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self._now + seconds, wake)
        self._sleepers.append(entry)
        try:
            self._wake_the_due()
            await wake
        finally:
            self._sleepers.remove(entry)

    @property
    def sleeping(self) -> int:
        """How many sleeps are under way."""
        return sum(not wake.done() for _, wake in self._sleepers)

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._wake_the_due()

    def _wake_the_due(self) -> None:
        for end, wake in self._sleepers:
            if end <= self._now and not wake.done():
                wake.set_result(None)
