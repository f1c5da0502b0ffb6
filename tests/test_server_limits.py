"""The server `taskapi serve` runs, over real sockets: request heads bounded in size and time,
and the server's own answers (400, 408, 431) in the API's error format.

A `taskapi serve` process of its own on a SQLite file (the limits are the HTTP server's, the
same on either database). Clients are plain sockets, so that they can send what no HTTP
library would: a 50 MB header, heads that never end. Every wait is bounded by a loose deadline;
what is asserted is what the server decided (431, 408, closed), not how fast.
"""

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from backend.errors import AppError, error_body
from backend.server import HEAD_TOO_LARGE, HEAD_TOO_SLOW, MAX_HEAD_BYTES, NOT_HTTP
from tests.fixtures.servers import Served, taskapi_serve
from tests.helpers import bearer, sign

pytestmark = pytest.mark.live  # it starts processes: servers of its own

# The shared venv's editable install points at another checkout: serve this one's code.
THIS_CHECKOUT = str(Path(__file__).resolve().parents[1])

DEADLINE = 30.0  # seconds: loose bound on anything the server should do "soon"
MIB = 1024 * 1024


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with taskapi_serve(
        f"sqlite:///{tmp_path / 'tasks.db'}", tmp_path, PYTHONPATH=THIS_CHECKOUT
    ) as server:
        yield server


@pytest.fixture
def served_fast_timeout(tmp_path: Path) -> Iterator[Served]:
    with taskapi_serve(
        f"sqlite:///{tmp_path / 'tasks.db'}",
        tmp_path,
        HTTP_HEADER_TIMEOUT="1",
        SSE_HEARTBEAT_SECONDS="0.5",
        PYTHONPATH=THIS_CHECKOUT,
    ) as server:
        yield server


def list_tasks(http: httpx.Client) -> int:
    """A normal request: alice's list, through authentication and the database."""
    response = http.get("/api/alice/tasks", headers=bearer(sign("alice")))
    return response.status_code


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    """What the server sends until it closes the connection (a reset counts as closed)."""
    received = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server did not close the connection; got {received[:200]!r}")


def status_of(response: bytes) -> int | None:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else None


def assert_refused_by_the_server(response: bytes, status: int, error: AppError) -> None:
    """The HTTP server's own answer: the error's JSON body, a new request id, nosniff, and the
    connection closed."""
    head, _, body = response.partition(b"\r\n\r\n")
    assert status_of(response) == status, response[:300]
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    }
    assert headers[b"content-type"] == b"application/json"
    assert orjson.loads(body) == error_body(error)
    assert re.fullmatch(rb"[0-9a-f]{32}", headers[b"x-request-id"]), headers
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert headers[b"connection"] == b"close"


def test_a_head_over_the_limit_is_431_and_closed(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=DEADLINE) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 10))
        response = read_until_closed(sock, time.monotonic() + DEADLINE)
    assert_refused_by_the_server(response, 431, HEAD_TOO_LARGE)
    assert error_body(HEAD_TOO_LARGE)["code"] == "HEADERS_TOO_LARGE"


