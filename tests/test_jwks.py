"""Asymmetric tokens verified with Better Auth's JWKS: every accepted algorithm, the iss/aud
checks, algorithm confusion, key selection by `kid`, the shape of the JWKS document, the refetch
throttle, the cache, and what happens while the JWKS cannot be fetched.

Keys are generated here and served by a real HTTP server on the loopback interface (no mocks);
the server can be told to answer 500, invalid JSON, to stall, or to go away altogether. Most
tests call TokenVerifier.verify directly (no database, so they run once); the end-to-end ones go
through the ASGI app and run on each database.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import string
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, get_default_algorithms
from jwt.warnings import InsecureKeyLengthWarning

from backend.config import Settings
from backend.errors import AppError, ServiceUnavailable, TokenExpired, TokenInvalid
from backend.middleware.jwks import JwksCache
from backend.middleware.jwt_auth import TokenVerifier
from tests.conftest import SECRET, make_settings, running_app

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


# --- the JWKS server ---------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler stalled on purpose must not hold up the teardown
    owner: "JwksServer"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (fetch timeout) before the answer: expected in these tests.
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
    document), `delay` (seconds before answering), `trickle` (send the body one byte every
    0.1 s); `stop()` closes the port (connection refused) and `start()` reopens the same one.
    Every request's path is recorded in `paths`."""

    def __init__(self) -> None:
        self.document: Any = {"keys": []}
        self.status = 200
        self.body: bytes | None = None
        self.delay = 0.0
        self.trickle = False
        self.paths: list[str] = []
        self.times: list[float] = []  # time.monotonic() of each request
        self.errors = 0
        self.port = 0
        self._lock = threading.Lock()
        self._released = threading.Event()  # set at teardown: stalled handlers finish at once
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

    def start(self) -> None:
        assert self._httpd is None
        httpd = _HTTPServer(("127.0.0.1", self.port), _Handler)
        httpd.owner = self
        self.port = httpd.server_port
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
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
        self._released.set()
        self.stop()

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.paths.append(handler.path)
            self.times.append(time.monotonic())
        if self.delay:
            self._released.wait(self.delay)
        status, payload = self.status, self.body
        if payload is None:
            payload = json.dumps(self.document).encode()
        if handler.path not in (JWKS_PATH, CUSTOM_PATH):
            status, payload = 404, b'{"error": "not found"}'
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if not self.trickle:
            handler.wfile.write(payload)
            return
        for byte in payload[:100]:  # bounded: at most 10 s, less once released
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            if self._released.wait(0.1):
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
async def make_verifier(tmp_path: Path, jwks_server: JwksServer) -> AsyncIterator[MakeVerifier]:
    """make_verifier(min_refetch=…, timeout=…, **settings) -> a TokenVerifier whose JWKS is the
    test server's (BETTER_AUTH_URL = its origin plus a path), closed at teardown."""
    made: list[TokenVerifier] = []

    def make(
        *, min_refetch: float = 0.3, timeout: float | None = None, **overrides: Any
    ) -> TokenVerifier:
        values: dict[str, Any] = {"better_auth_url": f"{jwks_server.origin}/some/path/"}
        values.update(overrides)
        settings = make_settings(f"sqlite:///{tmp_path / 'unused.db'}", **values)
        verifier = TokenVerifier(settings, jwks_min_refetch_seconds=min_refetch)
        if timeout is not None:
            jwks(verifier)._timeout = timeout
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        await verifier.aclose()


def jwks(verifier: TokenVerifier) -> JwksCache:
    assert verifier.jwks is not None
    return verifier.jwks


async def refusal(verifier: TokenVerifier, token: str) -> AppError:
    with pytest.raises(AppError) as caught:
        await verifier.verify(token)
    return caught.value


async def assert_refused(verifier: TokenVerifier, token: str, code: str = "TOKEN_INVALID") -> None:
    error = await refusal(verifier, token)
    expected_type, status = ERRORS[code]
    assert (type(error), error.code, error.status_code) == (expected_type, code, status), (
        error.detail
    )


