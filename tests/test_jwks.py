"""Asymmetric tokens verified with Better Auth's JWKS: every accepted algorithm, the iss/aud
checks, algorithm confusion, key selection by `kid`, the shape of the JWKS document, the refetch
throttle, the cache, what happens while the JWKS cannot be fetched, and the details of refusals.

Keys are generated here and served by a real HTTP server on the loopback interface (no mocks);
the server can be told to answer 500, invalid JSON, to hold its answer, to trickle it, or to go
away altogether. The cache's time is a ManualClock (tests/helpers.py) that only the test moves,
so the throttle, cache and timeout tests assert what the cache decided — how many requests
reached the server, who waited, which keys were used, 401 or 503 — and never how far apart
things happened. Most
tests call TokenVerifier.verify directly (no database, so they run once); the end-to-end ones
go through the ASGI app and run on each database.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import string
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, get_default_algorithms
from jwt.warnings import InsecureKeyLengthWarning

from backend.config import Settings
from backend.errors import AppError, ServiceUnavailable, TokenExpired, TokenInvalid
from backend.middleware.jwks import FETCH_TIMEOUT_SECONDS, MIN_REFETCH_SECONDS, JwksCache
from backend.middleware.jwt_auth import HS256_NOT_CONFIGURED, TokenVerifier
from backend.web.state import app_state
from tests.fixtures.app import running_app
from tests.fixtures.databases import make_settings
from tests.helpers import DEADLINE, SECRET, ManualClock, bearer, promptly, until

PrivateKey = (
    ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
)
Signer = Callable[[bytes], bytes]
MakeVerifier = Callable[..., TokenVerifier]

JWKS_PATH = "/api/auth/jwks"  # where Better Auth serves it, under the origin of BETTER_AUTH_URL
CUSTOM_PATH = "/custom/keys.json"  # for JWT_JWKS_URL
UNAVAILABLE_DETAIL = "The signing keys cannot be fetched from the auth server right now"
CACHE_SECONDS = 300.0  # JWKS_CACHE_SECONDS's default, which make_settings keeps
ERRORS: dict[str, tuple[type[AppError], int]] = {
    "TOKEN_INVALID": (TokenInvalid, 401),
    "TOKEN_EXPIRED": (TokenExpired, 401),
    "SERVICE_UNAVAILABLE": (ServiceUnavailable, 503),
}


# --- keys and tokens ---------------------------------------------------------------------------


_GENERATORS: dict[str, Callable[[], PrivateKey]] = {
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "ed448": ed448.Ed448PrivateKey.generate,
    "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "p521": lambda: ec.generate_private_key(ec.SECP521R1()),
    # Too small on purpose: the service must refuse it.
    "rsa1024": lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),  # noqa: S505
    "rsa2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}
DEFAULT_ALG = {
    "ed25519": "EdDSA",
    "ed448": "EdDSA",
    "p256": "ES256",
    "p384": "ES384",
    "p521": "ES512",
    "rsa1024": "RS256",
    "rsa2048": "RS256",
}


@cache
def private_key(kind: str, index: int = 0) -> PrivateKey:
    return _GENERATORS[kind]()


def new_kid() -> str:
    """Better Auth's kids: 32 alphanumeric characters."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


@dataclass(frozen=True)
class Key:
    private: PrivateKey
    alg: str
    kid: str

    def jwk(self, **fields: Any) -> dict[str, Any]:
        """The public JWK as Better Auth serves it (kty/crv/x/y or n/e, kid, alg; no `use`);
        `fields` add or override members, None removes one."""
        public = self.private.public_key()
        raw: dict[str, Any]
        if isinstance(public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            raw = OKPAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            raw = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            raw = RSAAlgorithm.to_jwk(public, as_dict=True)
        members = {k: v for k, v in raw.items() if k not in ("use", "key_ops")}
        members.update({"kid": self.kid, "alg": self.alg})
        members.update(fields)
        return {k: v for k, v in members.items() if v is not None}

    def sign(self, payload: dict[str, Any], *, alg: str | None = None, kid: str = "") -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)  # the RSA-1024 key
            return jwt.encode(
                payload, self.private, algorithm=alg or self.alg, headers={"kid": kid or self.kid}
            )

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def new_key(kind: str, index: int = 0, *, alg: str | None = None, kid: str | None = None) -> Key:
    return Key(private_key(kind, index), alg or DEFAULT_ALG[kind], kid or new_kid())