def test_a_request_that_is_not_http_is_a_json_400(served: Served) -> None:
    ids = set()
    for garbage in (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", served.port), timeout=DEADLINE) as sock:
            sock.sendall(garbage)  # a TLS ClientHello to a plain-HTTP port; a broken header
            response = read_until_closed(sock, time.monotonic() + DEADLINE)
        assert_refused_by_the_server(response, 400, NOT_HTTP)
        ids.add(response.split(b"x-request-id: ", 1)[1][:32])
    assert error_body(NOT_HTTP)["code"] == "BAD_REQUEST"
    assert len(ids) == 2  # a new id for each


def test_a_head_within_the_limit_is_served(served: Served) -> None:
    # 60 KiB of headers: a large but legal head.
    headers = "".join(f"X-Pad-{i}: {'p' * 1000}\r\n" for i in range(60))
    with httpx.Client(base_url=served.base_url, timeout=DEADLINE) as http:
        assert list_tasks(http) == 200
    with socket.create_connection(("127.0.0.1", served.port), timeout=DEADLINE) as sock:
        sock.sendall(
            f"GET /api/alice/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {sign('alice')}\r\n"
            f"{headers}Connection: close\r\n\r\n".encode()
        )
        response_bytes = read_until_closed(sock, time.monotonic() + DEADLINE)
    assert status_of(response_bytes) == 200, response_bytes[:300]


def test_a_50_mb_header_is_refused_without_being_read_or_stalling_others(served: Served) -> None:
    total = 50 * MIB
    sent = 0
    outcome: list[BaseException | None] = []
    chunk = b"a" * 65536

    def send_big_header() -> None:
        nonlocal sent
        try:
            with socket.create_connection(("127.0.0.1", served.port), timeout=DEADLINE) as sock:
                sock.sendall(b"GET /api/alice/tasks HTTP/1.1\r\nHost: x\r\nX-Big: ")
                while sent < total:
                    sock.sendall(chunk)
                    sent += len(chunk)
            outcome.append(None)
        except OSError as exc:  # reset or broken pipe: the server closed the connection
            outcome.append(exc)

    sender = threading.Thread(target=send_big_header)
    sender.start()
    try:
        deadline = time.monotonic() + DEADLINE
        while sent < 2 * MAX_HEAD_BYTES and sender.is_alive() and time.monotonic() < deadline:
            time.sleep(0.001)
        # A normal request while the big one is (or was just) being sent.
        with httpx.Client(base_url=served.base_url, timeout=DEADLINE) as http:
            assert list_tasks(http) == 200
    finally:
        sender.join(DEADLINE)
    assert not sender.is_alive(), "the 50 MB header was still being sent after 30 s"
    assert len(outcome) == 1
    assert isinstance(outcome[0], ConnectionError), outcome
    # What the server took before closing is its limit plus what the kernels' socket buffers
    # held: far from 50 MB.
    assert sent < 20 * MIB, sent


def test_connections_trickling_heads_are_closed_and_memory_stays_bounded(
    served_fast_timeout: Served,
) -> None:
    """30 connections trickling heads that never end, 30 more pushing 8 MB heads: the first
    are answered 408 and closed after HTTP_HEADER_TIMEOUT (1 s here), the second 431 at the
    size limit; the process's memory hardly moves."""
    served = served_fast_timeout
    pid = served.workers[0]
    with httpx.Client(base_url=served.base_url, timeout=DEADLINE) as http:
        for _ in range(20):  # warm: what a served request allocates is not what is measured
            assert list_tasks(http) == 200
    before = rss_mib(pid)
    peak = before
    results: dict[str, list[bytes | BaseException]] = {"slow": [], "big": []}
    lock = threading.Lock()

    def slow(index: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", served.port), timeout=DEADLINE) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 16384)
                deadline = time.monotonic() + DEADLINE
                sock.settimeout(0.2)
                received = b""
                while time.monotonic() < deadline:  # a byte every 0.2 s, until closed
                    try:
                        sock.sendall(b"s")
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        received += chunk
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                else:
                    raise AssertionError("a trickling head was not closed within 30 s")
            outcome: bytes | BaseException = received
        except BaseException as exc:
            outcome = exc
        with lock:
            results["slow"].append(outcome)

    def big(index: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", served.port), timeout=DEADLINE) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
                try:
                    for _ in range(8 * 16):  # 8 MB in 64 KiB writes
                        sock.sendall(b"b" * 65536)
                except OSError:
                    pass  # closed by the server
                outcome: bytes | BaseException = read_until_closed(
                    sock, time.monotonic() + DEADLINE
                )
        except BaseException as exc:
            outcome = exc
        with lock:
            results["big"].append(outcome)

    threads = [threading.Thread(target=slow, args=(i,)) for i in range(30)]
    threads += [threading.Thread(target=big, args=(i,)) for i in range(30)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + DEADLINE * 2
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        peak = max(peak, rss_mib(pid))
        time.sleep(0.05)
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "clients still running after 60 s"

    slow_results = results["slow"]
    assert len(slow_results) == 30
    for outcome in slow_results:
        assert isinstance(outcome, bytes), outcome
        assert status_of(outcome) == 408, outcome[:300]
    big_results = results["big"]
    assert len(big_results) == 30
    for outcome in big_results:
        # 431, unless the reset of the unread bytes overtook it: closed either way
        assert not isinstance(outcome, BaseException), outcome
        assert status_of(outcome) in (431, None), outcome[:300]
    assert peak - before < 100, f"RSS {before:.0f} MiB -> {peak:.0f} MiB"
    with httpx.Client(base_url=served.base_url, timeout=DEADLINE) as http:
        assert list_tasks(http) == 200  # and it still serves


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    served_fast_timeout: Served,
) -> None:
    with socket.create_connection(
        ("127.0.0.1", served_fast_timeout.port), timeout=DEADLINE
    ) as sock:
        response = read_until_closed(sock, time.monotonic() + DEADLINE)
    assert_refused_by_the_server(response, 408, HEAD_TOO_SLOW)
    assert error_body(HEAD_TOO_SLOW)["code"] == "REQUEST_TIMEOUT"


def test_the_header_timeout_does_not_cut_long_responses_or_kept_alive_connections(
    served_fast_timeout: Served,
) -> None:
    """An event stream lasts longer than HTTP_HEADER_TIMEOUT (1 s here): its head arrived, so
    it is not timed; a connection reused after a pause is not timed until its next request."""
    with httpx.Client(base_url=served_fast_timeout.base_url, timeout=DEADLINE) as http:
        started = time.monotonic()
        heartbeats = 0
        with http.stream("GET", "/api/alice/tasks/events", headers=bearer(sign("alice"))) as stream:
            assert stream.status_code == 200
            for line in stream.iter_lines():
                heartbeats += line.startswith(":")
                if time.monotonic() - started > 3:  # three header timeouts
                    break
        assert heartbeats >= 2
        assert list_tasks(http) == 200
        time.sleep(1.5)  # idle between requests: uvicorn's keep-alive (5 s) applies, not ours
        assert list_tasks(http) == 200