async def eventually(condition: Callable[[], bool], within: float = 3.0) -> None:
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    assert condition(), f"not within {within} s"


async def fetch_settled(verifier: TokenVerifier) -> None:
    """Wait (bounded) until no JWKS fetch is under way."""
    cache_ = jwks(verifier)
    await eventually(lambda: cache_._inflight is None)


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
        assert await verifier.verify(token) == f"user-{alg}-{round_}"
    # BETTER_AUTH_URL carries a path: the JWKS is at its origin, fetched once, then cached.
    assert jwks_server.paths == [JWKS_PATH]
    assert jwks(verifier).fetches == 1


@pytest.mark.parametrize(("kind", "alg"), ACCEPTED)
async def test_a_jwk_without_its_own_alg_is_accepted(
    jwks_server: JwksServer, make_verifier: MakeVerifier, kind: str, alg: str
) -> None:
    key = new_key(kind, alg=alg)
    jwks_server.publish(key.jwk(alg=None))
    verifier = make_verifier()
    assert await verifier.verify(key.sign(claims(jwks_server.origin, "bob"))) == "bob"


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
    assert await verifier.verify(key.sign(claims(jwks_server.origin))) == "alice"
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
    assert await verifier.verify(key.sign(claims(origin, iss=iss, aud=aud))) == "alice"
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
    assert await verifier.verify(key.sign(claims(origin, iss=iss))) == "alice"
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
    assert await verifier.verify(key.sign(claims("https://auth.example.com"))) == "alice"
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
    assert await verifier.verify(hs256) == "carol"
    assert jwks_server.requests == 0  # the HS256 path never touches the JWKS
    assert await verifier.verify(key.sign(claims(jwks_server.origin, "dave"))) == "dave"
    assert await verifier.verify(hs256) == "carol"
    assert jwks_server.requests == 1


