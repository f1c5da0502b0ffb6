"""Web Push (RFC 8030, 8291, 8292): a small message to a device a user subscribed, without the
service becoming a request forwarder.

- The message is encrypted for the subscription (aes128gcm, RFC 8291: `http_ece`) and signed with
  the service's VAPID key (RFC 8292: `py_vapid`): `{"type": "reminder", "task": {id, title,
  due_at}}`.
- Server-side request forgery is refused: an endpoint must be `https`, on a host that
  PUSH_ENDPOINT_HOSTS allows (a suffix: the browsers' push services by default), and its
  addresses must be public ones — loopback, private, link-local and the like are refused unless
  the host itself is listed (as the tests list their stand-in). The address checked is the one
  connected to (the request goes to that IP, with the host's name for TLS and `Host`), so a name
  that resolves otherwise a moment later changes nothing; redirects are never followed.
- Sending is bounded: a timeout per attempt, a few attempts with backoff on 5xx, 429 and network
  errors (`Retry-After` honoured up to a cap); 404 and 410 say the subscription is gone.
"""

import asyncio
import base64
import ipaddress
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from urllib.parse import urlsplit

import http_ece
import httpx
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

logger = logging.getLogger("backend.push")

VAPID_KEY_FILE = "vapid-private-key.pem"
ATTEMPTS = 3
TIMEOUT_SECONDS = 5.0
RETRY_AFTER_CAP_SECONDS = 30.0
TTL_SECONDS = 24 * 3600  # how long a push service may hold a message for an offline device
VAPID_TOKEN_SECONDS = 12 * 3600  # RFC 8292: at most 24 hours


class Outcome(Enum):
    SENT = "sent"
    GONE = "gone"  # 404/410: the subscription no longer exists; delete it
    FAILED = "failed"  # after the attempts: left for the next reminder
    REFUSED = "refused"  # the endpoint is not one the service sends to


@dataclass(frozen=True)
class Subscription:
    endpoint: str
    p256dh: str  # the browser's public key (base64url, an uncompressed P-256 point)
    auth: str  # the shared authentication secret (base64url, 16 bytes)


def endpoint_problem(endpoint: str, allowed: list[str]) -> str | None:
    """Why an endpoint is not one the service sends to (None when it is): checked when a
    subscription is saved, and again, with its addresses, before each send."""
    parts = urlsplit(endpoint)
    if parts.scheme != "https":
        return "must be an https:// URL"
    host = (parts.hostname or "").lower()
    if not host or parts.username is not None:
        return "must name a host (and no user)"
    try:
        parts.port  # noqa: B018 - a port out of range or not a number raises
    except ValueError:
        return "has a port that is not a number in range"
    if not _allowed_host(host, allowed):
        hosts = ", ".join(allowed)
        return f"is not on a push service this server sends to (PUSH_ENDPOINT_HOSTS: {hosts})"
    return None


def _allowed_host(host: str, allowed: list[str]) -> bool:
    return any(host == entry or host.endswith(f".{entry}") for entry in allowed)


def key_problem(p256dh: str, auth: str) -> str | None:
    """Why a subscription's keys are not a browser's (None when they are)."""
    try:
        public = _unb64(p256dh)
        secret = _unb64(auth)
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public)
    except (ValueError, TypeError):
        return "keys.p256dh: is not a P-256 public key (base64url)"
    if len(secret) != 16:
        return "keys.auth: is not a 16-byte secret (base64url)"
    return None


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class VapidKey:
    """The service's VAPID key pair: VAPID_PRIVATE_KEY (PEM, or the raw 32-byte key in
    base64url), or in development one made and kept in the data folder."""

    def __init__(self, vapid: Vapid02) -> None:
        self._vapid = vapid
        public = vapid.public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        # What a page passes to pushManager.subscribe as its applicationServerKey.
        self.public_key = _b64(public)

    @classmethod
    def from_setting(cls, value: str) -> "VapidKey":
        text = value.strip()
        if text.startswith("-----BEGIN"):
            return cls(Vapid02.from_pem(text.encode()))
        return cls(Vapid02.from_raw(text.encode()))

    @classmethod
    def development(cls, data_dir: Path) -> "VapidKey":
        path = data_dir / VAPID_KEY_FILE
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            vapid = Vapid02()
            vapid.generate_keys()
            partial = path.with_suffix(".tmp")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(vapid.private_pem())
            os.replace(partial, path)
        logger.warning(
            "VAPID_PRIVATE_KEY is not set: Web Push uses the development key in %s. Set "
            "VAPID_PRIVATE_KEY (and VAPID_SUBJECT) in production: subscriptions are bound to "
            "the key they were made with.",
            path,
        )
        return cls(Vapid02.from_file(str(path)))

    def authorization(self, endpoint: str, subject: str, now: float) -> str:
        """The `Authorization: vapid t=…, k=…` header for a push service (RFC 8292)."""
        parts = urlsplit(endpoint)
        claims = {
            "aud": f"{parts.scheme}://{parts.netloc}",
            "exp": int(now) + VAPID_TOKEN_SECONDS,
            "sub": subject,
        }
        headers = self._vapid.sign(claims)
        return str(headers["Authorization"])


