"""The Web Push sender against a push service stand-in on loopback that verifies each message's
VAPID token and decrypts it as the browser would (tests/push_service.py): delivery, retries,
gone subscriptions, and every request-forgery refusal (http://, hosts off the list, private and
loopback addresses, redirects)."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backend.services.push import (
    Outcome,
    PushSender,
    Subscription,
    VapidKey,
    endpoint_problem,
    key_problem,
)
from tests.push_service import PushService, running_push_service

SUBJECT = "mailto:ops@example.com"
MESSAGE: dict[str, object] = {"type": "reminder", "task": {"id": 7, "title": "Pay rent"}}


@pytest.fixture
async def push_service(tmp_path: Path) -> AsyncIterator[PushService]:
    async with running_push_service(tmp_path) as service:
        yield service


class Sleeps:
    def __init__(self) -> None:
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


def sender(
    service: PushService, tmp_path: Path, sleep: Sleeps | None = None, **options: object
) -> PushSender:
    key = VapidKey.development(tmp_path)
    allowed = options.pop("allowed", ["127.0.0.1"])
    return PushSender(
        key=key,
        subject=SUBJECT,
        allowed_hosts=allowed,  # type: ignore[arg-type]
        ca_file=service.ca_file,
        sleep=sleep or Sleeps(),
        **options,  # type: ignore[arg-type]
    )


def subscription(service: PushService, path: str) -> Subscription:
    data = service.subscription(path)
    return Subscription(data["endpoint"], data["keys"]["p256dh"], data["keys"]["auth"])


async def test_a_message_is_signed_and_encrypted_for_its_subscription(
    push_service: PushService, tmp_path: Path
) -> None:
    push = sender(push_service, tmp_path)
    try:
        assert await push.send(subscription(push_service, "/s/1"), MESSAGE) == Outcome.SENT
    finally:
        await push.aclose()
    assert push_service.refused == []
    (delivery,) = push_service.deliveries
    assert (delivery.path, delivery.message, delivery.subject) == ("/s/1", MESSAGE, SUBJECT)


async def test_a_message_for_other_keys_is_one_the_browser_cannot_read(
    push_service: PushService, tmp_path: Path
) -> None:
    # The stand-in really decrypts: a message encrypted for another subscription's keys fails.
    own = subscription(push_service, "/s/own")
    other = subscription(push_service, "/s/other")
    push = sender(push_service, tmp_path)
    try:
        crossed = Subscription(own.endpoint, other.p256dh, other.auth)
        assert await push.send(crossed, MESSAGE) == Outcome.FAILED
    finally:
        await push.aclose()
    assert push_service.deliveries == []
    assert push_service.refused == ["cannot decrypt: ECEException"]


async def test_busy_push_services_are_tried_again_with_backoff(
    push_service: PushService, tmp_path: Path
) -> None:
    sleeps = Sleeps()
    push = sender(push_service, tmp_path, sleeps)
    push_service.script["/s/busy"] = [503, 429, 201]
    push_service.script["/s/down"] = [500]
    try:
        assert await push.send(subscription(push_service, "/s/busy"), MESSAGE) == Outcome.SENT
        assert await push.send(subscription(push_service, "/s/down"), MESSAGE) == Outcome.FAILED
    finally:
        await push.aclose()
    assert push_service.hits.count("/s/busy") == 3
    assert push_service.hits.count("/s/down") == 3  # a bounded number of attempts
    assert len(sleeps.slept) == 4


@pytest.mark.parametrize("status", [404, 410])
async def test_a_subscription_the_push_service_forgot_is_gone(
    push_service: PushService, tmp_path: Path, status: int
) -> None:
    push = sender(push_service, tmp_path)
    push_service.script["/s/gone"] = [status]
    try:
        assert await push.send(subscription(push_service, "/s/gone"), MESSAGE) == Outcome.GONE
    finally:
        await push.aclose()
    assert push_service.hits == ["/s/gone"]


async def test_redirects_are_never_followed(push_service: PushService, tmp_path: Path) -> None:
    push = sender(push_service, tmp_path)
    push_service.script["/s/moved"] = [307]
    try:
        assert await push.send(subscription(push_service, "/s/moved"), MESSAGE) == Outcome.FAILED
    finally:
        await push.aclose()
    assert push_service.hits == ["/s/moved"]  # never /redirected


async def test_an_allowed_host_that_resolves_to_a_private_address_is_refused(
    push_service: PushService, tmp_path: Path
) -> None:
    # A name under an allowed suffix, made to point inside the network: nothing is sent.
    async def inside(host: str, port: int) -> list[str]:
        return ["10.0.0.7", "127.0.0.1", "169.254.169.254", "::1"]

    push = sender(push_service, tmp_path, allowed=["push.example.com"], resolve=inside)
    keys = subscription(push_service, "/s/1")
    try:
        forged = Subscription("https://evil.push.example.com/s/1", keys.p256dh, keys.auth)
        assert await push.send(forged, MESSAGE) == Outcome.REFUSED
    finally:
        await push.aclose()
    assert push_service.hits == []


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        ("http://fcm.googleapis.com/fcm/send/x", "must be an https:// URL"),
        ("https://evil.example/fcm/send/x", "is not on a push service this server sends to"),
        (
            "https://fcm.googleapis.com.evil.example/x",
            "is not on a push service this server sends to",
        ),
        ("https://127.0.0.1/x", "is not on a push service this server sends to"),
        ("https://user@fcm.googleapis.com/x", "must name a host (and no user)"),
        ("https://fcm.googleapis.com:99999/x", "has a port that is not a number in range"),
        ("fcm.googleapis.com/x", "must be an https:// URL"),
    ],
)
def test_endpoints_off_the_push_services_are_refused(endpoint: str, problem: str) -> None:
    said = endpoint_problem(endpoint, ["fcm.googleapis.com", "push.services.mozilla.com"])
    assert said is not None
    assert said.startswith(problem)


def test_endpoints_of_the_push_services_are_taken() -> None:
    allowed = ["fcm.googleapis.com", "push.services.mozilla.com", "notify.windows.com"]
    for endpoint in (
        "https://fcm.googleapis.com/fcm/send/abc",
        "https://updates.push.services.mozilla.com/wpush/v2/abc",
        "https://wns2-par02p.notify.windows.com/w/?token=abc",
    ):
        assert endpoint_problem(endpoint, allowed) is None


def test_keys_must_be_a_browser_s() -> None:
    assert key_problem("not-a-key", "AAAAAAAAAAAAAAAAAAAAAA") is not None
    from tests.push_service import BrowserKeys, b64

    keys = BrowserKeys()
    assert key_problem(keys.p256dh, b64(keys.auth)) is None
    assert (
        key_problem(keys.p256dh, b64(b"short")) == "keys.auth: is not a 16-byte secret (base64url)"
    )