async def test_hs256_needs_no_iss_or_aud_even_with_better_auth_url(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    verifier = make_verifier()
    for extra in ({}, {"iss": "anyone", "aud": "https://some-frontend.example"}):
        token = jwt.encode(claims(None, **extra), SECRET, algorithm="HS256")
        assert await verifier.verify(token) == "alice", extra


async def test_hs256_checks_an_explicit_issuer_and_audience(
    make_verifier: MakeVerifier,
) -> None:
    iss, aud = "https://issuer.example", "api://tasks"
    only_iss = make_verifier(jwt_issuer=iss)
    both = make_verifier(jwt_issuer=iss, jwt_audience=aud)

    def hs256(**extra: Any) -> str:
        return jwt.encode(claims(None, **extra), SECRET, algorithm="HS256")

    assert await only_iss.verify(hs256(iss=iss)) == "alice"
    assert await only_iss.verify(hs256(iss=iss, aud="whatever")) == "alice"
    await assert_refused(only_iss, hs256())
    await assert_refused(only_iss, hs256(iss="https://evil.example"))
    assert await both.verify(hs256(iss=iss, aud=aud)) == "alice"
    await assert_refused(both, hs256(iss=iss))
    await assert_refused(both, hs256(iss=iss, aud="whatever"))


async def test_hs256_without_a_secret_is_refused(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    verifier = make_verifier(better_auth_secret=None)
    await assert_refused(verifier, jwt.encode(claims(None), SECRET, algorithm="HS256"))
    await assert_refused(
        verifier, jwt.encode(claims(jwks_server.origin), SECRET, algorithm="HS256")
    )
    assert jwks_server.requests == 0
    assert await verifier.verify(key.sign(claims(jwks_server.origin))) == "alice"


async def test_asymmetric_token_without_a_jwks_is_refused(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    verifier = make_verifier(better_auth_url=None)
    assert verifier.jwks is None
    for kind in ("ed25519", "p256", "p521", "rsa2048"):
        other = new_key(kind)
        await assert_refused(verifier, other.sign(claims(jwks_server.origin)))
    assert jwks_server.requests == 0
    token = jwt.encode(claims(None), SECRET, algorithm="HS256")
    assert await verifier.verify(token) == "alice"


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
    assert await verifier.verify(key.sign(claims(jwks_server.origin))) == "alice"
    refused: list[str] = []
    for name, secret in _public_key_secrets(key).items():
        for header in ({"alg": "HS256", "typ": "JWT", "kid": key.kid}, {"alg": "HS256"}):
            token = forge(header, claims(jwks_server.origin), hmac_signer(secret))
            error = await refusal(verifier, token)
            if type(error) is TokenInvalid:
                refused.append(name)
    assert refused == [name for name in _public_key_secrets(key) for _ in range(2)]
    assert jwks(verifier).fetches == 1


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
        assert await with_secret.verify(token) == "alice"
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
    assert await verifier.verify(key.sign(claims(jwks_server.origin))) == "alice"
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
    assert jwks(verifier).fetches == 1


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
    assert await verifier.verify(key.sign(claims(jwks_server.origin, "ok"))) == "ok"


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
    assert await verifier.verify(rs.sign(claims(jwks_server.origin, "r"))) == "r"
    assert await verifier.verify(ps.sign(claims(jwks_server.origin, "p"))) == "p"


async def test_a_jwk_for_encryption_is_refused(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    enc = new_key("ed25519")
    sig = new_key("ed25519", 1)
    jwks_server.publish(enc.jwk(use="enc"), sig.jwk(use="sig"))
    verifier = make_verifier()
    await assert_refused(verifier, enc.sign(claims(jwks_server.origin)))
    assert await verifier.verify(sig.sign(claims(jwks_server.origin, "s"))) == "s"


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
        assert await verifier.verify(key.sign(claims(jwks_server.origin, key.alg))) == key.alg
    assert jwks(verifier).fetches == 1


async def test_keys_without_a_kid_and_garbage_entries_are_ignored(
    jwks_server: JwksServer, make_verifier: MakeVerifier
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
    assert await verifier.verify(good.sign(claims(jwks_server.origin))) == "alice"
    await assert_refused(verifier, nameless.sign(claims(jwks_server.origin)))
    await assert_refused(verifier, nameless.sign(claims(jwks_server.origin), kid="None"))
    for broken in (broken_okp, broken_ec, broken_rsa):
        await assert_refused(verifier, broken.sign(claims(jwks_server.origin)))
    assert await verifier.verify(good.sign(claims(jwks_server.origin, "again"))) == "again"


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
    assert jwks(verifier).fetches == 0
    assert jwks_server.requests == 0
    # Below the limit the same kind of token is fine.
    large = key.sign(claims(jwks_server.origin, pad="x" * 5500))
    assert 7000 < len(large) <= 8192
    assert await verifier.verify(large) == "alice"


# --- the refetch throttle ----------------------------------------------------------------------


def assert_rate_limited(server: JwksServer, interval: float) -> None:
    """No two JWKS requests closer together than the refetch interval (a little slack for the
    time between the fetch starting and the server reading the request)."""
    gaps = [b - a for a, b in zip(server.times, server.times[1:], strict=False)]
    assert [gap for gap in gaps if gap < interval - 0.05] == [], gaps


async def test_a_flood_of_unknown_kids_right_after_a_fetch_shares_one_fetch(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    verifier = make_verifier(min_refetch=0.5)
    assert await verifier.verify(key.sign(claims(jwks_server.origin))) == "alice"
    tokens = [key.sign(claims(jwks_server.origin), kid=new_kid()) for _ in range(50)]
    started = time.monotonic()
    errors = await asyncio.gather(*(refusal(verifier, t) for t in tokens))
    assert time.monotonic() - started < 0.5 + 1.0
    assert [(type(e), e.code) for e in errors] == [(TokenInvalid, "TOKEN_INVALID")] * 50
    assert jwks(verifier).fetches == 2
    assert jwks_server.requests == 2
    assert_rate_limited(jwks_server, 0.5)


async def test_a_flood_after_the_interval_shares_one_fetch(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    verifier = make_verifier(min_refetch=0.5)
    assert await verifier.verify(key.sign(claims(jwks_server.origin))) == "alice"
    await asyncio.sleep(0.6)
    jwks_server.delay = 0.15  # the requests pile up on one slow fetch
    tokens = [key.sign(claims(jwks_server.origin), kid=new_kid()) for _ in range(50)]
    errors = await asyncio.gather(*(refusal(verifier, t) for t in tokens))
    assert [(type(e), e.code) for e in errors] == [(TokenInvalid, "TOKEN_INVALID")] * 50
    assert jwks(verifier).fetches == 2
    assert jwks_server.requests == 2


async def test_sequential_unknown_kids_fetch_at_most_once_per_interval(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    verifier = make_verifier(min_refetch=0.3)
    assert await verifier.verify(key.sign(claims(jwks_server.origin))) == "alice"
    started = time.monotonic()
    for _ in range(4):
        await assert_refused(verifier, key.sign(claims(jwks_server.origin), kid=new_kid()))
    elapsed = time.monotonic() - started
    assert jwks_server.requests == jwks(verifier).fetches
    assert jwks_server.requests - 1 <= elapsed / 0.3 + 1
    assert_rate_limited(jwks_server, 0.3)
    # A known key in between is never held up by the throttle.
    started = time.monotonic()
    assert await verifier.verify(key.sign(claims(jwks_server.origin, "k"))) == "k"
    assert time.monotonic() - started < 0.1


async def test_a_flood_of_unknown_kids_over_time_is_rate_limited(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    verifier = make_verifier(min_refetch=0.3)
    assert await verifier.verify(key.sign(claims(jwks_server.origin))) == "alice"

    async def attacker() -> None:
        for _ in range(10):
            await assert_refused(verifier, key.sign(claims(jwks_server.origin), kid=new_kid()))
            await asyncio.sleep(0.02)

    started = time.monotonic()
    await asyncio.gather(*(attacker() for _ in range(20)))
    elapsed = time.monotonic() - started
    # 200 made-up kids: at most one fetch per interval, however they are spread.
    assert 1 < jwks_server.requests <= 1 + elapsed / 0.3 + 1
    assert_rate_limited(jwks_server, 0.3)


async def test_concurrent_first_requests_share_one_fetch(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("p256")
    jwks_server.publish(key.jwk())
    jwks_server.delay = 0.3
    verifier = make_verifier()
    tokens = [key.sign(claims(jwks_server.origin, f"user-{i}")) for i in range(20)]
    subs = await asyncio.gather(*(verifier.verify(t) for t in tokens))
    assert subs == [f"user-{i}" for i in range(20)]
    assert jwks(verifier).fetches == 1
    assert jwks_server.requests == 1


async def test_key_rotation(jwks_server: JwksServer, make_verifier: MakeVerifier) -> None:
    old = new_key("ed25519")
    new = new_key("ed25519", 1)
    origin = jwks_server.origin
    jwks_server.publish(old.jwk())
    verifier = make_verifier(min_refetch=0.3)
    assert await verifier.verify(old.sign(claims(origin, "o1"))) == "o1"
    jwks_server.publish(old.jwk(), new.jwk())
    # Even right after a fetch, the freshly published key is accepted (no sooner than the
    # refetch interval allows a new fetch).
    started = time.monotonic()
    assert await verifier.verify(new.sign(claims(origin, "n1"))) == "n1"
    assert time.monotonic() - started < 0.3 + 1.0
    assert jwks_server.requests == 2
    assert_rate_limited(jwks_server, 0.3)
    assert await verifier.verify(old.sign(claims(origin, "o2"))) == "o2"  # both published
    assert await verifier.verify(new.sign(claims(origin, "n2"))) == "n2"
    assert jwks_server.requests == 2
    # The old key is withdrawn: it stops working after the next refresh.
    jwks_server.publish(new.jwk())
    await assert_refused(verifier, new.sign(claims(origin), kid=new_kid()))  # refetches
    assert jwks_server.requests == 3
    await asyncio.sleep(0.4)
    await assert_refused(verifier, old.sign(claims(origin)))
    assert await verifier.verify(new.sign(claims(origin, "n3"))) == "n3"
    assert_rate_limited(jwks_server, 0.3)


async def test_a_withdrawn_key_stops_working_after_the_cache_expires(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    old = new_key("ed25519")
    new = new_key("ed25519", 1)
    origin = jwks_server.origin
    jwks_server.publish(old.jwk())
    verifier = make_verifier(min_refetch=0.3, jwks_cache_seconds=0.3)
    assert await verifier.verify(old.sign(claims(origin))) == "alice"
    jwks_server.publish(new.jwk())
    await asyncio.sleep(0.4)
    # Stale: still served from the cache while the refresh runs in the background.
    assert await verifier.verify(old.sign(claims(origin))) == "alice"
    await eventually(lambda: jwks_server.requests == 2)
    await fetch_settled(verifier)
    await assert_refused(verifier, old.sign(claims(origin)))
    assert await verifier.verify(new.sign(claims(origin, "n"))) == "n"


# --- the cache time ----------------------------------------------------------------------------


async def test_a_stale_key_is_served_while_refreshing_in_the_background(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    verifier = make_verifier(min_refetch=0.3, jwks_cache_seconds=0.3)
    token = key.sign(claims(jwks_server.origin))
    assert await verifier.verify(token) == "alice"
    assert await verifier.verify(token) == "alice"
    assert jwks_server.requests == 1  # fresh: no request
    await asyncio.sleep(0.4)
    jwks_server.delay = 2.0
    started = time.monotonic()
    assert await verifier.verify(token) == "alice"
    assert time.monotonic() - started < 1.0
    await eventually(lambda: jwks_server.requests == 2)
    # While that refresh hangs, the key keeps verifying, and no second refresh starts.
    await asyncio.sleep(0.4)
    started = time.monotonic()
    for _ in range(5):
        assert await verifier.verify(token) == "alice"
    assert time.monotonic() - started < 1.0
    assert jwks_server.requests == 2
    assert jwks(verifier).fetches == 2


async def test_a_refresh_picks_up_a_new_document(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("ed25519")
    added = new_key("p256")
    jwks_server.publish(key.jwk())
    verifier = make_verifier(min_refetch=0.3, jwks_cache_seconds=0.3)
    assert await verifier.verify(key.sign(claims(jwks_server.origin))) == "alice"
    jwks_server.publish(key.jwk(), added.jwk())
    await asyncio.sleep(0.4)
    assert await verifier.verify(key.sign(claims(jwks_server.origin))) == "alice"
    await eventually(lambda: jwks_server.requests == 2)
    await fetch_settled(verifier)
    assert await verifier.verify(added.sign(claims(jwks_server.origin, "a"))) == "a"
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
        server.delay = 5.0
    elif mode == "trickling":
        server.trickle = True
    else:
        raise AssertionError(mode)


def _repair(server: JwksServer) -> None:
    server.status, server.body, server.delay, server.trickle = 200, None, 0.0, False
    if not server.running:
        server.start()


OUTAGES = [
    "stopped",
    "status-500",
    "status-404",
    "invalid-json",
    "html",
    "deeply-nested",
    "not-utf8",
    "hanging",
    "trickling",
]


@pytest.mark.parametrize("mode", OUTAGES)
async def test_an_unreachable_jwks_is_503_for_an_unknown_key(
    jwks_server: JwksServer, make_verifier: MakeVerifier, mode: str
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    _break(jwks_server, mode)
    verifier = make_verifier(timeout=0.5)
    started = time.monotonic()
    error = await refusal(verifier, key.sign(claims(jwks_server.origin)))
    elapsed = time.monotonic() - started
    assert (type(error), error.code, error.status_code) == (
        ServiceUnavailable,
        "SERVICE_UNAVAILABLE",
        503,
    )
    assert error.detail == UNAVAILABLE_DETAIL
    assert elapsed < 0.5 + 1.5
    assert jwks(verifier).fetches == 1


async def test_the_default_fetch_timeout_bounds_a_hanging_jwks(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    jwks_server.delay = 5.0
    verifier = make_verifier()
    started = time.monotonic()
    tokens = [key.sign(claims(jwks_server.origin, f"u{i}")) for i in range(10)]
    errors = await asyncio.gather(*(refusal(verifier, t) for t in tokens))
    assert time.monotonic() - started < 3.0 + 1.5
    assert [type(e) for e in errors] == [ServiceUnavailable] * 10
    assert jwks(verifier).fetches == 1
    assert jwks_server.requests == 1


@pytest.mark.parametrize("mode", ["stopped", "status-500", "invalid-json", "hanging"])
async def test_a_cached_key_survives_an_outage(
    jwks_server: JwksServer, make_verifier: MakeVerifier, mode: str
) -> None:
    old = new_key("ed25519")
    new = new_key("p256")
    origin = jwks_server.origin
    jwks_server.publish(old.jwk())
    verifier = make_verifier(min_refetch=0.3, jwks_cache_seconds=0.3, timeout=0.5)
    assert await verifier.verify(old.sign(claims(origin, "before"))) == "before"
    _break(jwks_server, mode)
    await asyncio.sleep(0.4)  # past the cache time: the next request refreshes
    started = time.monotonic()
    assert await verifier.verify(old.sign(claims(origin, "during"))) == "during"
    assert time.monotonic() - started < 1.0
    await eventually(lambda: jwks(verifier).fetches == 2)  # a refresh, in the background
    await fetch_settled(verifier)  # it has failed
    assert await verifier.verify(old.sign(claims(origin, "after-failure"))) == "after-failure"
    # An unknown key cannot be had: 503 at once (the refetch is throttled)...
    started = time.monotonic()
    await assert_refused(verifier, new.sign(claims(origin)), "SERVICE_UNAVAILABLE")
    assert time.monotonic() - started < 0.5 + 1.5
    # ...and after the interval too, once the new attempt fails.
    await asyncio.sleep(0.4)
    await fetch_settled(verifier)
    started = time.monotonic()
    await assert_refused(verifier, new.sign(claims(origin)), "SERVICE_UNAVAILABLE")
    assert time.monotonic() - started < 0.5 + 1.5
    await fetch_settled(verifier)
    assert await verifier.verify(old.sign(claims(origin, "still"))) == "still"
    # The auth server comes back with a new key: accepted once the interval has passed.
    _repair(jwks_server)
    jwks_server.publish(old.jwk(), new.jwk())
    await asyncio.sleep(0.4)
    await fetch_settled(verifier)
    assert await verifier.verify(new.sign(claims(origin, "new"))) == "new"
    assert await verifier.verify(old.sign(claims(origin, "old"))) == "old"


async def test_after_a_failed_fetch_the_jwks_recovers(
    jwks_server: JwksServer, make_verifier: MakeVerifier
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    jwks_server.stop()
    verifier = make_verifier(min_refetch=0.3, timeout=0.5)
    token = key.sign(claims(jwks_server.origin))
    for _ in range(2):
        started = time.monotonic()
        await assert_refused(verifier, token, "SERVICE_UNAVAILABLE")
        assert time.monotonic() - started < 0.3 + 0.5 + 1.5
    # The second waited out the interval and tried again: one attempt per request here.
    assert jwks(verifier).fetches == 2
    assert_rate_limited(jwks_server, 0.3)
    # The auth server is back: the key is fetched (once the interval allows) and accepted.
    jwks_server.start()
    assert await verifier.verify(token) == "alice"
    assert jwks(verifier).fetches == 3
    assert jwks_server.requests == 1
    # A key that the recovered JWKS does not have is a plain 401 again, not a 503.
    await assert_refused(verifier, new_key("ed25519", 1).sign(claims(jwks_server.origin)))


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
    assert await verifier.verify(key.sign(claims(origin, exp=now - 10))) == "alice"  # leeway
    await assert_refused(verifier, key.sign(claims(origin, nbf=now + 120)))
    assert await verifier.verify(key.sign(claims(origin, nbf=now + 10))) == "alice"
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


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_e2e_eddsa_token_creates_and_lists_tasks(
    database_url: str, jwks_server: JwksServer
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(new_key("p256").jwk(), key.jwk())
    user = f"user-{uuid.uuid4().hex}"
    token = key.sign(claims(jwks_server.origin, user))
    async with running_app(_jwks_settings(database_url, jwks_server)) as (_, http):
        created = await http.post(
            f"/api/{user}/tasks", json={"title": "signed"}, headers=bearer(token)
        )
        assert created.status_code == 201, created.text
        assert (created.json()["title"], created.json()["user_id"]) == ("signed", user)
        listed = await http.get(f"/api/{user}/tasks", headers=bearer(token))
        assert listed.status_code == 200, listed.text
        assert [(t["title"], t["user_id"]) for t in listed.json()] == [("signed", user)]
        other = await http.get(f"/api/{user}-other/tasks", headers=bearer(token))
        assert other.status_code == 403, other.text
        assert other.json()["code"] == "FORBIDDEN"
    assert jwks_server.paths == [JWKS_PATH]


async def test_e2e_unreachable_jwks_is_503(database_url: str, jwks_server: JwksServer) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    jwks_server.stop()
    user = f"user-{uuid.uuid4().hex}"
    async with running_app(_jwks_settings(database_url, jwks_server)) as (_, http):
        token = key.sign(claims(jwks_server.origin, user))
        started = time.monotonic()
        responses = await asyncio.gather(
            http.get(f"/api/{user}/tasks", headers=bearer(token)),
            http.post(f"/api/{user}/tasks", json={"title": "x"}, headers=bearer(token)),
        )
        assert time.monotonic() - started < 3.0 + 1.5
        for response in responses:
            assert response.status_code == 503, response.text
            assert response.json() == {"detail": UNAVAILABLE_DETAIL, "code": "SERVICE_UNAVAILABLE"}
            assert response.headers["retry-after"] == "1"
            assert response.headers["content-type"] == "application/json"
            assert "www-authenticate" not in response.headers


async def test_e2e_refused_asymmetric_tokens_are_401(
    database_url: str, jwks_server: JwksServer
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    user = f"user-{uuid.uuid4().hex}"
    origin, now = jwks_server.origin, int(time.time())
    cases = {  # the unknown kid first: later it would wait out the refetch interval
        "unknown-kid": (key.sign(claims(origin, user), kid=new_kid()), "TOKEN_INVALID"),
        "wrong-aud": (key.sign(claims(origin, user, aud="https://evil.example")), "TOKEN_INVALID"),
        "expired": (key.sign(claims(origin, user, exp=now - 120)), "TOKEN_EXPIRED"),
        "hs256": (jwt.encode(claims(None, user), SECRET, algorithm="HS256"), "TOKEN_INVALID"),
    }
    async with running_app(_jwks_settings(database_url, jwks_server)) as (_, http):
        outcomes = {}
        for name, (token, _) in cases.items():
            response = await http.get(f"/api/{user}/tasks", headers=bearer(token))
            outcomes[name] = (response.status_code, response.json()["code"])
            assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert outcomes == {name: (401, code) for name, (_, code) in cases.items()}


async def test_e2e_alg_that_is_not_a_string_is_401(
    database_url: str, jwks_server: JwksServer
) -> None:
    key = new_key("ed25519")
    jwks_server.publish(key.jwk())
    user = f"user-{uuid.uuid4().hex}"
    token = forge(
        {"alg": ["EdDSA"], "kid": key.kid},
        claims(jwks_server.origin, user),
        signer("EdDSA", key.private),
    )
    async with running_app(_jwks_settings(database_url, jwks_server)) as (_, http):
        response = await http.get(f"/api/{user}/tasks", headers=bearer(token))
    assert (response.status_code, response.json()["code"]) == (401, "TOKEN_INVALID")
