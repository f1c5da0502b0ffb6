"""Authentication: only valid HS256 JWTs get in, every refusal is a 401 with the right code and
`WWW-Authenticate` challenge, and authentication (then the owner check) comes before anything
else the request might get wrong."""

import base64
import hashlib
import hmac
import json
import logging
import random
import re
import secrets
import time
import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.warnings import InsecureKeyLengthWarning

from backend.errors import TokenExpired, TokenInvalid
from backend.middleware.jwt_auth import VERIFIED_TOKEN_SECONDS, VERIFIED_TOKENS_KEPT, TokenVerifier
from tests.fixtures.app import app_client
from tests.fixtures.databases import make_settings
from tests.helpers import SECRET, Auth, assert_error, bearer

Token = Callable[..., str]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
LIST = "/api/alice/tasks"


# --- helpers -----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json_b64(value: Any) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _claims(sub: Any = "alice", **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + 3600, **overrides}
    return {key: value for key, value in claims.items() if value is not None}


def _hand_made(header: dict[str, Any], claims: dict[str, Any], key: bytes, digest: Any) -> str:
    """A compact JWT signed by hand with HMAC (PyJWT refuses some of the keys used here)."""
    signing_input = f"{_json_b64(header)}.{_json_b64(claims)}"
    signature = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{_b64(signature)}"


def _unsigned(alg: str) -> str:
    return f"{_json_b64({'alg': alg, 'typ': 'JWT'})}.{_json_b64(_claims())}."


@cache
def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@cache
def _ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def _rsa_public_pem() -> bytes:
    return (
        _rsa_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _relabelled_rs256() -> str:
    """An RS256 token whose header was rewritten to claim HS256."""
    signed = jwt.encode(_claims(), _rsa_key(), algorithm="RS256")
    _, payload, signature = signed.split(".")
    return f"{_json_b64({'alg': 'HS256', 'typ': 'JWT'})}.{payload}.{signature}"


def _challenge(value: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = value.partition(" ")
    return scheme, dict(re.findall(r'(\w+)="([^"]*)"', rest))


def assert_auth_required(response: httpx.Response) -> dict[str, Any]:
    body = assert_error(response, 401, "AUTH_REQUIRED")
    assert response.headers["www-authenticate"] == "Bearer"
    return body


def assert_refused(response: httpx.Response, code: str = "TOKEN_INVALID") -> dict[str, Any]:
    body = assert_error(response, 401, code)
    scheme, params = _challenge(response.headers["www-authenticate"])
    assert scheme == "Bearer"
    assert params["error"] == "invalid_token"
    return body


# --- accepted tokens ---------------------------------------------------------------------------


async def test_valid_token_lists_the_users_tasks(client: httpx.AsyncClient, auth: Auth) -> None:
    created = await client.post(LIST, json={"title": "mine"}, headers=auth("alice"))
    assert created.status_code == 201, created.text
    response = await client.get(LIST, headers=auth("alice"))
    assert response.status_code == 200, response.text
    assert [task["title"] for task in response.json()] == ["mine"]
    assert "www-authenticate" not in response.headers


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_bearer_scheme_is_case_insensitive(
    client: httpx.AsyncClient, token: Token, scheme: str
) -> None:
    response = await client.get(LIST, headers={"Authorization": f"{scheme} {token('alice')}"})
    assert response.status_code == 200, response.text
    assert response.json() == []


@pytest.mark.parametrize(
    "sub", ["u" * 255, "kX9f2Zq-_.~", "üser-用户-🙂"], ids=["255-chars", "url-safe", "unicode"]
)
async def test_any_sane_user_id_string_is_accepted(
    client: httpx.AsyncClient, auth: Auth, sub: str
) -> None:
    created = await client.post(f"/api/{sub}/tasks", json={"title": "t"}, headers=auth(sub))
    assert created.status_code == 201, created.text
    assert created.json()["user_id"] == sub
    response = await client.get(f"/api/{sub}/tasks", headers=auth(sub))
    assert response.status_code == 200, response.text
    assert [task["user_id"] for task in response.json()] == [sub]


async def test_expired_within_the_leeway_is_still_accepted(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    # The default leeway is 30 s: expired for sure, accepted for 29 s more.
    response = await client.get(LIST, headers=auth("alice", exp=int(time.time()) - 1))
    assert response.status_code == 200, response.text
    assert response.json() == []


async def test_nbf_within_the_leeway_or_in_the_past_is_accepted(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    now = int(time.time())
    for nbf in (now - 60, now, now + 10):
        response = await client.get(LIST, headers=auth("alice", nbf=nbf))
        assert response.status_code == 200, (nbf, response.text)


async def test_an_unconfigured_audience_is_not_checked(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    for aud in ("https://some-frontend.example", ["a", "b"]):
        response = await client.get(LIST, headers=auth("alice", aud=aud, iss="anyone"))
        assert response.status_code == 200, (aud, response.text)


# --- refused tokens ----------------------------------------------------------------------------


async def test_no_authorization_header(client: httpx.AsyncClient) -> None:
    assert_auth_required(await client.get(LIST))


ACCEPTED = "(accepted: HS256, EdDSA, ES256, ES512, PS256, RS256)"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_is_refused(client: httpx.AsyncClient, alg: str) -> None:
    body = assert_refused(await client.get(LIST, headers=bearer(_unsigned(alg))))
    assert body["detail"] == f'The token\'s signing algorithm "{alg}" is not accepted {ACCEPTED}'


async def test_alg_none_with_a_valid_hs256_signature_is_refused(client: httpx.AsyncClient) -> None:
    token = _hand_made({"alg": "none", "typ": "JWT"}, _claims(), SECRET.encode(), hashlib.sha256)
    assert_refused(await client.get(LIST, headers=bearer(token)))


@pytest.mark.parametrize(("alg", "digest"), [("HS384", hashlib.sha384), ("HS512", hashlib.sha512)])
async def test_other_hmac_algorithms_with_the_right_secret_are_refused(
    client: httpx.AsyncClient, alg: str, digest: Any
) -> None:
    token = _hand_made({"alg": alg, "typ": "JWT"}, _claims(), SECRET.encode(), digest)
    # The same claims and secret would be accepted as HS256: only the algorithm is wrong.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)  # 52 bytes < 64 for SHA512
        assert jwt.decode(token, SECRET, algorithms=[alg])["sub"] == "alice"
    body = assert_refused(await client.get(LIST, headers=bearer(token)))
    assert body["detail"] == f'The token\'s signing algorithm "{alg}" is not accepted {ACCEPTED}'


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_asymmetric_tokens_are_refused(client: httpx.AsyncClient, alg: str) -> None:
    keys: dict[str, Callable[[], PrivateKey]] = {
        "RS256": _rsa_key,
        "ES256": _ec_key,
        "EdDSA": _ed_key,
    }
    key = keys[alg]()
    token = jwt.encode(_claims(), key, algorithm=alg, headers={"kid": "some-key"})
    body = assert_refused(await client.get(LIST, headers=bearer(token)))
    # This service has BETTER_AUTH_SECRET only: the developer learns what to configure.
    assert body["detail"] == (
        f"The token is signed with {alg}, which needs Better Auth's JWKS on the server: "
        "set BETTER_AUTH_URL (or JWT_JWKS_URL)"
    )


CONFUSIONS: list[Any] = [
    pytest.param(
        lambda: _hand_made(
            {"alg": "HS256", "typ": "JWT"}, _claims(), _rsa_public_pem(), hashlib.sha256
        ),
        id="hs256-keyed-with-an-rsa-public-key",
    ),
    pytest.param(_relabelled_rs256, id="rs256-signature-relabelled-hs256"),
    pytest.param(
        lambda: _hand_made({"alg": "hs256"}, _claims(), SECRET.encode(), hashlib.sha256),
        id="lowercase-alg",
    ),
    pytest.param(
        lambda: _hand_made({"alg": ["HS256"]}, _claims(), SECRET.encode(), hashlib.sha256),
        id="alg-as-a-list",
    ),
    pytest.param(
        lambda: _hand_made({"typ": "JWT"}, _claims(), SECRET.encode(), hashlib.sha256),
        id="no-alg",
    ),
    pytest.param(
        lambda: _hand_made(
            {"alg": "HS256", "jwk": {"kty": "oct", "k": _b64(b"attacker-key" * 4)}},
            _claims(),
            b"attacker-key" * 4,
            hashlib.sha256,
        ),
        id="embedded-jwk",
    ),
]


@pytest.mark.parametrize("make", CONFUSIONS)
async def test_algorithm_confusion_is_refused(
    client: httpx.AsyncClient, make: Callable[[], str]
) -> None:
    assert_refused(await client.get(LIST, headers=bearer(make())))


WRONG_SECRET = (
    "The bearer token's signature does not verify with BETTER_AUTH_SECRET: sign it with the "
    "same secret as this service's BETTER_AUTH_SECRET (Better Auth's, as text)"
)


async def test_wrong_secret(client: httpx.AsyncClient, token: Token) -> None:
    forged = token("alice", secret="another-secret-that-is-also-long-enough-0123")
    body = assert_refused(await client.get(LIST, headers=bearer(forged)))
    assert body["detail"] == WRONG_SECRET


async def test_a_token_not_signed_with_the_development_secret_says_where_it_lives(
    database_url: str, token: Token, tmp_path: Path
) -> None:
    # A token made with another folder's development secret got only "does not verify".
    settings = make_settings(database_url, better_auth_secret=None, data_dir=tmp_path / "data")
    async with app_client(settings) as http:
        body = assert_refused(await http.get(LIST, headers=bearer(token("alice"))))
    secret_file = (tmp_path / "data" / "dev-secret").resolve()
    assert body["detail"] == (
        "The bearer token's signature does not verify with this service's development secret "
        f"(in {secret_file}, made when the service first started there): sign with it "
        "(`taskapi token`, run where the service runs, or DATA_DIR set to that folder), or set "
        "the same BETTER_AUTH_SECRET for Better Auth and this service"
    )


async def test_tampered_payload(client: httpx.AsyncClient, token: Token) -> None:
    header, _, signature = token("alice").split(".")
    forged = f"{header}.{_json_b64(_claims('bob'))}.{signature}"
    assert_refused(await client.get("/api/bob/tasks", headers=bearer(forged)))


async def test_expired(client: httpx.AsyncClient, auth: Auth) -> None:
    response = await client.get(LIST, headers=auth("alice", exp=int(time.time()) - 120))
    body = assert_refused(response, "TOKEN_EXPIRED")
    assert body["detail"] == "The bearer token has expired"


async def test_nbf_in_the_future_beyond_the_leeway(client: httpx.AsyncClient, auth: Auth) -> None:
    response = await client.get(LIST, headers=auth("alice", nbf=int(time.time()) + 600))
    body = assert_refused(response)
    assert body["detail"] == "The bearer token is not valid yet (its nbf is in the future)"


NUMBER = "must be a number (seconds since 1970-01-01 UTC), not"
CONTROL = "The token's sub claim contains a control character"


@pytest.mark.parametrize(
    ("claims", "detail"),
    [
        pytest.param({"exp": None}, "The token has no exp claim: it must say when it expires"),
        pytest.param({"exp": "tomorrow"}, f"The token's exp claim {NUMBER} a string"),
        # PyJWT reads these with int(): a numeric string or a boolean would pass as a time.
        pytest.param({"exp": "4102444800"}, f"The token's exp claim {NUMBER} a string"),
        pytest.param({"exp": True}, f"The token's exp claim {NUMBER} a boolean"),
        pytest.param({"exp": [4102444800]}, f"The token's exp claim {NUMBER} an array"),
        pytest.param({"nbf": "0"}, f"The token's nbf claim {NUMBER} a string"),
        pytest.param({"nbf": {}}, f"The token's nbf claim {NUMBER} an object"),
        pytest.param({"iat": "1700000000"}, f"The token's iat claim {NUMBER} a string"),
        pytest.param({"sub": None}, "The token has no sub claim: it must name the user (their id)"),
        pytest.param(
            {"sub": 123}, "The token's sub claim must be a string (the user id), not a number"
        ),
        pytest.param(
            {"sub": ["alice"]}, "The token's sub claim must be a string (the user id), not an array"
        ),
        pytest.param(
            {"sub": {"id": "alice"}},
            "The token's sub claim must be a string (the user id), not an object",
        ),
        pytest.param(
            {"sub": True}, "The token's sub claim must be a string (the user id), not a boolean"
        ),
        pytest.param({"sub": ""}, "The token's sub claim is empty"),
        pytest.param({"sub": "u" * 256}, "The token's sub claim is longer than 255 characters"),
        pytest.param({"sub": "alice\x00"}, CONTROL, id="nul-in-sub"),
        pytest.param({"sub": "ali\nce"}, CONTROL, id="newline-in-sub"),
        pytest.param({"sub": "alice\x1f"}, CONTROL, id="unit-separator-in-sub"),
        pytest.param({"sub": "alice\x7f"}, CONTROL, id="del-in-sub"),
        pytest.param({"sub": "alice\x85"}, CONTROL, id="c1-next-line-in-sub"),
        pytest.param({"sub": "\x9falice"}, CONTROL, id="c1-last-in-sub"),
    ],
)
async def test_bad_claims_are_refused_naming_the_claim(
    client: httpx.AsyncClient, claims: dict[str, Any], detail: str
) -> None:
    token = jwt.encode(_claims(**claims), SECRET, algorithm="HS256")
    body = assert_refused(await client.get(LIST, headers=bearer(token)))
    assert body["detail"] == detail


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=["Infinity", "NaN"])
async def test_times_that_are_not_finite_are_refused(
    client: httpx.AsyncClient, name: str, value: float
) -> None:
    # Python's JSON reader accepts the literals Infinity and NaN; they are no time.
    claims = _claims(**{name: value})
    token = _hand_made({"alg": "HS256"}, claims, SECRET.encode(), hashlib.sha256)
    body = assert_refused(await client.get(LIST, headers=bearer(token)))
    assert body["detail"] == f"The token's {name} claim {NUMBER} {json.dumps(value)}"


async def test_times_far_beyond_a_float_are_numbers(client: httpx.AsyncClient) -> None:
    # A JSON integer of 4000 digits is a number (and a time that never comes): never a 500.
    for claims, status in (({"exp": 10**3999}, 200), ({"nbf": 10**3999}, 401)):
        token = _hand_made({"alg": "HS256"}, _claims(**claims), SECRET.encode(), hashlib.sha256)
        response = await client.get(LIST, headers=bearer(token))
        assert response.status_code == status, response.text


async def test_fractional_times_are_accepted(client: httpx.AsyncClient, auth: Auth) -> None:
    now = time.time()
    response = await client.get(LIST, headers=auth("alice", iat=now, nbf=now, exp=now + 600.5))
    assert response.status_code == 200, response.text


async def test_iat_in_the_future_is_refused_naming_iat(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    # Within the leeway (30 s) it is only clock skew; beyond it, the auth server's clock is so
    # far ahead that its tokens would live longer here than it meant.
    response = await client.get(LIST, headers=auth("alice", iat=int(time.time()) + 5))
    assert response.status_code == 200, response.text
    response = await client.get(LIST, headers=auth("alice", iat=int(time.time()) + 600))
    body = assert_refused(response)
    assert body["detail"] == (
        "The token's iat (issued at) is in the future: the clocks of the auth server and of "
        "this service disagree"
    )


RANDOM_BYTES = bytes(
    b for b in random.Random(6750).randbytes(256) if b not in b"\r\n\x00" and b > 0x20
)[:64]


@pytest.mark.parametrize(
    "value",
    [
        "abc.def.ghi",
        "..",
        "a.b.c.d",
        "eyJhbGciOiJIUzI1NiJ9..",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9",
        f"{_b64(b'[1,2]')}.{_b64(b'{}')}.{_b64(b'sig')}",
        f"{_b64(b'not json')}.{_b64(b'{}')}.{_b64(b'sig')}",
        "é.é.é",
        "not-a-jwt",
    ],
)
async def test_malformed_tokens(client: httpx.AsyncClient, value: str) -> None:
    header = {b"Authorization": b"Bearer " + value.encode()}
    assert_refused(await client.get(LIST, headers=header))


async def test_random_bytes_as_token(client: httpx.AsyncClient) -> None:
    assert len(RANDOM_BYTES) == 64
    response = await client.get(LIST, headers={b"Authorization": b"Bearer " + RANDOM_BYTES})
    assert_refused(response)


async def test_signed_payload_that_is_not_an_object(client: httpx.AsyncClient) -> None:
    header = _json_b64({"alg": "HS256", "typ": "JWT"})
    signing_input = f"{header}.{_json_b64(['sub', 'alice'])}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{_b64(signature)}"
    assert_refused(await client.get(LIST, headers=bearer(token)))


@pytest.mark.parametrize(
    "session_token",
    [
        pytest.param(secrets.token_urlsafe(24), id="session-token"),
        # The value of the `better-auth.session_token` cookie: the token and its HMAC.
        pytest.param(f"{secrets.token_urlsafe(24)}.{_b64(secrets.token_bytes(32))}", id="cookie"),
    ],
)
async def test_better_auth_session_token_is_explained(
    client: httpx.AsyncClient, session_token: str
) -> None:
    assert len(session_token.split(".")[0]) == 32
    body = assert_refused(await client.get(LIST, headers=bearer(session_token)))
    assert "/api/auth/token" in body["detail"]


@pytest.mark.parametrize(
    "value",
    ["Basic dXNlcjpwYXNzd29yZA==", "Token {token}", "JWT {token}", "{token}", "Bearer{token}"],
)
async def test_wrong_scheme(client: httpx.AsyncClient, token: Token, value: str) -> None:
    header = {"Authorization": value.format(token=token("alice"))}
    assert_auth_required(await client.get(LIST, headers=header))


@pytest.mark.parametrize("value", ["Bearer ", "Bearer    ", "Bearer"])
async def test_empty_bearer(client: httpx.AsyncClient, value: str) -> None:
    assert_refused(await client.get(LIST, headers={"Authorization": value}))


@pytest.mark.parametrize("parameter", ["token", "access_token"])
async def test_token_in_the_query_string_is_ignored(
    client: httpx.AsyncClient, token: Token, parameter: str
) -> None:
    response = await client.get(LIST, params={parameter: token("alice")})
    assert_auth_required(response)


async def test_token_in_a_form_body_is_ignored(client: httpx.AsyncClient, token: Token) -> None:
    response = await client.post(LIST, data={"access_token": token("alice"), "title": "x"})
    assert_auth_required(response)


@pytest.mark.parametrize("padding", [8 * 1024, 64 * 1024])
async def test_oversized_token(client: httpx.AsyncClient, token: Token, padding: int) -> None:
    big = token("alice", pad="x" * padding)
    assert len(big) > 8 * 1024
    assert jwt.decode(big, SECRET, algorithms=["HS256"])["sub"] == "alice"  # valid but huge
    assert_refused(await client.get(LIST, headers=bearer(big)))


async def test_oversized_garbage_token(client: httpx.AsyncClient) -> None:
    assert_refused(await client.get(LIST, headers=bearer("a." * 50_000 + "a")))


# --- leeway, issuer and audience from the settings ---------------------------------------------


async def test_leeway_comes_from_the_settings(database_url: str, auth: Auth) -> None:
    # Every token is made just before its request; the accepted ones are 30 s or more inside
    # their bound, the refused ones are past it for good.
    async with app_client(make_settings(database_url, jwt_leeway_seconds=0)) as http:
        expired = auth("alice", exp=int(time.time()))
        assert_refused(await http.get(LIST, headers=expired), "TOKEN_EXPIRED")
        assert_refused(await http.get(LIST, headers=auth("alice", nbf=int(time.time()) + 600)))
    async with app_client(make_settings(database_url, jwt_leeway_seconds=60)) as http:
        expired = auth("leeway-60", exp=int(time.time()) - 30)  # refused by the default 30 s
        response = await http.get("/api/leeway-60/tasks", headers=expired)
        assert response.status_code == 200, response.text
        assert response.json() == []
        expired = auth("alice", exp=int(time.time()) - 120)
        assert_refused(await http.get(LIST, headers=expired), "TOKEN_EXPIRED")


ISSUER = "https://auth.example.com"
AUDIENCE = "https://api.example.com"
BOTH = {"jwt_issuer": ISSUER, "jwt_audience": AUDIENCE}
NO_ISS = f'The token has no iss claim; this service expects "{ISSUER}" (from JWT_ISSUER)'
NO_AUD = f'The token has no aud claim; this service expects "{AUDIENCE}" (from JWT_AUDIENCE)'


def _wrong(name: str, received: str, expected: str, setting: str) -> str:
    return (
        f'The token\'s {name} is {received} but this service expects "{expected}" (from {setting})'
    )


@pytest.mark.parametrize(
    ("config", "claims", "refusal"),
    [
        ({"jwt_issuer": ISSUER}, {}, NO_ISS),
        (
            {"jwt_issuer": ISSUER},
            {"iss": "https://evil.example.com"},
            _wrong("iss", '"https://evil.example.com"', ISSUER, "JWT_ISSUER"),
        ),
        (
            {"jwt_issuer": ISSUER},
            {"iss": ISSUER + "/"},
            _wrong("iss", f'"{ISSUER}/"', ISSUER, "JWT_ISSUER"),
        ),
        ({"jwt_issuer": ISSUER}, {"iss": ISSUER}, None),
        ({"jwt_issuer": ISSUER}, {"iss": ISSUER, "aud": "anything"}, None),
        ({"jwt_audience": AUDIENCE}, {}, NO_AUD),
        (
            {"jwt_audience": AUDIENCE},
            {"aud": "https://other.example.com"},
            _wrong("aud", '"https://other.example.com"', AUDIENCE, "JWT_AUDIENCE"),
        ),
        (
            {"jwt_audience": AUDIENCE},
            {"aud": ["https://other.example.com"]},
            _wrong("aud", '["https://other.example.com"]', AUDIENCE, "JWT_AUDIENCE"),
        ),
        ({"jwt_audience": AUDIENCE}, {"aud": AUDIENCE}, None),
        ({"jwt_audience": AUDIENCE}, {"aud": ["https://other.example.com", AUDIENCE]}, None),
        (BOTH, {"iss": ISSUER}, NO_AUD),
        (BOTH, {"aud": AUDIENCE}, NO_ISS),
        (BOTH, {"iss": ISSUER, "aud": "x"}, _wrong("aud", '"x"', AUDIENCE, "JWT_AUDIENCE")),
        (BOTH, {"iss": "x", "aud": AUDIENCE}, _wrong("iss", '"x"', ISSUER, "JWT_ISSUER")),
        (BOTH, {"iss": ISSUER, "aud": AUDIENCE}, None),
    ],
)
async def test_issuer_and_audience_when_configured(
    database_url: str,
    auth: Auth,
    config: dict[str, str],
    claims: dict[str, Any],
    refusal: str | None,
) -> None:
    async with app_client(make_settings(database_url, **config)) as http:
        response = await http.get("/api/iss-aud/tasks", headers=auth("iss-aud", **claims))
    if refusal is None:
        assert response.status_code == 200, response.text
        assert response.json() == []
    else:
        assert assert_refused(response)["detail"] == refusal


async def test_a_hostile_issuer_is_quoted_back_short_and_escaped(
    database_url: str, token: Token
) -> None:
    hostile = "https://evil.example/\u202e\x85\r\nINFO forged log line" + "x" * 5000
    async with app_client(make_settings(database_url, jwt_issuer=ISSUER)) as http:
        response = await http.get(LIST, headers=bearer(token("alice", iss=hostile)))
    shown = '"https://evil.example/\\u202e\\x85\\r\\nINFO forged log line' + "x" * 43 + "…"
    assert len(shown) == 100
    assert assert_refused(response)["detail"] == _wrong("iss", shown, ISSUER, "JWT_ISSUER")


# --- every refusal is logged with its route and reason, never the token, the path or a user ----


async def test_refusals_are_logged_at_info_without_the_token(
    client: httpx.AsyncClient, token: Token, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    tokens = {
        "no-exp": token("alice", exp=None),
        "expired": token("alice", exp=int(time.time()) - 3600),
        "wrong-secret": token("alice", secret="another-secret-that-is-also-long-enough-0123"),
        "bob": token("bob"),
    }
    requests: list[tuple[dict[str, str], str]] = [
        ({}, "401 AUTH_REQUIRED: Authentication required: send Authorization: Bearer <JWT>"),
        (
            {"Authorization": f"Basic {tokens['bob']}"},
            "401 AUTH_REQUIRED: Use the Bearer scheme: Authorization: Bearer <JWT>",
        ),
        (
            bearer(tokens["no-exp"]),
            "401 TOKEN_INVALID: The token has no exp claim: it must say when it expires",
        ),
        (bearer(tokens["expired"]), "401 TOKEN_EXPIRED: The bearer token has expired"),
        (
            bearer(tokens["wrong-secret"]),
            f"401 TOKEN_INVALID: {WRONG_SECRET}",
        ),
        (bearer(tokens["bob"]), "403 FORBIDDEN: the token's sub is not the path's user"),
    ]
    for headers, reason in requests:
        caplog.clear()
        response = await client.get(LIST, headers=headers)
        assert response.status_code == int(reason[:3]), response.text
        logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "backend.auth"]
        assert logged == [(logging.INFO, f"GET /api/{{user_id}}/tasks refused: {reason}")]
    everything = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    for value in (*tokens.values(), SECRET):
        assert value not in everything


async def test_a_hostile_path_cannot_forge_a_log_line(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="backend.auth")
    response = await client.get("/api/%0AINFO%20forged%1B[31m%e2%80%ae/tasks")
    assert_auth_required(response)
    [record] = [r for r in caplog.records if r.name == "backend.auth"]
    # The route's template, not the path: nothing the client sent reaches the line.
    assert record.getMessage() == (
        "GET /api/{user_id}/tasks refused: 401 AUTH_REQUIRED: "
        "Authentication required: send Authorization: Bearer <JWT>"
    )


# --- authentication comes first, then the owner check ------------------------------------------

BAD_REQUESTS: list[Any] = [
    pytest.param("POST", "/tasks", {"content": b'{"title": "a"', "json": True}, id="malformed"),
    pytest.param("POST", "/tasks", {"content": b'{"title": "\xff"}', "json": True}, id="bad-utf8"),
    pytest.param("POST", "/tasks", {"content": b"title=a", "type": "text/plain"}, id="text-plain"),
    pytest.param(
        "POST",
        "/tasks",
        {"content": b"title=a", "type": "application/x-www-form-urlencoded"},
        id="form",
    ),
    pytest.param("POST", "/tasks", {"content": b'{"title": ""}', "json": True}, id="empty-title"),
    pytest.param("POST", "/tasks", {"content": b"[]", "json": True}, id="not-an-object"),
    pytest.param("POST", "/tasks", {"content": b"x" * (2 * 1024 * 1024)}, id="2-MiB"),
    pytest.param("GET", "/tasks?limit=0", {}, id="bad-query"),
    pytest.param("GET", "/tasks/abc", {}, id="task-id-abc"),
    pytest.param("GET", "/tasks/0", {}, id="task-id-0"),
    pytest.param("GET", f"/tasks/{2**70}", {}, id="task-id-huge"),
    pytest.param("GET", "/tasks/987654321", {}, id="no-such-task"),
    pytest.param(
        "PUT", "/tasks/987654321", {"content": b'{"title": "a"}', "json": True}, id="partial-put"
    ),
    pytest.param("PATCH", "/tasks/abc", {"content": b'{"title": 1}', "json": True}, id="patch"),
    pytest.param("PATCH", "/tasks/987654321/complete", {}, id="complete-no-such-task"),
    pytest.param("DELETE", "/tasks/987654321", {}, id="delete-no-such-task"),
]


def _request_args(spec: dict[str, Any]) -> dict[str, Any]:
    headers: dict[str, str] = {}
    if spec.get("json"):
        headers["Content-Type"] = "application/json"
    if "type" in spec:
        headers["Content-Type"] = spec["type"]
    args: dict[str, Any] = {"headers": headers}
    if "content" in spec:
        args["content"] = spec["content"]
    return args


@pytest.mark.parametrize(("method", "path", "spec"), BAD_REQUESTS)
async def test_unauthenticated_requests_are_401_whatever_else_is_wrong(
    client: httpx.AsyncClient, token: Token, method: str, path: str, spec: dict[str, Any]
) -> None:
    args = _request_args(spec)
    response = await client.request(method, "/api/alice" + path, **args)
    assert_auth_required(response)

    args["headers"] |= bearer(token("alice", secret="a-wrong-secret-but-long-enough-0123456789"))
    response = await client.request(method, "/api/alice" + path, **args)
    assert_refused(response)

    args["headers"] |= bearer(token("alice", exp=int(time.time()) - 3600))
    response = await client.request(method, "/api/alice" + path, **args)
    assert_refused(response, "TOKEN_EXPIRED")


@pytest.mark.parametrize(("method", "path", "spec"), BAD_REQUESTS)
async def test_another_users_path_is_403_whatever_else_is_wrong(
    client: httpx.AsyncClient, auth: Auth, method: str, path: str, spec: dict[str, Any]
) -> None:
    args = _request_args(spec)
    args["headers"] |= auth("alice")
    response = await client.request(method, "/api/bob" + path, **args)
    assert_error(response, 403, "FORBIDDEN")
    assert "www-authenticate" not in response.headers


@pytest.mark.parametrize("path_user", ["bob", "Alice", "alice ", "alic", "alice2"])
async def test_path_user_must_equal_sub(
    client: httpx.AsyncClient, auth: Auth, path_user: str
) -> None:
    response = await client.post(
        f"/api/{path_user}/tasks", json={"title": "not yours"}, headers=auth("alice")
    )
    assert_error(response, 403, "FORBIDDEN")
    response = await client.get(f"/api/{path_user}/tasks", headers=auth(path_user))
    assert response.status_code == 200, response.text
    assert response.json() == []  # nothing was written for the path's user


async def test_another_users_existing_task_is_403_not_touched(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    created = await client.post("/api/bob/tasks", json={"title": "bob's"}, headers=auth("bob"))
    assert created.status_code == 201, created.text
    task = f"/api/bob/tasks/{created.json()['id']}"
    for method, body in (
        ("GET", None),
        ("PUT", {"title": "x", "description": None, "completed": True}),
        ("PATCH", {"title": "x"}),
        ("DELETE", None),
    ):
        response = await client.request(method, task, json=body, headers=auth("alice"))
        assert_error(response, 403, "FORBIDDEN")
    response = await client.patch(f"{task}/complete", headers=auth("alice"))
    assert_error(response, 403, "FORBIDDEN")
    response = await client.get(task, headers=auth("bob"))
    assert response.status_code == 200, response.text
    assert response.json() == created.json()


# --- Verified tokens are remembered, never beyond their validity ------------------------------


class WallClock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_a_remembered_token_still_expires_on_time() -> None:
    clock = WallClock()
    settings = make_settings("sqlite:///unused.db", jwt_leeway_seconds=30)
    verifier = TokenVerifier(settings, wall_clock=clock)
    exp = int(clock.now) + 20
    token = jwt.encode({"sub": "alice", "exp": exp}, SECRET, algorithm="HS256")
    assert await verifier.verify(token) == "alice"
    clock.now = exp + 29  # within the leeway: still accepted, from memory or not
    assert await verifier.verify(token) == "alice"
    clock.now = exp + 30
    with pytest.raises(TokenExpired):
        await verifier.verify(token)


async def test_a_refused_token_is_refused_every_time() -> None:
    verifier = TokenVerifier(make_settings("sqlite:///unused.db"), wall_clock=WallClock())
    forged = jwt.encode({"sub": "alice", "exp": 2_000_000_000}, "x" * 32, algorithm="HS256")
    for _ in range(3):
        with pytest.raises(TokenInvalid, match="signature"):
            await verifier.verify(forged)


async def test_the_memory_of_verified_tokens_is_bounded() -> None:
    clock = WallClock()
    verifier = TokenVerifier(make_settings("sqlite:///unused.db"), wall_clock=clock)
    first = jwt.encode({"sub": "user-0", "exp": 2_000_000_000}, SECRET, algorithm="HS256")
    assert await verifier.verify(first) == "user-0"
    for n in range(1, VERIFIED_TOKENS_KEPT + 10):
        token = jwt.encode({"sub": f"user-{n}", "exp": 2_000_000_000}, SECRET, algorithm="HS256")
        assert await verifier.verify(token) == f"user-{n}"
    assert len(verifier._verified) == VERIFIED_TOKENS_KEPT
    assert (first, None) not in verifier._verified  # the least recently used went first
    assert await verifier.verify(first) == "user-0"  # and is simply verified again


async def test_an_enormous_exp_is_remembered_for_a_minute_only() -> None:
    clock = WallClock()
    verifier = TokenVerifier(make_settings("sqlite:///unused.db"), wall_clock=clock)
    token = jwt.encode({"sub": "alice", "exp": 10**400}, SECRET, algorithm="HS256")
    assert await verifier.verify(token) == "alice"
    assert verifier._verified[token, None].until == clock.now + VERIFIED_TOKEN_SECONDS
