"""Interop: the service accepts the tokens of a REAL Better Auth server (interop/better-auth).

Each test talks to `node server.mjs` (better-auth 1.7, jwt + bearer plugins) over HTTP, the way a
frontend would: sign up, fetch the JWT from /api/auth/token (or the set-auth-jwt header of
/api/auth/get-session), and call the task API with it. The service runs in-process (ASGI) and
fetches Better Auth's JWKS over real HTTP.

One Better Auth server per algorithm serves the module (the main flow, on both databases, and
the cheap checks, on a SQLite file of the module's own); the tests that need a server of their
own (expired tokens, rotation, another instance, a server that stops) start it themselves.
The service's JWKS fetches are counted by the Better Auth server itself, and where the refetch
throttle matters the service's JWKS cache runs on a ManualClock (tests/helpers.py): the test
says when the refetch interval is over instead of waiting for it and polling.
Without node or the installed node_modules (`make interop`) the module is skipped, or fails
when CI is set.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any
from urllib.parse import quote
from uuid import uuid4

import httpx
import jwt
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from backend import db
from backend.middleware.jwks import MIN_REFETCH_SECONDS
from backend.middleware.jwt_auth import HS256_NOT_CONFIGURED, TokenVerifier
from backend.web.state import app_state
from tests.fixtures.app import running_app
from tests.fixtures.better_auth import BetterAuth, running_better_auth
from tests.fixtures.databases import make_settings
from tests.fixtures.processes import free_port
from tests.helpers import ManualClock, assert_error, bearer, ok, promptly, until

pytestmark = pytest.mark.live  # it starts processes: servers of its own

ALGORITHMS = ("EdDSA", "ES256", "ES512", "RS256", "PS256")
LOOSE_FETCH_SECONDS = 30.0  # a JWKS fetch in these tests, on a machine that may be busy
PASSWORD = "correct-horse-battery-staple"


@pytest.fixture(scope="module", params=ALGORITHMS)
def better_auth(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BetterAuth]:
    """One Better Auth server per algorithm for the module."""
    alg: str = request.param
    with running_better_auth(tmp_path_factory.mktemp(f"better-auth-{alg}"), alg) as server:
        yield server


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite file for the tests that need not run on both databases."""
    url = f"sqlite:///{tmp_path_factory.mktemp('interop-db') / 'tasks.db'}"
    asyncio.run(db.migrate(make_settings(url)))
    return url


# ---------------------------------------------------------------------------------------------
# Talking to Better Auth
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    user_id: str  # Better Auth's user id: the JWT's `sub`
    email: str
    session_token: str  # the set-auth-token header: an opaque, signed session token
    body_token: str  # the `token` of the sign-up body: the bare session token


@dataclass(frozen=True)
class Rotation:
    kid: str
    retired: list[str]


