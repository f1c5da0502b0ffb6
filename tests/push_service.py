"""A push service stand-in for the tests: HTTPS on loopback (a certificate from a CA of the test's
own), which does what a browser vendor's push service and the browser do together: it verifies
the VAPID token of each message (ES256, signed by the key it names, for its own origin, not
expired) and decrypts the message with the subscription's private key, as the browser would.
So a test fails if the encryption or the signature is wrong. A path may be told to answer a
status, a few times or always."""

import asyncio
import base64
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import http_ece
import jwt
import orjson
import trustme
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.types import Receive, Scope, Send


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class BrowserKeys:
    """A browser's side of a subscription: the key pair and secret its PushSubscription holds."""

    private: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    auth: bytes = field(default_factory=lambda: os.urandom(16))

    @property
    def p256dh(self) -> str:
        public = self.private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return b64(public)


@dataclass
class Delivery:
    path: str
    message: dict[str, Any]
    subject: str


@dataclass
class PushService:
    origin: str  # https://127.0.0.1:<port>
    ca_file: Path
    keys: dict[str, BrowserKeys] = field(default_factory=dict)  # by path
    deliveries: list[Delivery] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # why each bad message was refused
    hits: list[str] = field(default_factory=list)  # every request's path
    # path -> statuses to answer, first first (the last repeats): [503, 201], [410], [307]
    script: dict[str, list[int]] = field(default_factory=dict)

    def subscription(self, path: str) -> dict[str, Any]:
        """A new browser subscription on this service, as PushSubscription.toJSON() has it."""
        keys = self.keys[path] = BrowserKeys()
        return {
            "endpoint": f"{self.origin}{path}",
            "keys": {"p256dh": keys.p256dh, "auth": b64(keys.auth)},
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        self.hits.append(path)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status = self._status(path)
        if status == 201:
            problem = self._check(path, dict(scope["headers"]), body)
            if problem is not None:
                self.refused.append(problem)
                status = 400
        headers = [(b"content-length", b"0")]
        if 300 <= status < 400:
            headers.append((b"location", f"{self.origin}/redirected".encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    def _status(self, path: str) -> int:
        statuses = self.script.get(path)
        if not statuses:
            return 201
        return statuses.pop(0) if len(statuses) > 1 else statuses[0]

    def _check(self, path: str, headers: dict[bytes, bytes], body: bytes) -> str | None:
        keys = self.keys.get(path)
        if keys is None:
            return "no such subscription"
        if headers.get(b"content-encoding") != b"aes128gcm":
            return "not aes128gcm"
        vapid = headers.get(b"authorization", b"").decode()
        if not vapid.startswith("vapid "):
            return "no VAPID authorization"
        fields = dict(part.strip().split("=", 1) for part in vapid[6:].split(","))
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64(fields["k"]))
        try:
            claims = jwt.decode(fields["t"], public, algorithms=["ES256"], audience=self.origin)
        except jwt.PyJWTError as error:
            return f"VAPID token: {error}"
        if claims["exp"] > time.time() + 24 * 3600:
            return "VAPID token: expires more than 24 hours ahead"
        try:
            plain = http_ece.decrypt(
                body, private_key=keys.private, auth_secret=keys.auth, version="aes128gcm"
            )
        except Exception as error:
            return f"cannot decrypt: {type(error).__name__}"
        self.deliveries.append(Delivery(path, orjson.loads(plain), str(claims.get("sub"))))
        return None


@asynccontextmanager
async def running_push_service(folder: Path) -> AsyncIterator[PushService]:
    """The stand-in on a free loopback port, for the test's duration."""
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1", "localhost")
    ca_file = folder / "push-ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    cert_file, key_file = folder / "push-cert.pem", folder / "push-key.pem"
    certificate.cert_chain_pems[0].write_to_path(str(cert_file))
    certificate.private_key_pem.write_to_path(str(key_file))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    service = PushService(origin=f"https://127.0.0.1:{port}", ca_file=ca_file)
    config = uvicorn.Config(
        service,
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(cert_file),
        ssl_keyfile=str(key_file),
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 30
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            raise RuntimeError("the push service stand-in did not start")
        await asyncio.sleep(0.02)
    try:
        yield service
    finally:
        server.should_exit = True
        await task