def claims(origin: str | None, sub: Any = "alice", **overrides: Any) -> dict[str, Any]:
    """Claims as Better Auth's jwt plugin issues them: iss and aud are the origin. An override
    of None removes the claim."""
    now = int(time.time())
    values: dict[str, Any] = {
        "sub": sub,
        "iat": now,
        "exp": now + 900,
        "iss": origin,
        "aud": origin,
        **overrides,
    }
    return {k: v for k, v in values.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def forge(header: dict[str, Any], payload: dict[str, Any], sign: Signer | None) -> str:
    """A compact JWT with exactly this header, signed by `sign` (None: empty signature)."""
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    signature = b"" if sign is None else sign(signing_input.encode())
    return f"{signing_input}.{b64(signature)}"


def signer(alg: str, key: PrivateKey) -> Signer:
    algorithm = get_default_algorithms()[alg]
    prepared = algorithm.prepare_key(key)

    def sign(message: bytes) -> bytes:
        signature: bytes = algorithm.sign(message, prepared)
        return signature

    return sign


def hmac_signer(secret: bytes) -> Signer:
    return lambda message: hmac.new(secret, message, hashlib.sha256).digest()


def ecdsa_signer(key: ec.EllipticCurvePrivateKey, digest: str) -> Signer:
    """ECDSA with any hash over any curve (PyJWT refuses to sign ES256 with a P-521 key)."""
    hash_alg = {"SHA256": ECAlgorithm.SHA256, "SHA512": ECAlgorithm.SHA512}[digest]
    algorithm = ECAlgorithm(hash_alg)

    def sign(message: bytes) -> bytes:
        signature: bytes = algorithm.sign(message, key)
        return signature

    return sign


# --- the JWKS server and the clock -------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler stalled on purpose must not hold up the teardown
    owner: "JwksServer"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (fetch deadline) before the answer: expected in these tests.
        self.owner.errors += 1


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, _HTTPServer)
        server.owner.answer(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 whose answer the test controls: `document` (served at
    JWKS_PATH and CUSTOM_PATH, 404 elsewhere), `status`, `body` (raw bytes instead of the
    document); `hold()` keeps every answer back until `release()`; `trickle` sends a long body
    one byte at a time until released; `stop()` closes the port (connection refused) and
    `start()` reopens the same one. Every request's path is recorded in `paths` as it arrives.
    Nothing here is timed: the tests decide when a held answer goes out."""

    def __init__(self) -> None:
        self.document: Any = {"keys": []}
        self.status = 200
        self.body: bytes | None = None
        self.trickle = False
        self.paths: list[str] = []
        self.errors = 0
        self.port = 0
        self._lock = threading.Lock()
        self._open = threading.Event()  # cleared by hold(): answers wait until it is set again
        self._open.set()
        self._closed = threading.Event()  # set at teardown: stalled handlers finish at once
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def requests(self) -> int:
        with self._lock:
            return len(self.paths)

    def publish(self, *jwks: Any) -> None:
        self.document = {"keys": list(jwks)}

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def start(self) -> None:
        assert self._httpd is None
        httpd = _HTTPServer(("127.0.0.1", self.port), _Handler)
        httpd.owner = self
        self.port = httpd.server_port
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        assert self._thread is not None
        self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def close(self) -> None:
        self._closed.set()
        self._open.set()
        self.stop()

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.paths.append(handler.path)
        self._open.wait(DEADLINE * 2)  # bounded, in case a test forgets to release
        status, payload = self.status, self.body
        if payload is None:
            payload = json.dumps(self.document).encode()
        if handler.path not in (JWKS_PATH, CUSTOM_PATH):
            status, payload = 404, b'{"error": "not found"}'
        if self.trickle:
            payload += b" " * 100_000  # a valid document, if it ever arrived whole
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if not self.trickle:
            handler.wfile.write(payload)
            return
        for byte in payload:  # a byte every 50 ms: never done within a test, until teardown
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            if self._closed.wait(0.05):
                return


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def make_verifier(
    tmp_path: Path, jwks_server: JwksServer, clock: ManualClock
) -> AsyncIterator[MakeVerifier]:
    """make_verifier(**settings) -> a TokenVerifier on the test's clock whose JWKS is the test
    server's (BETTER_AUTH_URL = its origin plus a path), closed at teardown."""
    made: list[TokenVerifier] = []

    def make(**overrides: Any) -> TokenVerifier:
        values: dict[str, Any] = {"better_auth_url": f"{jwks_server.origin}/some/path/"}
        values.update(overrides)
        settings = make_settings(f"sqlite:///{tmp_path / 'unused.db'}", **values)
        verifier = TokenVerifier(settings, clock=clock)
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        await verifier.aclose()


async def fetch_done(server: JwksServer, clock: ManualClock, requests: int) -> None:
    """Wait until the server has seen `requests` requests and the cache has dealt with the
    answer to the last one: a fetch's deadline sleeps on the clock from before its request is
    sent until its outcome is in place. (Only when nothing else sleeps on the clock.)"""
    await until(
        lambda: server.requests == requests and clock.sleeping == 0,
        f"JWKS request {requests} answered and dealt with",
    )


async def verified(verifier: TokenVerifier, token: str) -> str:
    return await promptly(verifier.verify(token))


async def refusal(verifier: TokenVerifier, token: str) -> AppError:
    with pytest.raises(AppError) as caught:
        await promptly(verifier.verify(token))
    return caught.value


def assert_app_error(error: str | BaseException, code: str = "TOKEN_INVALID") -> None:
    assert isinstance(error, AppError), repr(error)
    expected_type, status = ERRORS[code]
    assert (type(error), error.code, error.status_code) == (expected_type, code, status), (
        error.detail
    )


async def assert_refused(verifier: TokenVerifier, token: str, code: str = "TOKEN_INVALID") -> None:
    assert_app_error(await refusal(verifier, token), code)


async def outcomes(tasks: list["asyncio.Task[str]"]) -> list[str | BaseException]:
    return await promptly(asyncio.gather(*tasks, return_exceptions=True))


def start(verifier: TokenVerifier, token: str) -> "asyncio.Task[str]":
    return asyncio.create_task(verifier.verify(token))


# --- every accepted algorithm ------------------------------------------------------------------


ACCEPTED = [
    pytest.param("ed25519", "EdDSA", id="EdDSA-Ed25519"),
    pytest.param("ed448", "EdDSA", id="EdDSA-Ed448"),
    pytest.param("p256", "ES256", id="ES256-P256"),
    pytest.param("p521", "ES512", id="ES512-P521"),
    pytest.param("rsa2048", "RS256", id="RS256"),
    pytest.param("rsa2048", "PS256", id="PS256"),
]


@pytest.mark.parametrize(("kind", "alg"), ACCEPTED)
async def test_every_asymmetric_algorithm_is_accepted(
    jwks_server: JwksServer, make_verifier: MakeVerifier, kind: str, alg: str
) -> None:
    key = new_key(kind, alg=alg)
    others = [new_key(k, alg=a) for k, a in (("ed25519", "EdDSA"), ("p256", "ES256"))]
    jwks_server.publish(*[o.jwk() for o in others], key.jwk())
    verifier = make_verifier(better_auth_secret=None)
    for round_ in range(3):
        token = key.sign(claims(jwks_server.origin, f"user-{alg}-{round_}"))
        assert await verified(verifier, token) == f"user-{alg}-{round_}"
    # BETTER_AUTH_URL carries a path: the JWKS is at its origin, fetched once, then cached.
    assert jwks_server.paths == [JWKS_PATH]
    assert jwks_server.requests == 1


@pytest.mark.parametrize(("kind", "alg"), ACCEPTED)
async def test_a_jwk_without_its_own_alg_is_accepted(
    jwks_server: JwksServer, make_verifier: MakeVerifier, kind: str, alg: str
) -> None:
    key = new_key(kind, alg=alg)
    jwks_server.publish(key.jwk(alg=None))
    verifier = make_verifier()
    assert await verified(verifier, key.sign(claims(jwks_server.origin, "bob"))) == "bob"


def _bad_iss_aud(origin: str) -> list[tuple[str, dict[str, Any]]]:
    port = origin.rsplit(":", 1)[1]
    return [
        ("wrong-iss", {"iss": "https://evil.example"}),
        ("wrong-aud", {"aud": "https://evil.example"}),
        ("no-iss", {"iss": None}),
        ("no-aud", {"aud": None}),
        ("no-iss-no-aud", {"iss": None, "aud": None}),
        ("iss-with-path", {"iss": f"{origin}/some/path/"}),
        ("aud-with-path", {"aud": f"{origin}/some/path/"}),
        ("iss-trailing-slash", {"iss": f"{origin}/"}),
        ("iss-prefix-of-origin", {"iss": origin[:-1]}),
        ("aud-prefix-of-origin", {"aud": origin[:-1]}),
        ("iss-localhost", {"iss": f"http://localhost:{port}"}),
        ("aud-list-without-origin", {"aud": ["https://evil.example"]}),
        ("iss-list", {"iss": [origin]}),
        ("iss-other-scheme", {"iss": f"https://127.0.0.1:{port}"}),
    ]


async def test_iss_and_aud_must_be_the_better_auth_origin(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    verifier = make_verifier()
    assert await verified(verifier, key.sign(claims(jwks_server.origin))) == "alice"
    refused: list[str] = []
    for name, overrides in _bad_iss_aud(jwks_server.origin):
        payload = claims(jwks_server.origin, **overrides)
        # Signed by hand: PyJWT refuses to encode an `iss` that is not a string.
        token = forge({"alg": "EdDSA", "kid": key.kid}, payload, signer("EdDSA", key.private))
        error = await refusal(verifier, token)
        if type(error) is TokenInvalid and error.code == "TOKEN_INVALID":
            refused.append(name)
    assert refused == [name for name, _ in _bad_iss_aud(jwks_server.origin)]


async def test_iss_and_aud_overrides_replace_the_origin(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    iss, aud, origin = "https://issuer.example", "api://tasks", jwks_server.origin
    verifier = make_verifier(jwt_issuer=iss, jwt_audience=aud)
    assert await verified(verifier, key.sign(claims(origin, iss=iss, aud=aud))) == "alice"
    await assert_refused(verifier, key.sign(claims(origin)))
    await assert_refused(verifier, key.sign(claims(origin, iss=iss)))
    await assert_refused(verifier, key.sign(claims(origin, aud=aud)))
    await assert_refused(verifier, key.sign(claims(origin, iss=iss, aud=None)))


async def test_an_issuer_override_alone_keeps_the_origin_as_audience(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("p256")
    jwks_server.publish(key.jwk())
    iss, origin = "https://issuer.example", jwks_server.origin
    verifier = make_verifier(jwt_issuer=iss)
    assert await verified(verifier, key.sign(claims(origin, iss=iss))) == "alice"
    await assert_refused(verifier, key.sign(claims(origin)))
    await assert_refused(verifier, key.sign(claims(origin, iss=iss, aud="api://tasks")))


async def test_jwks_url_override(jwks_server: JwksServer, make_verifier: MakeVerifier) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    verifier = make_verifier(
        better_auth_url="https://auth.example.com/base/",
        jwt_jwks_url=f"{jwks_server.origin}{CUSTOM_PATH}",
    )
    # iss/aud stay the origin of BETTER_AUTH_URL; the keys come from the override.
    assert await verified(verifier, key.sign(claims("https://auth.example.com"))) == "alice"
    await assert_refused(verifier, key.sign(claims(jwks_server.origin)))
    assert jwks_server.paths == [CUSTOM_PATH]


# --- HS256 alongside the JWKS ------------------------------------------------------------------


async def test_hs256_still_works_alongside_the_jwks(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    verifier = make_verifier()  # make_settings sets BETTER_AUTH_SECRET
    hs256 = jwt.encode(claims(None, "carol"), SECRET, algorithm="HS256")
    assert await verified(verifier, hs256) == "carol"
    assert jwks_server.requests == 0  # the HS256 path never touches the JWKS
    assert await verified(verifier, key.sign(claims(jwks_server.origin, "dave"))) == "dave"
    assert await verified(verifier, hs256) == "carol"
    assert jwks_server.requests == 1


async def test_hs256_needs_no_iss_or_aud_even_with_better_auth_url(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    verifier = make_verifier()
    for extra in ({}, {"iss": "anyone", "aud": "https://some-frontend.example"}):
        token = jwt.encode(claims(None, **extra), SECRET, algorithm="HS256")
        assert await verified(verifier, token) == "alice", extra


async def test_hs256_checks_an_explicit_issuer_and_audience(
    make_verifier: MakeVerifier,
) -> None:
    iss, aud = "https://issuer.example", "api://tasks"
    only_iss = make_verifier(jwt_issuer=iss)
    both = make_verifier(jwt_issuer=iss, jwt_audience=aud)

    def hs256(**extra: Any) -> str:
        return jwt.encode(claims(None, **extra), SECRET, algorithm="HS256")

    assert await verified(only_iss, hs256(iss=iss)) == "alice"
    assert await verified(only_iss, hs256(iss=iss, aud="whatever")) == "alice"
    await assert_refused(only_iss, hs256())
    await assert_refused(only_iss, hs256(iss="https://evil.example"))
    assert await verified(both, hs256(iss=iss, aud=aud)) == "alice"
    await assert_refused(both, hs256(iss=iss))
    await assert_refused(both, hs256(iss=iss, aud="whatever"))


async def test_hs256_without_a_secret_is_refused(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    verifier = make_verifier(better_auth_secret=None)
    for token in (
        jwt.encode(claims(None), SECRET, algorithm="HS256"),
        jwt.encode(claims(jwks_server.origin), SECRET, algorithm="HS256"),
    ):
        error = await refusal(verifier, token)
        assert_app_error(error)
        assert error.detail == HS256_NOT_CONFIGURED
    assert jwks_server.requests == 0
    assert await verified(verifier, key.sign(claims(jwks_server.origin))) == "alice"


async def test_asymmetric_token_without_a_jwks_is_refused(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    verifier = make_verifier(better_auth_url=None)
    for kind in ("ed25519", "p256", "p521", "rsa2048"):
        other = new_key(kind)
        error = await refusal(verifier, other.sign(claims(jwks_server.origin)))
        assert_app_error(error)
        assert error.detail == (
            f"The token is signed with {other.alg}, which needs Better Auth's JWKS on the "
            "server: set BETTER_AUTH_URL (or JWT_JWKS_URL)"
        )
    assert jwks_server.requests == 0
    token = jwt.encode(claims(None), SECRET, algorithm="HS256")
    assert await verified(verifier, token) == "alice"


# --- algorithm confusion -----------------------------------------------------------------------


def _public_key_secrets(key: Key) -> dict[str, bytes]:
    jwk = key.jwk()
    return {
        "pem": key.public_pem(),
        "jwk-json": json.dumps(jwk).encode(),
        "jwk-json-compact": json.dumps(jwk, separators=(",", ":")).encode(),
        "jwks-json": json.dumps({"keys": [jwk]}).encode(),
    }


@pytest.mark.parametrize("hs256_enabled", [True, False], ids=["with-secret", "without-secret"])
@pytest.mark.parametrize("kind", ["ed25519", "p256", "rsa2048"])
async def test_hs256_keyed_with_the_public_key_is_refused(
    jwks_server: JwksServer, make_verifier: MakeVerifier, kind: str, hs256_enabled: bool
) -> None:
    key = new_key(kind)
    jwks_server.publish(key.jwk())
    overrides: dict[str, Any] = {} if hs256_enabled else {"better_auth_secret": None}
    verifier = make_verifier(**overrides)
    # The key is known and cached: a verifier that mixed the paths would have it at hand.
    assert await verified(verifier, key.sign(claims(jwks_server.origin))) == "alice"
    refused: list[str] = []
    for name, secret in _public_key_secrets(key).items():
        for header in ({"alg": "HS256", "typ": "JWT", "kid": key.kid}, {"alg": "HS256"}):
            token = forge(header, claims(jwks_server.origin), hmac_signer(secret))
            error = await refusal(verifier, token)
            if type(error) is TokenInvalid:
                refused.append(name)
    assert refused == [name for name in _public_key_secrets(key) for _ in range(2)]
    assert jwks_server.requests == 1


async def test_asymmetric_signature_relabelled_hs256_is_refused(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("rsa2048")
    jwks_server.publish(key.jwk())
    verifier = make_verifier()
    _, payload, signature = key.sign(claims(jwks_server.origin)).split(".")
    header = b64json({"alg": "HS256", "typ": "JWT", "kid": key.kid})
    await assert_refused(verifier, f"{header}.{payload}.{signature}")


async def test_hs256_token_with_a_kid_takes_the_hs256_path(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    with_secret = make_verifier()
    without_secret = make_verifier(better_auth_secret=None)
    for kid in (key.kid, new_kid()):
        token = jwt.encode(claims(None), SECRET, algorithm="HS256", headers={"kid": kid})
        assert await verified(with_secret, token) == "alice"
        await assert_refused(without_secret, token)
    # A kid that is not a string: refused as malformed, never a TypeError.
    for kid_value in (123, None, ["a"], {"k": 1}):
        token = forge(
            {"alg": "HS256", "typ": "JWT", "kid": kid_value},
            claims(None),
            hmac_signer(SECRET.encode()),
        )
        await assert_refused(with_secret, token)
        await assert_refused(without_secret, token)
    assert jwks_server.requests == 0


# --- algorithms that are not accepted ----------------------------------------------------------


def _refused_algorithm_tokens(key: Key, p384: Key, origin: str) -> dict[str, str]:
    payload = claims(origin)
    return {
        "none": forge({"alg": "none", "typ": "JWT", "kid": key.kid}, payload, None),
        "None": forge({"alg": "None", "kid": key.kid}, payload, None),
        "none-with-signature": forge(
            {"alg": "none", "kid": key.kid}, payload, signer("EdDSA", key.private)
        ),
        "HS512": forge(
            {"alg": "HS512", "kid": key.kid},
            payload,
            lambda m: hmac.new(SECRET.encode(), m, hashlib.sha512).digest(),
        ),
        "HS384": forge(
            {"alg": "HS384", "kid": key.kid},
            payload,
            lambda m: hmac.new(SECRET.encode(), m, hashlib.sha384).digest(),
        ),
        "ES384": p384.sign(payload),
        "Ed25519-name": forge(
            {"alg": "Ed25519", "kid": key.kid}, payload, signer("EdDSA", key.private)
        ),
        "eddsa-lowercase": forge(
            {"alg": "eddsa", "kid": key.kid}, payload, signer("EdDSA", key.private)
        ),
        "no-alg": forge({"typ": "JWT", "kid": key.kid}, payload, signer("EdDSA", key.private)),
        "empty-alg": forge({"alg": "", "kid": key.kid}, payload, signer("EdDSA", key.private)),
    }


async def test_algorithms_off_the_allow_list_are_refused(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("ed25519")
    p384 = new_key("p384")  # ES384: a real key, published with its alg, but not accepted
    jwks_server.publish(key.jwk(), p384.jwk())
    verifier = make_verifier()
    assert await verified(verifier, key.sign(claims(jwks_server.origin))) == "alice"
    tokens = _refused_algorithm_tokens(key, p384, jwks_server.origin)
    # ES384 really is a valid token for that key: only the algorithm is refused.
    assert (
        jwt.decode(
            tokens["ES384"],
            p384.private.public_key(),
            algorithms=["ES384"],
            audience=jwks_server.origin,
        )["sub"]
        == "alice"
    )
    refused = [
        name
        for name, token in tokens.items()
        if type(await refusal(verifier, token)) is TokenInvalid
    ]
    assert refused == list(tokens)


@pytest.mark.parametrize(
    "alg",
    [["EdDSA"], {"EdDSA": True}, 256, None, True, ["HS256"]],
    ids=["list", "object", "int", "null", "bool", "hs256-list"],
)
async def test_alg_that_is_not_a_string_is_refused(
    jwks_server: JwksServer, make_verifier: MakeVerifier, alg: Any
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    verifier = make_verifier()
    token = forge(
        {"alg": alg, "kid": key.kid}, claims(jwks_server.origin), signer("EdDSA", key.private)
    )
    await assert_refused(verifier, token)


# --- key selection -----------------------------------------------------------------------------


def _mismatches() -> list[Any]:
    """(the token's alg, the kind of key that signs it, the kind of key its kid names)."""
    return [
        pytest.param("EdDSA", "ed25519", "p256", id="EdDSA-token-EC-key"),
        pytest.param("EdDSA", "ed25519", "rsa2048", id="EdDSA-token-RSA-key"),
        pytest.param("ES256", "p256", "rsa2048", id="ES256-token-RSA-key"),
        pytest.param("ES256", "p256", "ed25519", id="ES256-token-OKP-key"),
        pytest.param("RS256", "rsa2048", "p256", id="RS256-token-EC-key"),
        pytest.param("PS256", "rsa2048", "ed25519", id="PS256-token-OKP-key"),
    ]


@pytest.mark.parametrize("with_alg", [True, False], ids=["jwk-alg", "no-jwk-alg"])
@pytest.mark.parametrize(("alg", "token_kind", "published_kind"), _mismatches())
async def test_kid_of_a_key_of_another_type_is_refused(
    jwks_server: JwksServer,
    make_verifier: MakeVerifier,
    alg: str,
    token_kind: str,
    published_kind: str,
    with_alg: bool,
) -> None:
    published = new_key(published_kind)
    jwks_server.publish(published.jwk() if with_alg else published.jwk(alg=None))
    verifier = make_verifier()
    token = new_key(token_kind, alg=alg).sign(claims(jwks_server.origin), kid=published.kid)
    await assert_refused(verifier, token)
    assert jwks_server.requests == 1


@pytest.mark.parametrize("with_alg", [True, False], ids=["jwk-alg", "no-jwk-alg"])
@pytest.mark.parametrize(
    ("alg", "digest", "kind"),
    [("ES256", "SHA256", "p521"), ("ES512", "SHA512", "p256")],
    ids=["ES256-token-P521-key", "ES512-token-P256-key"],
)
async def test_ec_key_of_the_wrong_curve_is_refused(
    jwks_server: JwksServer,
    make_verifier: MakeVerifier,
    alg: str,
    digest: str,
    kind: str,
    with_alg: bool,
) -> None:
    # Signed by the very key the kid names, with the hash the token's alg says: only the curve
    # is wrong for the algorithm.
    key = new_key(kind)
    jwks_server.publish(key.jwk() if with_alg else key.jwk(alg=None))
    verifier = make_verifier()
    private = key.private
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    token = forge(
        {"alg": alg, "typ": "JWT", "kid": key.kid},
        claims(jwks_server.origin),
        ecdsa_signer(private, digest),
    )
    await assert_refused(verifier, token)
    # The same key under its own algorithm is fine.
    assert await verified(verifier, key.sign(claims(jwks_server.origin, "ok"))) == "ok"


async def test_a_jwk_whose_own_alg_differs_is_refused(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    rs = new_key("rsa2048", alg="RS256")
    ps = new_key("rsa2048", 1, alg="PS256")
    ed = new_key("ed25519")
    jwks_server.publish(rs.jwk(), ps.jwk(), ed.jwk(alg="ES256"))
    verifier = make_verifier()
    # The same RSA key, but the JWK says RS256 and the token PS256 (and the other way round).
    await assert_refused(verifier, rs.sign(claims(jwks_server.origin), alg="PS256"))
    await assert_refused(verifier, ps.sign(claims(jwks_server.origin), alg="RS256"))
    await assert_refused(verifier, ed.sign(claims(jwks_server.origin)))
    assert await verified(verifier, rs.sign(claims(jwks_server.origin, "r"))) == "r"
    assert await verified(verifier, ps.sign(claims(jwks_server.origin, "p"))) == "p"


async def test_a_jwk_for_encryption_is_refused(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    enc = new_key("ed25519")
    sig = new_key("ed25519", 1)
    jwks_server.publish(enc.jwk(use="enc"), sig.jwk(use="sig"))
    verifier = make_verifier()
    await assert_refused(verifier, enc.sign(claims(jwks_server.origin)))
    assert await verified(verifier, sig.sign(claims(jwks_server.origin, "s"))) == "s"


@pytest.mark.parametrize("alg", ["RS256", "PS256"])
async def test_an_rsa_key_under_2048_bits_is_refused(
    jwks_server: JwksServer, make_verifier: MakeVerifier, alg: str
) -> None:
    weak = new_key("rsa1024", alg=alg)
    jwks_server.publish(weak.jwk(), weak.jwk(kid=weak.kid + "x", alg=None))
    verifier = make_verifier()
    await assert_refused(verifier, weak.sign(claims(jwks_server.origin)))
    await assert_refused(verifier, weak.sign(claims(jwks_server.origin), kid=weak.kid + "x"))


MISSING = "<no kid member>"


@pytest.mark.parametrize(
    "kid",
    [MISSING, "", 123, None, ["k"], {"k": "v"}, True],
    ids=["missing", "empty", "int", "null", "list", "object", "bool"],
)
async def test_kid_missing_or_not_a_string_is_refused(
    jwks_server: JwksServer, make_verifier: MakeVerifier, kid: Any
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk(), key.jwk(kid=""))
    verifier = make_verifier()
    header: dict[str, Any] = {"alg": "EdDSA", "typ": "JWT"}
    if kid != MISSING:
        header["kid"] = kid
    token = forge(header, claims(jwks_server.origin), signer("EdDSA", key.private))
    await assert_refused(verifier, token)


# --- the JWKS document -------------------------------------------------------------------------


async def test_two_fitting_keys_with_the_same_kid_are_refused(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    first = new_key("ed25519")
    second = new_key("ed25519", 1, kid=first.kid)
    rsa_a = new_key("rsa2048", alg="RS256")
    rsa_b = new_key("rsa2048", 1, alg="RS256", kid=rsa_a.kid)
    jwks_server.publish(first.jwk(), second.jwk(), rsa_a.jwk(), rsa_b.jwk(alg=None))
    verifier = make_verifier()
    await assert_refused(verifier, first.sign(claims(jwks_server.origin)))
    await assert_refused(verifier, second.sign(claims(jwks_server.origin)))
    await assert_refused(verifier, rsa_a.sign(claims(jwks_server.origin)))


@pytest.mark.parametrize("with_alg", [True, False], ids=["jwk-alg", "no-jwk-alg"])
async def test_keys_of_different_types_may_share_a_kid(
    jwks_server: JwksServer, make_verifier: MakeVerifier, with_alg: bool
) -> None:
    # Without their own `alg`, only the key type and curve tell these keys apart.
    ed = new_key("ed25519")
    es256 = new_key("p256", kid=ed.kid)
    es512 = new_key("p521", kid=ed.kid)
    ps = new_key("rsa2048", alg="PS256", kid=ed.kid)
    keys = (ed, es256, es512, ps)
    jwks_server.publish(*[k.jwk() if with_alg else k.jwk(alg=None) for k in keys])
    verifier = make_verifier()
    for key in keys:
        assert await verified(verifier, key.sign(claims(jwks_server.origin, key.alg))) == key.alg
    assert jwks_server.requests == 1


async def test_keys_without_a_kid_and_garbage_entries_are_ignored(
    jwks_server: JwksServer, make_verifier: MakeVerifier, clock: ManualClock
) -> None:
    good = new_key("ed25519")
    nameless = new_key("p256")
    broken_okp = new_key("ed25519", 1)
    broken_ec = new_key("p256", 1)
    broken_rsa = new_key("rsa2048", 1)
    jwks_server.publish(
        "a string",
        None,
        42,
        [],
        {},
        {"kid": 5, "kty": "OKP"},
        {"kid": None},
        nameless.jwk(kid=None),
        broken_okp.jwk(x="!!not-base64!!"),
        broken_ec.jwk(y=None),
        broken_rsa.jwk(n="AQAB"),
        {"kid": "no-kty"},
        good.jwk(),
    )
    verifier = make_verifier()
    assert await verified(verifier, good.sign(claims(jwks_server.origin))) == "alice"
    # Not in the cache: each of these looks again, once the refetch interval allows.
    for kid in (nameless.kid, "None"):
        clock.advance(MIN_REFETCH_SECONDS)
        await assert_refused(verifier, nameless.sign(claims(jwks_server.origin), kid=kid))
    assert jwks_server.requests == 3
    for broken in (broken_okp, broken_ec, broken_rsa):
        await assert_refused(verifier, broken.sign(claims(jwks_server.origin)))
    assert await verified(verifier, good.sign(claims(jwks_server.origin, "again"))) == "again"
    assert jwks_server.requests == 3


@pytest.mark.parametrize(
    "document",
    [{}, {"keys": None}, {"keys": {}}, {"keys": "x"}, [], None, "keys", {"Keys": []}],
    ids=[
        "empty-object",
        "null-keys",
        "object-keys",
        "string-keys",
        "list",
        "null",
        "string",
        "Keys",
    ],
)
async def test_a_document_that_is_not_a_jwks_is_a_failed_fetch(
    jwks_server: JwksServer, make_verifier: MakeVerifier, document: Any
) -> None:
    key = new_key("ed25519")
    jwks_server.document = document
    verifier = make_verifier()
    await assert_refused(verifier, key.sign(claims(jwks_server.origin)), "SERVICE_UNAVAILABLE")
    assert jwks_server.requests == 1


async def test_a_huge_jwks_is_a_failed_fetch(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk(padding="x" * (300 * 1024)))
    verifier = make_verifier()
    await assert_refused(verifier, key.sign(claims(jwks_server.origin)), "SERVICE_UNAVAILABLE")


# --- huge tokens -------------------------------------------------------------------------------


async def test_a_huge_token_is_refused_before_any_fetch(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    verifier = make_verifier()
    huge = key.sign(claims(jwks_server.origin, pad="x" * 6500))
    assert len(huge) > 8192
    await assert_refused(verifier, huge)
    unknown = new_key("ed25519", 1).sign(claims(jwks_server.origin, pad="x" * 6500))
    await assert_refused(verifier, unknown)
    assert jwks_server.requests == 0
    assert jwks_server.requests == 0
    # Below the limit the same kind of token is fine.
    large = key.sign(claims(jwks_server.origin, pad="x" * 5500))
    assert 7000 < len(large) <= 8192
    assert await verified(verifier, large) == "alice"


# --- the refetch throttle ----------------------------------------------------------------------
# The clock moves only when a test advances it: these tests assert what the cache decided (how
# many requests reached the server, which verifications waited for the clock, 401 or 503).


async def test_a_flood_of_unknown_kids_right_after_a_fetch_shares_one_fetch(
    jwks_server: JwksServer, make_verifier: MakeVerifier, clock: ManualClock
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    verifier = make_verifier()
    assert await verified(verifier, key.sign(claims(jwks_server.origin))) == "alice"
    flood = [
        start(verifier, key.sign(claims(jwks_server.origin), kid=new_kid())) for _ in range(50)
    ]
    # Too soon for another fetch: every one of them waits for the next allowed one...
    await until(lambda: clock.sleeping == 50, "the 50 verifications wait on the clock")
    clock.advance(MIN_REFETCH_SECONDS - 0.5)
    assert clock.sleeping == 50
    assert jwks_server.requests == 1
    # ...and that one fetch, when the interval is up, serves them all.
    clock.advance(0.5)
    errors = await outcomes(flood)
    for error in errors:
        assert_app_error(error)
    assert jwks_server.requests == 2


async def test_a_flood_after_the_interval_shares_one_fetch(
    jwks_server: JwksServer, make_verifier: MakeVerifier, clock: ManualClock
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    verifier = make_verifier()
    assert await verified(verifier, key.sign(claims(jwks_server.origin))) == "alice"
    clock.advance(MIN_REFETCH_SECONDS)
    jwks_server.hold()  # the requests pile up on one fetch
    flood = [
        start(verifier, key.sign(claims(jwks_server.origin), kid=new_kid())) for _ in range(50)
    ]
    # The first of them starts the fetch, the others join it before it can even start (tasks
    # run in the order they were made); nobody waits for the clock, only the fetch's deadline.
    await until(lambda: jwks_server.requests == 2, "the refetch reaches the server")
    assert clock.sleeping == 1
    jwks_server.release()
    for error in await outcomes(flood):
        assert_app_error(error)
    assert jwks_server.requests == 2


async def test_sequential_unknown_kids_fetch_at_most_once_per_interval(
    jwks_server: JwksServer, make_verifier: MakeVerifier, clock: ManualClock
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    verifier = make_verifier()
    assert await verified(verifier, key.sign(claims(jwks_server.origin))) == "alice"
    for fetched in range(1, 5):
        clock.advance(1.0)  # arrives a second into the interval: waits the two that are left
        waiting = start(verifier, key.sign(claims(jwks_server.origin), kid=new_kid()))
        await until(lambda: clock.sleeping == 1, "the verification waits on the clock")
        # A known key in between is never held up by the throttle.
        assert await verified(verifier, key.sign(claims(jwks_server.origin, "k"))) == "k"
        clock.advance(MIN_REFETCH_SECONDS - 1.5)
        assert clock.sleeping == 1
        assert jwks_server.requests == fetched
        clock.advance(0.5)
        [error] = await outcomes([waiting])
        assert_app_error(error)
        assert jwks_server.requests == fetched + 1


async def test_a_flood_of_unknown_kids_over_time_is_rate_limited(
    jwks_server: JwksServer, make_verifier: MakeVerifier, clock: ManualClock
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    verifier = make_verifier()
    assert await verified(verifier, key.sign(claims(jwks_server.origin))) == "alice"
    # Ten intervals of attackers arriving all the time: 400 made-up kids, ten fetches.
    waiting: list[asyncio.Task[str]] = []
    for interval in range(1, 11):
        for step in (1.0, 1.0, 0.5, 0.5):
            waiting.extend(
                start(verifier, key.sign(claims(jwks_server.origin), kid=new_kid()))
                for _ in range(10)
            )
            await until(lambda: clock.sleeping == len(waiting), "the attackers wait")
            assert jwks_server.requests == interval
            clock.advance(step)
        for error in await outcomes(waiting):
            assert_app_error(error)
        assert jwks_server.requests == interval + 1
        waiting.clear()


async def test_concurrent_first_requests_share_one_fetch(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("p256")
    jwks_server.publish(key.jwk())
    jwks_server.hold()
    verifier = make_verifier()
    first = [start(verifier, key.sign(claims(jwks_server.origin, f"user-{i}"))) for i in range(20)]
    await until(lambda: jwks_server.requests == 1, "the first fetch reaches the server")
    jwks_server.release()
    assert await outcomes(first) == [f"user-{i}" for i in range(20)]
    assert jwks_server.requests == 1


async def test_key_rotation(
    jwks_server: JwksServer, make_verifier: MakeVerifier, clock: ManualClock
) -> None:
    old = new_key("ed25519")
    new = new_key("ed25519", 1)
    origin = jwks_server.origin
    jwks_server.publish(old.jwk())
    verifier = make_verifier()
    assert await verified(verifier, old.sign(claims(origin, "o1"))) == "o1"
    jwks_server.publish(old.jwk(), new.jwk())
    # Even right after a fetch, the freshly published key is accepted, as soon as the refetch
    # interval allows a new fetch.
    rotated = start(verifier, new.sign(claims(origin, "n1")))
    await until(lambda: clock.sleeping == 1, "the new key waits for the next allowed fetch")
    clock.advance(MIN_REFETCH_SECONDS)
    assert await outcomes([rotated]) == ["n1"]
    assert jwks_server.requests == 2
    assert await verified(verifier, old.sign(claims(origin, "o2"))) == "o2"  # both published
    assert await verified(verifier, new.sign(claims(origin, "n2"))) == "n2"
    assert jwks_server.requests == 2
    # The old key is withdrawn: it stops working after the next refetch.
    jwks_server.publish(new.jwk())
    clock.advance(MIN_REFETCH_SECONDS)
    await assert_refused(verifier, new.sign(claims(origin), kid=new_kid()))  # refetches
    assert jwks_server.requests == 3
    withdrawn = start(verifier, old.sign(claims(origin)))  # unknown now: waits, looks again
    await until(lambda: clock.sleeping == 1, "the withdrawn key waits for the next fetch")
    clock.advance(MIN_REFETCH_SECONDS)
    [error] = await outcomes([withdrawn])
    assert_app_error(error)
    assert jwks_server.requests == 4
    assert await verified(verifier, new.sign(claims(origin, "n3"))) == "n3"
    assert jwks_server.requests == 4


async def test_a_withdrawn_key_stops_working_after_the_cache_expires(
    jwks_server: JwksServer, make_verifier: MakeVerifier, clock: ManualClock
) -> None:
    old = new_key("ed25519")
    new = new_key("ed25519", 1)
    origin = jwks_server.origin
    jwks_server.publish(old.jwk())
    verifier = make_verifier()
    assert await verified(verifier, old.sign(claims(origin))) == "alice"
    jwks_server.publish(new.jwk())
    clock.advance(CACHE_SECONDS - 0.5)
    assert await verified(verifier, old.sign(claims(origin))) == "alice"  # still fresh
    assert jwks_server.requests == 1
    clock.advance(0.5)
    # Stale: still served from the cache while the refresh runs in the background.
    assert await verified(verifier, old.sign(claims(origin))) == "alice"
    await fetch_done(jwks_server, clock, 2)
    assert await verified(verifier, new.sign(claims(origin, "n"))) == "n"  # no fetch: cached
    # The old key is gone from the cache: too soon to look again, so it waits, then is refused.
    withdrawn = start(verifier, old.sign(claims(origin)))
    await until(lambda: clock.sleeping == 1, "the old key waits for the next allowed fetch")
    clock.advance(MIN_REFETCH_SECONDS)
    [error] = await outcomes([withdrawn])
    assert_app_error(error)
    assert jwks_server.requests == 3


# --- the cache time ----------------------------------------------------------------------------


async def test_a_stale_key_is_served_while_refreshing_in_the_background(
    jwks_server: JwksServer, make_verifier: MakeVerifier, clock: ManualClock
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    verifier = make_verifier()
    token = key.sign(claims(jwks_server.origin))
    assert await verified(verifier, token) == "alice"
    clock.advance(CACHE_SECONDS - 0.5)
    assert await verified(verifier, token) == "alice"
    assert jwks_server.requests == 1  # fresh: no request
    clock.advance(0.5)
    jwks_server.hold()
    # Stale: the refresh starts, but the answer comes from the cache (promptly() would fail a
    # verification that waited for the held refresh).
    assert await verified(verifier, token) == "alice"
    await until(lambda: jwks_server.requests == 2, "the refresh reaches the server")
    # While that refresh hangs, the key keeps verifying.
    clock.advance(FETCH_TIMEOUT_SECONDS - 0.5)
    for _ in range(5):
        assert await verified(verifier, token) == "alice"
    jwks_server.release()
    await fetch_done(jwks_server, clock, 2)
    assert await verified(verifier, token) == "alice"
    assert jwks_server.requests == 2


async def test_a_hanging_refresh_is_never_doubled(
    jwks_server: JwksServer, clock: ManualClock
) -> None:
    # A fetch timeout longer than the refetch interval (not the defaults, hence the cache
    # itself): past the interval, a refresh still in flight is joined, never started again.
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    cache = JwksCache(
        f"{jwks_server.origin}{JWKS_PATH}",
        cache_seconds=CACHE_SECONDS,
        min_refetch_seconds=3.0,
        timeout=10.0,
        clock=clock,
    )
    try:
        assert (await promptly(cache.key(key.kid, "EdDSA"))).key_id == key.kid
        clock.advance(CACHE_SECONDS)
        jwks_server.hold()
        assert (await promptly(cache.key(key.kid, "EdDSA"))).key_id == key.kid
        await until(lambda: jwks_server.requests == 2, "the refresh reaches the server")
        clock.advance(5.0)  # past the refetch interval, before the fetch's deadline
        for _ in range(5):
            assert (await promptly(cache.key(key.kid, "EdDSA"))).key_id == key.kid
        jwks_server.release()
        # A second refresh would still be sleeping on the clock (its deadline) or counted.
        await fetch_done(jwks_server, clock, 2)
        assert jwks_server.requests == 2
    finally:
        await cache.aclose()


async def test_a_refresh_picks_up_a_new_document(
    jwks_server: JwksServer, make_verifier: MakeVerifier, clock: ManualClock
) -> None:
    key = new_key("ed25519")
    added = new_key("p256")
    jwks_server.publish(key.jwk())
    verifier = make_verifier()
    assert await verified(verifier, key.sign(claims(jwks_server.origin))) == "alice"
    jwks_server.publish(key.jwk(), added.jwk())
    clock.advance(CACHE_SECONDS)
    assert await verified(verifier, key.sign(claims(jwks_server.origin))) == "alice"
    await fetch_done(jwks_server, clock, 2)
    assert await verified(verifier, added.sign(claims(jwks_server.origin, "a"))) == "a"
    assert jwks_server.requests == 2


# --- the JWKS unreachable ----------------------------------------------------------------------


def _break(server: JwksServer, mode: str) -> None:
    if mode == "stopped":
        server.stop()
    elif mode.startswith("status-"):
        server.status = int(mode.removeprefix("status-"))
    elif mode == "invalid-json":
        server.body = b'{"keys": [ {"kty": "OKP",'
    elif mode == "html":
        server.body = b"<html><body>Bad gateway</body></html>"
    elif mode == "deeply-nested":
        server.body = b"[" * 100_000 + b"]" * 100_000
    elif mode == "not-utf8":
        server.body = b'{"keys": ["\xff\xfe"]}'
    elif mode == "hanging":
        server.hold()
    elif mode == "trickling":
        server.trickle = True
    else:
        raise AssertionError(mode)


def _repair(server: JwksServer) -> None:
    server.status, server.body, server.trickle = 200, None, False
    server.release()
    if not server.running:
        server.start()


SLOW_OUTAGES = ("hanging", "trickling")  # the fetch ends only at its deadline
OUTAGES = [
    "stopped",
    "status-500",
    "status-404",
    "invalid-json",
    "html",
    "deeply-nested",
    "not-utf8",
    *SLOW_OUTAGES,
]


async def _past_the_deadline(server: JwksServer, clock: ManualClock, mode: str, n: int) -> None:
    """For an outage that never answers, let the clock reach the deadline of fetch `n`."""
    if mode in SLOW_OUTAGES:
        await until(lambda: server.requests == n, f"JWKS request {n} reaches the server")
        clock.advance(FETCH_TIMEOUT_SECONDS)


@pytest.mark.parametrize("mode", OUTAGES)
async def test_an_unreachable_jwks_is_503_for_an_unknown_key(
    jwks_server: JwksServer, make_verifier: MakeVerifier, clock: ManualClock, mode: str
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    _break(jwks_server, mode)
    verifier = make_verifier()
    pending = start(verifier, key.sign(claims(jwks_server.origin)))
    if mode in SLOW_OUTAGES:
        await until(lambda: jwks_server.requests == 1, "the fetch reaches the server")
        clock.advance(FETCH_TIMEOUT_SECONDS - 0.5)
        assert clock.sleeping == 1  # the fetch's deadline is not reached yet
        assert not pending.done()
        clock.advance(0.5)
    [error] = await outcomes([pending])
    assert_app_error(error, "SERVICE_UNAVAILABLE")
    assert isinstance(error, AppError)
    assert error.detail == UNAVAILABLE_DETAIL
    assert jwks_server.requests == (0 if mode == "stopped" else 1)


async def test_the_default_fetch_timeout_bounds_a_hanging_jwks(
    jwks_server: JwksServer, make_verifier: MakeVerifier, clock: ManualClock
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    jwks_server.hold()
    verifier = make_verifier()
    pending = [start(verifier, key.sign(claims(jwks_server.origin, f"u{i}"))) for i in range(10)]
    await until(lambda: jwks_server.requests == 1, "the fetch reaches the server")
    assert FETCH_TIMEOUT_SECONDS == 3.0
    clock.advance(2.5)
    assert clock.sleeping == 1
    assert not any(task.done() for task in pending)
    clock.advance(0.5)
    for error in await outcomes(pending):
        assert_app_error(error, "SERVICE_UNAVAILABLE")
    assert jwks_server.requests == 1
    # Known to be unreachable now: the next unknown key is answered at once, without a fetch.
    await assert_refused(verifier, key.sign(claims(jwks_server.origin)), "SERVICE_UNAVAILABLE")
    assert jwks_server.requests == 1


@pytest.mark.parametrize("mode", ["stopped", "status-500", "invalid-json", "hanging"])
async def test_a_cached_key_survives_an_outage(
    jwks_server: JwksServer, make_verifier: MakeVerifier, clock: ManualClock, mode: str
) -> None:
    old = new_key("ed25519")
    new = new_key("p256")
    origin = jwks_server.origin
    # Requests that reach the server: not one while it is stopped.
    counted = 0 if mode == "stopped" else 1
    jwks_server.publish(old.jwk())
    verifier = make_verifier()
    assert await verified(verifier, old.sign(claims(origin, "before"))) == "before"
    _break(jwks_server, mode)
    clock.advance(CACHE_SECONDS)  # stale: the next request refreshes, in the background
    assert await verified(verifier, old.sign(claims(origin, "during"))) == "during"
    await _past_the_deadline(jwks_server, clock, mode, 2)
    # An unknown key cannot be had: 503 (after sharing that refresh, or at once once it failed).
    await assert_refused(verifier, new.sign(claims(origin)), "SERVICE_UNAVAILABLE")
    assert await verified(verifier, old.sign(claims(origin, "cached"))) == "cached"
    # Known to be unreachable: unknown keys get 503 at once, without a fetch or a wait.
    for _ in range(5):
        await assert_refused(verifier, new.sign(claims(origin)), "SERVICE_UNAVAILABLE")
    assert clock.sleeping == 0
    assert jwks_server.requests == 1 + counted
    # After the interval, the first such request tries the JWKS again; it fails: 503.
    clock.advance(MIN_REFETCH_SECONDS)
    retry = start(verifier, new.sign(claims(origin)))
    await _past_the_deadline(jwks_server, clock, mode, 3)
    [error] = await outcomes([retry])
    assert_app_error(error, "SERVICE_UNAVAILABLE")
    assert jwks_server.requests == 1 + 2 * counted
    assert await verified(verifier, old.sign(claims(origin, "still"))) == "still"
    # The auth server comes back with a new key: 503 until the interval allows a fetch...
    _repair(jwks_server)
    jwks_server.publish(old.jwk(), new.jwk())
    await assert_refused(verifier, new.sign(claims(origin)), "SERVICE_UNAVAILABLE")
    assert jwks_server.requests == 1 + 2 * counted
    # ...then the first request fetches it and is accepted.
    clock.advance(MIN_REFETCH_SECONDS)
    assert await verified(verifier, new.sign(claims(origin, "new"))) == "new"
    assert await verified(verifier, old.sign(claims(origin, "old"))) == "old"
    assert jwks_server.requests == 2 + 2 * counted


async def test_while_the_jwks_is_unreachable_unknown_kids_never_wait(
    jwks_server: JwksServer, make_verifier: MakeVerifier, clock: ManualClock
) -> None:
    old = new_key("ed25519")
    new = new_key("ed25519", 1)
    origin = jwks_server.origin
    jwks_server.publish(old.jwk())
    verifier = make_verifier()
    assert await verified(verifier, old.sign(claims(origin))) == "alice"
    jwks_server.status = 500
    clock.advance(MIN_REFETCH_SECONDS)
    await assert_refused(verifier, new.sign(claims(origin)), "SERVICE_UNAVAILABLE")
    assert jwks_server.requests == 2
    # Random kids cannot hold a request: each is answered at once, none fetches or sleeps.
    flood = [start(verifier, old.sign(claims(origin), kid=new_kid())) for _ in range(50)]
    for error in await outcomes(flood):
        assert_app_error(error, "SERVICE_UNAVAILABLE")
    assert clock.sleeping == 0
    assert jwks_server.requests == 2
    # The interval is up: the first request tries again and waits for that one attempt
    # (bounded by the fetch's deadline); requests meanwhile do not wait for it.
    jwks_server.status = 200
    jwks_server.publish(old.jwk(), new.jwk())
    jwks_server.hold()
    clock.advance(MIN_REFETCH_SECONDS)
    retrying = start(verifier, new.sign(claims(origin, "new")))
    await until(lambda: jwks_server.requests == 3, "the retry reaches the server")
    for _ in range(5):
        await assert_refused(verifier, new.sign(claims(origin)), "SERVICE_UNAVAILABLE")
    assert await verified(verifier, old.sign(claims(origin, "old"))) == "old"
    assert not retrying.done()
    # The auth server answers: the retrying request gets the new key, and so does the next one.
    jwks_server.release()
    assert await outcomes([retrying]) == ["new"]
    assert await verified(verifier, new.sign(claims(origin, "next"))) == "next"
    assert jwks_server.requests == 3


async def test_after_a_failed_fetch_the_jwks_recovers(
    jwks_server: JwksServer, make_verifier: MakeVerifier, clock: ManualClock
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    jwks_server.stop()
    verifier = make_verifier()
    token = key.sign(claims(jwks_server.origin))
    await assert_refused(verifier, token, "SERVICE_UNAVAILABLE")  # the first fetch fails
    await assert_refused(verifier, token, "SERVICE_UNAVAILABLE")  # at once, no new attempt
    assert clock.sleeping == 0
    clock.advance(MIN_REFETCH_SECONDS)
    await assert_refused(verifier, token, "SERVICE_UNAVAILABLE")  # the retry fails too
    # The auth server is back: the key is fetched once the interval allows, and accepted.
    jwks_server.start()
    await assert_refused(verifier, token, "SERVICE_UNAVAILABLE")
    assert jwks_server.requests == 0
    clock.advance(MIN_REFETCH_SECONDS)
    assert await verified(verifier, token) == "alice"
    assert jwks_server.requests == 1
    # A key that the recovered JWKS does not have is a plain 401 again, not a 503 — after the
    # usual wait for the next allowed fetch.
    unknown = start(verifier, new_key("ed25519", 1).sign(claims(jwks_server.origin)))
    await until(lambda: clock.sleeping == 1, "the unknown key waits for the next fetch")
    clock.advance(MIN_REFETCH_SECONDS)
    [error] = await outcomes([unknown])
    assert_app_error(error)
    assert jwks_server.requests == 2


# --- claims ------------------------------------------------------------------------------------


async def test_claims_of_asymmetric_tokens(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("ed25519")
    stranger = new_key("ed25519", 1, kid=key.kid)  # signs with the published kid, wrong key
    jwks_server.publish(key.jwk())
    verifier = make_verifier()
    origin, now = jwks_server.origin, int(time.time())
    await assert_refused(verifier, key.sign(claims(origin, exp=now - 120)), "TOKEN_EXPIRED")
    # Expired, but within the leeway (30 s) for the next 29 s at least.
    assert await verified(verifier, key.sign(claims(origin, exp=now - 1))) == "alice"
    await assert_refused(verifier, key.sign(claims(origin, nbf=now + 600)))
    assert await verified(verifier, key.sign(claims(origin, nbf=now + 10))) == "alice"
    await assert_refused(verifier, key.sign(claims(origin, iat=now + 600)))
    await assert_refused(verifier, key.sign(claims(origin, exp=str(now + 600))))
    await assert_refused(verifier, key.sign(claims(origin, exp=None)))
    for sub in (None, 123, "", ["alice"], {"id": "alice"}, True, "u" * 256, "a\x00b"):
        await assert_refused(verifier, key.sign(claims(origin, sub)))
    await assert_refused(verifier, stranger.sign(claims(origin)))
    header, _, signature = key.sign(claims(origin)).split(".")
    await assert_refused(verifier, f"{header}.{b64json(claims(origin, 'bob'))}.{signature}")
    await assert_refused(verifier, f"{header}.{b64json(claims(origin))}.")


# --- end to end, through the ASGI app ----------------------------------------------------------


def _jwks_settings(database_url: str, server: JwksServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "better_auth_secret": None,
        "better_auth_url": f"{server.origin}/api/auth",
    }
    values.update(overrides)
    return make_settings(database_url, **values)


@asynccontextmanager
async def jwks_app(settings: Settings, clock: ManualClock) -> AsyncIterator[httpx.AsyncClient]:
    """The real app, its token verifier on the test's clock: create_app makes one on the real
    clock, replaced here before any request."""
    async with running_app(settings) as (app, http):
        await app_state(app).verifier.aclose()
        app_state(app).verifier = TokenVerifier(settings, clock=clock)
        yield http


async def test_e2e_eddsa_token_creates_and_lists_tasks(
    database_url: str, jwks_server: JwksServer, clock: ManualClock
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(new_key("p256").jwk(), key.jwk())
    user = f"user-{uuid.uuid4().hex}"
    token = key.sign(claims(jwks_server.origin, user))
    async with jwks_app(_jwks_settings(database_url, jwks_server), clock) as http:
        created = await promptly(
            http.post(f"/api/{user}/tasks", json={"title": "signed"}, headers=bearer(token))
        )
        assert created.status_code == 201, created.text
        assert (created.json()["title"], created.json()["user_id"]) == ("signed", user)
        listed = await promptly(http.get(f"/api/{user}/tasks", headers=bearer(token)))
        assert listed.status_code == 200, listed.text
        assert [(t["title"], t["user_id"]) for t in listed.json()] == [("signed", user)]
        other = await promptly(http.get(f"/api/{user}-other/tasks", headers=bearer(token)))
        assert other.status_code == 403, other.text
        assert other.json()["code"] == "FORBIDDEN"
    assert jwks_server.paths == [JWKS_PATH]


async def test_e2e_unreachable_jwks_is_503(
    database_url: str, jwks_server: JwksServer, clock: ManualClock
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    jwks_server.stop()
    user = f"user-{uuid.uuid4().hex}"
    async with jwks_app(_jwks_settings(database_url, jwks_server), clock) as http:
        token = key.sign(claims(jwks_server.origin, user))
        for _ in range(2):  # the first shares one failing fetch; then answered at once
            responses = await promptly(
                asyncio.gather(
                    http.get(f"/api/{user}/tasks", headers=bearer(token)),
                    http.post(f"/api/{user}/tasks", json={"title": "x"}, headers=bearer(token)),
                )
            )
            for response in responses:
                assert response.status_code == 503, response.text
                assert response.json() == {
                    "detail": UNAVAILABLE_DETAIL,
                    "code": "SERVICE_UNAVAILABLE",
                }
                assert response.headers["retry-after"] == "3"  # when the next fetch may be tried
                assert response.headers["content-type"] == "application/json"
                assert "www-authenticate" not in response.headers
        assert clock.sleeping == 0


def _refused_tokens(key: Key, origin: str, user: str) -> list[tuple[str, str, str]]:
    """(token, code, exact detail) of every refusal a JWKS-only service explains."""
    port = origin.rsplit(":", 1)[1]
    localhost = f"http://localhost:{port}"
    expected = f'"{origin}" (from the origin of BETTER_AUTH_URL)'
    hostile = "http://evil.example/\n" + "x" * 5000
    now = int(time.time())
    payload = claims(origin, user)
    return [
        (  # first: the first fetch is allowed at once (later it would wait for the interval)
            key.sign(payload, kid=new_kid()),
            "TOKEN_INVALID",
            f"The token's signing key (its kid) is not in the JWKS at {origin}{JWKS_PATH}",
        ),
        (
            jwt.encode(claims(None, user), SECRET, algorithm="HS256"),
            "TOKEN_INVALID",
            "The token is signed with HS256, which needs BETTER_AUTH_SECRET on the server; "
            "this service is configured for Better Auth's JWKS (asymmetric tokens) only",
        ),
        (  # the frontend on localhost, BETTER_AUTH_URL on 127.0.0.1
            key.sign(claims(origin, user, iss=localhost)),
            "TOKEN_INVALID",
            f'The token\'s iss is "{localhost}" but this service expects {expected}',
        ),
        (
            key.sign(claims(origin, user, aud=localhost)),
            "TOKEN_INVALID",
            f'The token\'s aud is "{localhost}" but this service expects {expected}',
        ),
        (  # quoted back cut short, its line break escaped
            key.sign(claims(origin, user, iss=hostile)),
            "TOKEN_INVALID",
            f"The token's iss is \"http://evil.example/\\n{'x' * 76}… but this service "
            f"expects {expected}",
        ),
        (  # C1 control and bidi override escaped
            key.sign(claims(origin, user, aud=["a\u202eb\x85c"])),
            "TOKEN_INVALID",
            f'The token\'s aud is ["a\\u202eb\\x85c"] but this service expects {expected}',
        ),
        (
            key.sign(claims(origin, user, iss=None)),
            "TOKEN_INVALID",
            f"The token has no iss claim; this service expects {expected}",
        ),
        (
            forge({"alg": "EdDSA"}, payload, signer("EdDSA", key.private)),
            "TOKEN_INVALID",
            "The token names no signing key (kid)",
        ),
        (
            forge({"alg": "none", "kid": key.kid}, payload, None),
            "TOKEN_INVALID",
            'The token\'s signing algorithm "none" is not accepted '
            "(accepted: HS256, EdDSA, ES256, ES512, PS256, RS256)",
        ),
        (
            key.sign(claims(origin, user, exp=now - 120)),
            "TOKEN_EXPIRED",
            "The bearer token has expired",
        ),
        (
            key.sign(claims(origin, user, exp=str(now + 600))),
            "TOKEN_INVALID",
            "The token's exp claim must be a number (seconds since 1970-01-01 UTC), not a string",
        ),
        (
            key.sign(claims(origin, 12345)),
            "TOKEN_INVALID",
            "The token's sub claim must be a string (the user id), not a number",
        ),
    ]


async def test_e2e_refusals_say_what_to_fix_and_are_logged(
    database_url: str,
    jwks_server: JwksServer,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    user = f"user-{uuid.uuid4().hex}"
    cases = _refused_tokens(key, jwks_server.origin, user)
    caplog.set_level(logging.INFO, logger="backend.auth")
    async with jwks_app(_jwks_settings(database_url, jwks_server), clock) as http:
        for token, code, detail in cases:
            caplog.clear()
            response = await promptly(http.get(f"/api/{user}/tasks", headers=bearer(token)))
            assert (response.status_code, response.json()) == (
                401,
                {"detail": detail, "code": code},
            )
            assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
            logged = [r for r in caplog.records if r.name == "backend.auth"]
            assert [(r.levelno, r.getMessage()) for r in logged] == [
                (logging.INFO, f"GET /api/{{user_id}}/tasks refused: 401 {code}: {detail}")
            ]
            assert token not in caplog.text
            assert all(token not in repr(r.__dict__) for r in caplog.records)
    assert jwks_server.requests == 1


async def test_e2e_alg_that_is_not_a_string_is_401(
    database_url: str, jwks_server: JwksServer, clock: ManualClock
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    user = f"user-{uuid.uuid4().hex}"
    token = forge(
        {"alg": ["EdDSA"], "kid": key.kid},
        claims(jwks_server.origin, user),
        signer("EdDSA", key.private),
    )
    async with jwks_app(_jwks_settings(database_url, jwks_server), clock) as http:
        response = await promptly(http.get(f"/api/{user}/tasks", headers=bearer(token)))
    assert (response.status_code, response.json()) == (
        401,
        {"detail": "The token's header names no signing algorithm (alg)", "code": "TOKEN_INVALID"},
    )
