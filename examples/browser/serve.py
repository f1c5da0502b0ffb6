"""Serves the example page against a local Tasks API and a real Better Auth, each on its own
origin: `make example` (which installs and builds first) runs this.

    page         http://127.0.0.1:5173   index.html, app.js (dist/, `npm run build`), config.json
    Better Auth  http://127.0.0.1:3000   interop/better-auth/server.mjs (jwt plugin, in memory),
                                         trusting the page's origin (CORS with credentials)
    Tasks API    http://127.0.0.1:8000   `taskapi serve` on a new SQLite file, verifying Better
                                         Auth's tokens by its JWKS, CORS_ORIGINS = the page's origin

Everything listens on 127.0.0.1 only and stops on Ctrl-C. Users live in Better Auth's memory:
they are gone when it stops, and so is the database. tests/test_browser.py serves the page with
`page_server` the same way, against servers of its own.
"""

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
HOST = "127.0.0.1"
FILES = {  # what the page server answers, and nothing else
    "/": (HERE / "index.html", "text/html; charset=utf-8"),
    "/index.html": (HERE / "index.html", "text/html; charset=utf-8"),
    "/app.js": (HERE / "dist" / "app.js", "text/javascript; charset=utf-8"),
    "/app.js.map": (HERE / "dist" / "app.js.map", "application/json"),
}


@contextmanager
def page_server(port: int, config: dict[str, Any]) -> Iterator[str]:
    """The page on http://127.0.0.1:<port> (0: a free port), with `config` as its config.json
    (`tasksApiUrl`, `betterAuthUrl`, `pageSize`: read at each request, so a change shows at the
    next page load); yields the page's origin."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/config.json":
                self.answer(HTTPStatus.OK, json.dumps(config).encode(), "application/json")
            elif path in FILES and FILES[path][0].is_file():
                file, content_type = FILES[path]
                self.answer(HTTPStatus.OK, file.read_bytes(), content_type)
            else:
                self.answer(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

        def answer(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the browser's console and the servers' logs tell what happened

    server = ThreadingHTTPServer((HOST, port), Handler)
    thread = threading.Thread(target=server.serve_forever, name="page-server", daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _wait_until_up(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own http URL
                if response.status == HTTPStatus.OK:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start (see the lines above)")
        time.sleep(0.1)


@contextmanager
def _process(
    command: list[str], env: dict[str, str], cwd: Path
) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **env}, start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--page-port", type=int, default=5173)
    parser.add_argument("--auth-port", type=int, default=3000)
    parser.add_argument("--api-port", type=int, default=8000)
    parser.add_argument("--page-size", type=int, default=20)
    options = parser.parse_args()
    if not (HERE / "dist" / "app.js").is_file():
        raise SystemExit("examples/browser/dist/app.js is missing: run `make example`")
    page = f"http://{HOST}:{options.page_port}"
    better_auth = f"http://{HOST}:{options.auth_port}"
    api = f"http://{HOST}:{options.api_port}"
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tasks-example-")))
        auth_env = {
            "PORT": str(options.auth_port),
            "BETTER_AUTH_SECRET": secrets.token_urlsafe(36),
            "TRUSTED_ORIGINS": page,
        }
        node = stack.enter_context(
            _process(["node", "server.mjs"], auth_env, ROOT / "interop" / "better-auth")
        )
        api_env = {
            "DATABASE_URL": f"sqlite:///{folder / 'tasks.db'}",
            "DATA_DIR": str(folder),
            "BETTER_AUTH_URL": better_auth,
            "CORS_ORIGINS": page,
        }
        taskapi = str(Path(sys.executable).with_name("taskapi"))
        command = [taskapi, "serve", "--host", HOST, "--port", str(options.api_port)]
        service = stack.enter_context(_process(command, api_env, folder))
        _wait_until_up(f"{better_auth}/test/health", node, "Better Auth")
        _wait_until_up(f"{api}/health", service, "The Tasks API")
        config = {"tasksApiUrl": api, "betterAuthUrl": better_auth, "pageSize": options.page_size}
        stack.enter_context(page_server(options.page_port, config))
        print(f"\nThe example is served: open {page}/ (Better Auth {better_auth}, API {api})")
        print("Ctrl-C stops it.", flush=True)
        while not stopping.wait(0.5):
            if node.poll() is not None or service.poll() is not None:
                raise SystemExit("a server stopped (see the lines above)")


if __name__ == "__main__":
    main()
