"""`taskapi serve --workers 2` started and stopped as a deployment does it, over real sockets, on
a SQLite file (what is tested is the process layer, the same on either database).

- SIGTERM to the supervisor (what a container runtime sends): new connections are refused at
  once — not completed by the kernel into a backlog that no process reads any more — while a
  request in flight finishes; the process exits 0.
- Workers slower to start than uvicorn's own 5 s health check allows (a busy machine; here a
  `sitecustomize` that sleeps in each worker process) start once and serve: none is killed and
  replaced.

Every wait has a loose deadline; what is asserted is what the server did (refused, answered,
started each worker once), not how fast.
"""

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.fixtures.servers import WORKER_DIED, taskapi_serve
from tests.helpers import sign

pytestmark = pytest.mark.live  # it starts processes: servers of its own

DEADLINE = 30.0
# A connection the kernel accepted must be answered (or closed) within this; one left in a
# backlog nobody reads is never answered.
ANSWER_SECONDS = 5.0
THIS_CHECKOUT = str(Path(__file__).resolve().parents[1])
# Longer than uvicorn's default health-check timeout (5 s) by a margin; far shorter than ours.
SLOW_START_SECONDS = 8


def receive_queue(server_port: int, client_port: int) -> int | None:
    """Bytes the kernel holds for the server's side of a loopback connection that no process has
    read yet (/proc/net/tcp's rx_queue); None while there is no such socket."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.rsplit(":", 1)[1], 16) == server_port and (
            int(remote.rsplit(":", 1)[1], 16) == client_port
        ):
            return int(fields[4].split(":")[1], 16)
    return None


def read_response(sock: socket.socket, seconds: float) -> bytes:
    """What the server sends until it closes the connection; raises TimeoutError when it sends
    nothing for `seconds`. A reset counts as closed."""
    sock.settimeout(seconds)
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def probe(port: int) -> str:
    """One new connection: `refused`, `answered`, `closed` (accepted, then closed unanswered
    by a worker's shutdown) or `unanswered` (accepted and left hanging)."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_SECONDS)
    except ConnectionRefusedError:
        return "refused"
    with sock:
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            response = read_response(sock, ANSWER_SECONDS)
        except TimeoutError:
            return "unanswered"
        except OSError:
            return "closed"
    return "answered" if response.startswith(b"HTTP/1.1 200") else "closed"


def test_sigterm_refuses_new_connections_at_once_while_a_request_in_flight_finishes(
    tmp_path: Path,
) -> None:
    with taskapi_serve(
        f"sqlite:///{tmp_path / 'tasks.db'}", tmp_path, workers=2, PYTHONPATH=THIS_CHECKOUT
    ) as served:
        body = b'{"title": "in flight"}'
        head = (
            f"POST /api/alice/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {sign('alice')}"
            f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", served.port), timeout=DEADLINE) as in_flight:
            # The head and part of the body: the request is in flight, waiting for the rest.
            in_flight.sendall(head + body[:5])
            client_port = in_flight.getsockname()[1]
            deadline = time.monotonic() + DEADLINE
            while receive_queue(served.port, client_port) != 0:  # a worker has read it
                assert time.monotonic() < deadline, "no worker read the request"
                time.sleep(0.05)

            os.kill(served.process.pid, signal.SIGTERM)  # the supervisor only, as docker does
            seen: list[str] = []
            while not seen or seen[-1] != "refused":
                assert time.monotonic() < deadline, f"new connections not refused: {seen}"
                seen.append(probe(served.port))
                assert seen[-1] != "unanswered", f"a new connection was left hanging: {seen}"
                time.sleep(0.05)

            in_flight.sendall(body[5:])
            response = read_response(in_flight, DEADLINE)
        assert response.startswith(b"HTTP/1.1 201 "), response[:300]
        assert b'"title":"in flight"' in response
        assert served.process.wait(timeout=DEADLINE) == 0, served.log.read_text()


SLOW_START = f"""\
import sys
import time

if "--multiprocessing-fork" in sys.orig_argv:  # a worker the supervisor spawned
    time.sleep({SLOW_START_SECONDS})
"""


def test_workers_slower_to_start_than_uvicorns_health_check_start_once(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_START)
    with taskapi_serve(
        f"sqlite:///{tmp_path / 'tasks.db'}",
        tmp_path,
        workers=2,
        PYTHONPATH=os.pathsep.join([str(site), THIS_CHECKOUT]),
    ) as served:  # fails as soon as the supervisor reports a worker killed
        with socket.create_connection(("127.0.0.1", served.port), timeout=DEADLINE) as sock:
            sock.sendall(
                f"GET /api/alice/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                f"{sign('alice')}\r\nConnection: close\r\n\r\n".encode()
            )
            response = read_response(sock, DEADLINE)
        assert response.startswith(b"HTTP/1.1 200 "), response[:300]
        log = served.log.read_text()
        assert not WORKER_DIED.search(log), log
        assert log.count("Started server process") == 2, log