class BetterAuthApi:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def sign_up(self) -> Account:
        email = f"interop-{uuid4().hex}@example.com"
        response = await self.http.post(
            "/api/auth/sign-up/email",
            json={"email": email, "password": PASSWORD, "name": "Interop Tester"},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        user_id = body["user"]["id"]
        assert isinstance(user_id, str)
        assert user_id
        session_token = response.headers.get("set-auth-token")
        assert session_token, "no set-auth-token header: is the bearer plugin on?"
        assert "better-auth.session_token=" in response.headers.get("set-cookie", "")
        assert isinstance(body["token"], str)
        return Account(
            user_id=user_id,
            email=email,
            session_token=session_token,
            body_token=body["token"],
        )

    def _bearer(self, account: Account) -> dict[str, str]:
        return {"Authorization": f"Bearer {account.session_token}"}

    async def jwt(self, account: Account) -> str:
        """The JWT from GET /api/auth/token."""
        response = await self.http.get("/api/auth/token", headers=self._bearer(account))
        assert response.status_code == 200, response.text
        token = response.json()["token"]
        assert isinstance(token, str)
        return token

    async def session_jwt(self, account: Account) -> str:
        """The JWT from the set-auth-jwt header of GET /api/auth/get-session."""
        response = await self.http.get("/api/auth/get-session", headers=self._bearer(account))
        assert response.status_code == 200, response.text
        assert response.json()["user"]["id"] == account.user_id
        token: str = response.headers.get("set-auth-jwt", "")
        assert token, "get-session answered without a set-auth-jwt header"
        return token

    async def hs256(self, account: Account) -> str:
        """The "hackathon" token: HS256 keyed with BETTER_AUTH_SECRET, no iss or aud."""
        response = await self.http.get("/test/hs256-token", headers=self._bearer(account))
        assert response.status_code == 200, response.text
        token = response.json()["token"]
        assert isinstance(token, str)
        return token

    async def rotate(self) -> Rotation:
        response = await self.http.post("/test/rotate")
        assert response.status_code == 200, response.text
        body = response.json()
        return Rotation(kid=body["kid"], retired=list(body["retired"]))

    async def jwks_kids(self) -> set[str]:
        response = await self.http.get("/api/auth/jwks")
        assert response.status_code == 200, response.text
        return {key["kid"] for key in response.json()["keys"]}

    async def jwks_requests(self) -> int:
        """How many times /api/auth/jwks has been requested, by anyone, so far."""
        response = await self.http.get("/test/jwks-requests")
        assert response.status_code == 200, response.text
        count: int = response.json()["count"]
        return count


@asynccontextmanager
async def better_auth_api(server: BetterAuth) -> AsyncIterator[BetterAuthApi]:
    # No cookies are ever kept: every call authenticates with `Bearer <set-auth-token>`, and a
    # POST that carried the session cookie would need an Origin header.
    no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    async with httpx.AsyncClient(
        base_url=server.origin, timeout=10, trust_env=False, cookies=no_cookies
    ) as http:
        yield BetterAuthApi(http)


def header(token: str) -> dict[str, Any]:
    return jwt.get_unverified_header(token)


def claims(token: str) -> dict[str, Any]:
    payload: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return payload


# ---------------------------------------------------------------------------------------------
# The service under test
# ---------------------------------------------------------------------------------------------


@dataclass
class Service:
    app: FastAPI
    http: httpx.AsyncClient

    async def list_tasks(self, user_id: str, token: str) -> httpx.Response:
        return await self.http.get(f"/api/{quote(user_id, safe='')}/tasks", headers=bearer(token))

    async def create_task(self, user_id: str, token: str, title: str) -> httpx.Response:
        return await self.http.post(
            f"/api/{quote(user_id, safe='')}/tasks", json={"title": title}, headers=bearer(token)
        )


@asynccontextmanager
async def service(
    database_url: str,
    server: BetterAuth | None = None,
    *,
    clock: ManualClock | None = None,
    **overrides: Any,
) -> AsyncIterator[Service]:
    """The app configured for `server` (its origin and secret), overridable, driven in-process;
    with `clock`, its JWKS cache runs on that clock. Its verifier is replaced before any
    request, with a loose bound on a JWKS fetch: on a busy machine a first fetch from the Node
    server once took longer than the service's 3 s (a stopped server still fails at once)."""
    values: dict[str, Any] = {}
    if server is not None:
        values = {
            "better_auth_url": server.origin,
            "better_auth_secret": SecretStr(server.secret),
        }
    values.update(overrides)
    settings = make_settings(database_url, **values)
    async with running_app(settings) as (app, http):
        await app_state(app).verifier.aclose()
        app_state(app).verifier = TokenVerifier(
            settings, clock=clock, jwks_timeout=LOOSE_FETCH_SECONDS
        )
        yield Service(app=app, http=http)


# ---------------------------------------------------------------------------------------------
# 1. The main flow, for every algorithm, on both databases
# ---------------------------------------------------------------------------------------------


async def test_better_auth_jwt_is_accepted_and_isolates_users(
    better_auth: BetterAuth, database_url: str
) -> None:
    async with better_auth_api(better_auth) as api:
        alice = await api.sign_up()
        bob = await api.sign_up()
        from_token_route = await api.jwt(alice)
        from_session = await api.session_jwt(alice)
        bobs_token = await api.jwt(bob)

    for token in (from_token_route, from_session):
        assert header(token)["alg"] == better_auth.alg
        assert header(token)["kid"]
        payload = claims(token)
        assert payload["sub"] == alice.user_id
        assert payload["iss"] == better_auth.origin
        assert payload["aud"] == better_auth.origin
    assert claims(bobs_token)["sub"] == bob.user_id

    async with service(database_url, better_auth) as svc:
        title = f"interop {better_auth.alg} {uuid4().hex[:8]}"
        task = ok(await svc.create_task(alice.user_id, from_token_route, title), 201)
        assert task["title"] == title
        for token in (from_token_route, from_session):
            listed = ok(await svc.list_tasks(alice.user_id, token))
            assert [t["id"] for t in listed] == [task["id"]]

        # Bob, under his own id: alice's task does not exist for him.
        bob_task_url = f"/api/{quote(bob.user_id, safe='')}/tasks/{task['id']}"
        assert ok(await svc.list_tasks(bob.user_id, bobs_token)) == []
        for method, body in (("GET", None), ("PATCH", {"title": "stolen"}), ("DELETE", None)):
            response = await svc.http.request(
                method, bob_task_url, json=body, headers=bearer(bobs_token)
            )
            assert_error(response, 404, "TASK_NOT_FOUND")
        # Bob, under alice's id: forbidden.
        assert_error(await svc.list_tasks(alice.user_id, bobs_token), 403, "FORBIDDEN")
        alice_task_url = f"/api/{quote(alice.user_id, safe='')}/tasks/{task['id']}"
        response = await svc.http.get(alice_task_url, headers=bearer(bobs_token))
        assert_error(response, 403, "FORBIDDEN")

        # Alice's task came through untouched.
        assert ok(await svc.http.get(alice_task_url, headers=bearer(from_session))) == task


# ---------------------------------------------------------------------------------------------
# 2. The hackathon HS256 token; 6. the opaque session token; 8. iss/aud
# ---------------------------------------------------------------------------------------------


async def test_hs256_token_signed_with_the_shared_secret(
    better_auth: BetterAuth, sqlite_url: str
) -> None:
    async with better_auth_api(better_auth) as api:
        account = await api.sign_up()
        token = await api.hs256(account)
    assert header(token)["alg"] == "HS256"
    payload = claims(token)
    assert payload["sub"] == account.user_id
    assert "iss" not in payload
    assert "aud" not in payload

    async with service(sqlite_url, better_auth) as svc:
        task = ok(await svc.create_task(account.user_id, token, "hackathon"), 201)
        assert [t["id"] for t in ok(await svc.list_tasks(account.user_id, token))] == [task["id"]]

    # JWKS only (no BETTER_AUTH_SECRET): an HS256 token is refused, saying what to set, without
    # a JWKS fetch.
    async with better_auth_api(better_auth) as api:
        fetches_before = await api.jwks_requests()
        async with service(
            sqlite_url, better_auth_url=better_auth.origin, better_auth_secret=None
        ) as svc:
            assert app_state(svc.app).settings.hs256_secret is None
            response = await svc.list_tasks(account.user_id, token)
            assert assert_error(response, 401, "TOKEN_INVALID")["detail"] == HS256_NOT_CONFIGURED
        assert await api.jwks_requests() == fetches_before


async def test_opaque_session_token_is_refused_with_a_hint(
    better_auth: BetterAuth, sqlite_url: str
) -> None:
    async with better_auth_api(better_auth) as api:
        account = await api.sign_up()
    async with service(sqlite_url, better_auth) as svc:
        for opaque in (account.session_token, account.body_token):
            body = assert_error(await svc.list_tasks(account.user_id, opaque), 401, "TOKEN_INVALID")
            assert "/api/auth/token" in body["detail"]


async def test_issuer_and_audience_must_be_the_configured_origin(
    better_auth: BetterAuth, sqlite_url: str
) -> None:
    async with better_auth_api(better_auth) as api:
        account = await api.sign_up()
        token = await api.jwt(account)

    # The keys are right (the JWKS is this server's), the expected iss/aud is another origin:
    # the detail names both, as a developer needs them to fix BETTER_AUTH_URL.
    elsewhere = f"http://127.0.0.1:{free_port()}"
    async with better_auth_api(better_auth) as api:
        fetches_before = await api.jwks_requests()
        async with service(
            sqlite_url, better_auth, better_auth_url=elsewhere, jwt_jwks_url=better_auth.jwks_url
        ) as svc:
            response = await svc.list_tasks(account.user_id, token)
            assert assert_error(response, 401, "TOKEN_INVALID")["detail"] == (
                f'The token\'s iss is "{better_auth.origin}" but this service expects '
                f'"{elsewhere}" (from the origin of BETTER_AUTH_URL)'
            )
        # The signature was checked against the real key first.
        assert await api.jwks_requests() == fetches_before + 1

    # The right issuer but an audience of someone else's.
    async with service(sqlite_url, better_auth, jwt_audience="https://api.example.com") as svc:
        response = await svc.list_tasks(account.user_id, token)
        assert assert_error(response, 401, "TOKEN_INVALID")["detail"] == (
            f'The token\'s aud is "{better_auth.origin}" but this service expects '
            '"https://api.example.com" (from JWT_AUDIENCE)'
        )

    # Control: the same token and JWKS URL with the right origin is accepted.
    async with service(sqlite_url, better_auth, jwt_jwks_url=better_auth.jwks_url) as svc:
        assert ok(await svc.list_tasks(account.user_id, token)) == []


# ---------------------------------------------------------------------------------------------
# 3. Key rotation
# ---------------------------------------------------------------------------------------------


async def test_rotated_key_is_picked_up_and_the_old_one_still_works(
    tmp_path: Path, sqlite_url: str
) -> None:
    clock = ManualClock()
    with running_better_auth(tmp_path, "RS256") as server:
        async with (
            better_auth_api(server) as api,
            service(sqlite_url, server, clock=clock) as svc,
        ):
            account = await api.sign_up()
            t1 = await api.jwt(account)
            assert ok(await svc.list_tasks(account.user_id, t1)) == []  # caches the JWKS

            rotation = await api.rotate()
            assert rotation.retired == [header(t1)["kid"]]
            assert await api.jwks_kids() == {header(t1)["kid"], rotation.kid}
            t2 = await api.jwt(account)
            assert header(t2)["kid"] == rotation.kid
            assert header(t2)["alg"] == "RS256"

            # The unknown kid makes the verifier refetch, as soon as the throttle allows: the
            # request waits for that (on the service's clock), then succeeds.
            fetches_before = await api.jwks_requests()
            rotated = asyncio.create_task(svc.list_tasks(account.user_id, t2))
            await until(lambda: clock.sleeping == 1, "the request waits for the next fetch")
            clock.advance(MIN_REFETCH_SECONDS)
            ok(await promptly(rotated))
            assert await api.jwks_requests() == fetches_before + 1
            assert ok(await svc.create_task(account.user_id, t2, "after rotation"), 201)

            # The retired key stays in the JWKS for the grace period: T1 still works.
            assert [t["title"] for t in ok(await svc.list_tasks(account.user_id, t1))] == [
                "after rotation"
            ]
            assert await api.jwks_requests() == fetches_before + 1


# ---------------------------------------------------------------------------------------------
# 4. Another Better Auth instance
# ---------------------------------------------------------------------------------------------


async def test_token_from_another_better_auth_instance_is_refused(
    tmp_path: Path, sqlite_url: str
) -> None:
    with running_better_auth(tmp_path, "EdDSA") as first:
        # Same origin in its config (so iss and aud are identical), same secret, other keys.
        with running_better_auth(
            tmp_path, "EdDSA", secret=first.secret, BETTER_AUTH_URL=first.origin
        ) as impostor:
            async with better_auth_api(impostor) as api:
                account = await api.sign_up()
                impostor_token = await api.jwt(account)
        assert claims(impostor_token)["iss"] == first.origin
        assert claims(impostor_token)["aud"] == first.origin
        # A third instance with its own origin.
        with running_better_auth(tmp_path, "EdDSA") as other:
            async with better_auth_api(other) as api:
                other_account = await api.sign_up()
                other_token = await api.jwt(other_account)
        assert claims(other_token)["iss"] == other.origin

        async with better_auth_api(first) as api:
            genuine_account = await api.sign_up()
            genuine = await api.jwt(genuine_account)

        clock = ManualClock()
        async with better_auth_api(first) as api, service(sqlite_url, first, clock=clock) as svc:
            fetches_before = await api.jwks_requests()
            body = assert_error(
                await promptly(svc.list_tasks(account.user_id, impostor_token)),
                401,
                "TOKEN_INVALID",
            )
            assert body["detail"] == (
                f"The token's signing key (its kid) is not in the JWKS at {first.jwks_url}"
            )
            assert await api.jwks_requests() == fetches_before + 1  # it did look there
            # Another unknown kid right after: it waits for the next allowed fetch, looks again.
            other_request = asyncio.create_task(svc.list_tasks(other_account.user_id, other_token))
            await until(lambda: clock.sleeping == 1, "the request waits for the next fetch")
            clock.advance(MIN_REFETCH_SECONDS)
            assert_error(await promptly(other_request), 401, "TOKEN_INVALID")
            assert await api.jwks_requests() == fetches_before + 2
            # Control: the first server's own token is accepted by the same app, from the cache.
            assert ok(await promptly(svc.list_tasks(genuine_account.user_id, genuine))) == []
            assert await api.jwks_requests() == fetches_before + 2


# ---------------------------------------------------------------------------------------------
# 5. Expiry
# ---------------------------------------------------------------------------------------------


async def test_expired_better_auth_token(tmp_path: Path, sqlite_url: str) -> None:
    # A lifetime of zero: the token is expired the moment it is issued (exp == iat, in whole
    # seconds, never after now), so no test waits for it to expire, or races its expiry.
    with running_better_auth(tmp_path, "ES256", JWT_EXPIRES="0") as server:
        async with better_auth_api(server) as api:
            account = await api.sign_up()
            token = await api.jwt(account)
        payload = claims(token)
        assert payload["exp"] == payload["iat"]
        assert payload["exp"] <= time.time()

        # Otherwise valid: accepted within a leeway of 60 s (it expired a moment ago)...
        async with service(sqlite_url, server, jwt_leeway_seconds=60) as svc:
            assert ok(await svc.list_tasks(account.user_id, token)) == []
        # ...and expired without one.
        async with service(sqlite_url, server, jwt_leeway_seconds=0) as svc:
            response = await svc.list_tasks(account.user_id, token)
            body = assert_error(response, 401, "TOKEN_EXPIRED")
            assert body["detail"] == "The bearer token has expired"
            assert 'error="invalid_token"' in response.headers["www-authenticate"]


# ---------------------------------------------------------------------------------------------
# 7. Better Auth goes away
# ---------------------------------------------------------------------------------------------


async def test_better_auth_down_cached_keys_work_unknown_keys_get_503(
    tmp_path: Path, sqlite_url: str
) -> None:
    clock = ManualClock()
    with running_better_auth(tmp_path, "ES512") as server:
        async with (
            better_auth_api(server) as api,
            service(sqlite_url, server, clock=clock) as svc,
        ):
            account = await api.sign_up()
            t1 = await api.jwt(account)
            assert ok(await svc.list_tasks(account.user_id, t1)) == []  # caches the JWKS
            await api.rotate()
            t2 = await api.jwt(account)
            assert header(t2)["kid"] != header(t1)["kid"]

            server.stop()
            assert server.process.returncode == 0, server.log_text()

            assert ok(await promptly(svc.list_tasks(account.user_id, t1))) == []  # cached

            # The new kid, right after the last fetch: it waits for the next allowed one, which
            # finds Better Auth gone: 503, never a 500.
            pending = asyncio.create_task(svc.list_tasks(account.user_id, t2))
            await until(lambda: clock.sleeping == 1, "the request waits for the next fetch")
            clock.advance(MIN_REFETCH_SECONDS)
            response = await promptly(pending)
            body = assert_error(response, 503, "SERVICE_UNAVAILABLE")
            assert (
                body["detail"]
                == "The signing keys cannot be fetched from the auth server right now"
            )
            assert response.headers["retry-after"] == "3"  # when the next fetch may be tried

            # Known to be down: the same request is answered at once (nobody waits for the
            # clock), and the cached key still serves.
            for _ in range(3):
                response = await promptly(svc.list_tasks(account.user_id, t2))
                assert_error(response, 503, "SERVICE_UNAVAILABLE")
            assert clock.sleeping == 0
            assert ok(await promptly(svc.list_tasks(account.user_id, t1))) == []
            # After the interval, one request tries again, and still gets a 503.
            clock.advance(MIN_REFETCH_SECONDS)
            response = await promptly(svc.list_tasks(account.user_id, t2))
            assert_error(response, 503, "SERVICE_UNAVAILABLE")
