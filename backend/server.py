"""The HTTP server `taskapi serve` runs: uvicorn's httptools protocol with bounds on what a
client may send before the application sees a request, answering in the API's error format;
and, with `--workers N`, uvicorn's supervisor, made to let go of the listening socket at once
when it is told to stop.

uvicorn bounds neither the size of a request head (request line + headers) on httptools, nor
the time it may take to arrive (`h11_max_incomplete_event_size` applies to h11 only, and
`timeout_keep_alive` only to the wait *between* requests). Without them one huge header was
read whole, at the event loop's expense (other requests stalled: bench/README.md), before a
401; and connections trickling unfinished heads held memory for as long as they liked.

- A head larger than MAX_HEAD_BYTES is answered 431 and the connection closed as soon as the
  limit is passed: bytes are counted as they are handed to the parser, so no more than the
  limit (plus nothing) is ever parsed or kept.
- A head must be complete within `HTTP_HEADER_TIMEOUT` seconds of its first byte (or of the
  connection being opened): otherwise 408 and the connection is closed. A connection idle
  between requests is not timed by this (uvicorn's keep-alive timeout is), nor is a request
  whose head has arrived (a slow body, a long event stream).
- A request that is not HTTP (httptools cannot parse it) is answered 400 BAD_REQUEST.

These answers are the error family's bodies (errors.py: BadRequest, HeadersTooLarge,
RequestTimeout), with a new X-Request-ID, named in the one log line each writes, and
`X-Content-Type-Options: nosniff`, as the application's own errors are; uvicorn's 400 was
plain text.
"""

import asyncio
import functools
import logging
import signal
import socket
from types import FrameType
from typing import Any, cast

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.supervisors.multiprocess import Multiprocess

from backend.errors import AppError, BadRequest, HeadersTooLarge, RequestTimeout, error_body
from backend.schemas.rendering import to_json
from backend.web.middleware import new_request_id

logger = logging.getLogger("backend.server")

# Request line + headers. Browsers' heads are a few KiB (cookies up to ~8 KiB); a bearer token
# from a JWKS-backed auth is 1-2 KiB. nginx's default large_client_header_buffers is 4 x 8 KiB.
MAX_HEAD_BYTES = 64 * 1024

NOT_HTTP = BadRequest("The request is not valid HTTP/1.1")
HEAD_TOO_LARGE = HeadersTooLarge(
    f"The request line and headers are larger than {MAX_HEAD_BYTES // 1024} KiB"
)
HEAD_TOO_SLOW = RequestTimeout()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """httptools' protocol, refusing request heads that are too large or too slow."""

    def __init__(self, *args: Any, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout = head_timeout
        # Bytes of the current request's head fed to the parser so far; None while no head is
        # being read (the head is complete and the body or the response is under way).
        self.head_bytes: int | None = 0
        self.head_timer: asyncio.TimerHandle | None = None
        self.heads_completed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(cast(asyncio.Transport, transport))
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.head_bytes is None or self.parser is None:
            super().data_received(data)
            return
        room = MAX_HEAD_BYTES - self.head_bytes
        if len(data) <= room:  # the usual case: the whole read fits in what the head may take
            self.head_bytes += len(data)
            super().data_received(data)
            return
        # Feed no more than the head may still take; if the head ends within that, the rest (a
        # body, a pipelined request) goes on as usual, else the head is too large.
        heads = self.heads_completed
        self.head_bytes += room
        super().data_received(data[:room])
        if self.transport.is_closing():
            return
        if self.heads_completed == heads:
            self._refuse(HEAD_TOO_LARGE)
        else:
            self.data_received(data[room:])

    def on_message_begin(self) -> None:
        # The first byte of a request: its head is timed from here (a new connection's first
        # request from when the connection was made).
        if self.head_bytes is None:  # a pipelined request starting within the same read
            self.head_bytes = 0
        if self.head_timer is None:
            self._arm_head_timer()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self.head_bytes = None
        self.heads_completed += 1
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.head_bytes = 0  # the next byte on this connection starts the next request's head

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self.head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.head_bytes is not None and not self.transport.is_closing():
            self._refuse(HEAD_TOO_SLOW)

    def send_400_response(self, msg: str) -> None:
        # httptools could not parse the bytes received (uvicorn has logged a warning).
        self._refuse(NOT_HTTP)

    def _refuse(self, error: AppError) -> None:
        """Answer and close, unless a response to an earlier (pipelined) request is still
        being written: then only close, as an answer would be mixed into that one."""
        self._cancel_head_timer()
        self.head_bytes = None
        if self.cycle is None or self.cycle.response_complete:
            rid = new_request_id()
            body = to_json(error_body(error))
            head = [STATUS_LINE[error.status_code]]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head.append(
                b"content-type: application/json\r\ncontent-length: %d\r\n"
                b"x-request-id: %s\r\nx-content-type-options: nosniff\r\n"
                b"connection: close\r\n\r\n" % (len(body), rid.encode())
            )
            self.transport.write(b"".join(head) + body)
            logger.info(
                "%d %s answered by the HTTP server: %s",
                error.status_code,
                error.code,
                error.detail,
                extra={"request_id": rid},
            )
        self.transport.close()


def http_protocol(head_timeout: float) -> type[asyncio.Protocol]:
    """What to pass uvicorn as `http=`: a protocol factory carrying the settings (uvicorn calls
    it like a class; a partial of a module-level class is picklable, so spawned workers get it)."""
    factory = functools.partial(BoundedHttpToolsProtocol, head_timeout=head_timeout)
    return cast(type[asyncio.Protocol], factory)


class Supervisor(Multiprocess):
    """uvicorn's supervisor of `--workers N`, which closes its copy of the listening socket the
    moment it is told to stop (SIGTERM, SIGINT).

    The workers and the supervisor all hold the one listening socket (the supervisor to hand it
    to a worker it starts in place of one that died). On SIGTERM each worker closes its copy and
    drains its requests; uvicorn's supervisor kept its own until the workers had finished, so
    the kernel went on completing connections into a backlog no process read: new clients hung
    for the graceful period and were then reset. Closed in the signal handler, the socket is
    gone with the last worker's copy, and new connections are refused.
    """

    def __init__(self, config: Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        self.stopping = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._stop_listening)

    def _stop_listening(self, sig: int, frame: FrameType | None) -> None:
        if not self.stopping:
            self.stopping = True
            listening, self.sockets = self.sockets, []  # a worker started from now on gets none
            for sock in listening:
                sock.close()
        self.signal_queue.append(sig)  # uvicorn's loop then stops the workers, as before

    def keep_subprocess_alive(self) -> None:
        if not self.stopping:  # a worker that ends now is not replaced
            super().keep_subprocess_alive()