def encrypt(subscription: Subscription, message: dict[str, object]) -> bytes:
    """The message as the browser's service worker will read it, encrypted for it alone."""
    sender = ec.generate_private_key(ec.SECP256R1())
    return bytes(
        http_ece.encrypt(
            orjson.dumps(message),
            private_key=sender,
            dh=_unb64(subscription.p256dh),
            auth_secret=_unb64(subscription.auth),
            version="aes128gcm",
        )
    )


Resolve = Callable[[str, int], Awaitable[list[str]]]


async def _resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class PushSender:
    def __init__(
        self,
        *,
        key: VapidKey,
        subject: str,
        allowed_hosts: list[str],
        ca_file: Path | None = None,
        resolve: Resolve = _resolve,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._subject = subject
        self._allowed = allowed_hosts
        self._resolve = resolve
        self._sleep = sleep
        self._clock = clock
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            verify = ssl.create_default_context(cafile=str(ca_file))
        # Redirects are never followed: a push service answers, it does not send us elsewhere.
        self._http = httpx.AsyncClient(
            timeout=TIMEOUT_SECONDS, follow_redirects=False, verify=verify, trust_env=False
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, subscription: Subscription, message: dict[str, object]) -> Outcome:
        problem = endpoint_problem(subscription.endpoint, self._allowed)
        if problem is not None:
            logger.warning("push: refused an endpoint that %s", problem)
            return Outcome.REFUSED
        body = encrypt(subscription, message)
        for attempt in range(1, ATTEMPTS + 1):
            wait = await self._attempt(subscription, body)
            if isinstance(wait, Outcome):
                return wait
            if attempt < ATTEMPTS:
                await self._sleep(wait)
        logger.warning("push: the push service did not take a message after %d attempts", ATTEMPTS)
        return Outcome.FAILED

    async def _attempt(self, subscription: Subscription, body: bytes) -> Outcome | float:
        """One delivery; an Outcome, or the seconds to wait before the next attempt."""
        parts = urlsplit(subscription.endpoint)
        host = (parts.hostname or "").lower()
        port = parts.port or 443
        try:
            addresses = await self._resolve(host, port)
        except OSError:
            return 1.0
        exact = host in self._allowed
        usable = [address for address in addresses if exact or _public(address)]
        if not usable:
            logger.warning("push: refused an endpoint whose host resolves to no public address")
            return Outcome.REFUSED
        address = usable[0]
        target = f"[{address}]" if ":" in address else address
        url = f"https://{target}:{port}{parts.path or '/'}"
        if parts.query:
            url += f"?{parts.query}"
        headers = {
            "Host": parts.netloc.rsplit("@", 1)[-1],
            "Authorization": self._key.authorization(
                subscription.endpoint, self._subject, self._clock()
            ),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "TTL": str(TTL_SECONDS),
            "Urgency": "high",
        }
        try:
            response = await self._http.post(
                url, content=body, headers=headers, extensions={"sni_hostname": host}
            )
        except httpx.HTTPError as error:
            logger.info("push: attempt failed (%s)", type(error).__name__)
            return 1.0
        status = response.status_code
        if 200 <= status < 300:
            return Outcome.SENT
        if status in (404, 410):
            return Outcome.GONE
        if status == 429 or status >= 500:
            return _retry_after(response.headers.get("retry-after"))
        # 3xx (never followed), 400, 401, 403, 413: sending again would not help.
        logger.warning("push: the push service refused a message (%d)", status)
        return Outcome.FAILED


def _retry_after(value: str | None) -> float:
    try:
        seconds = float(value) if value is not None else 1.0
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_SECONDS)


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast
