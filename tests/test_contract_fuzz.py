"""Property-based contract testing: schemathesis generates requests from the live app's OpenAPI
document (valid and invalid ones, alone and in sequences that follow its links) and checks that
no response is a 5xx and that every response has a documented status, content type, headers
and body. A fixed seed makes a run repeatable; examples and time are bounded.

Some answers depend on the server's state rather than on the request's shape, so a request the
schema calls valid may still be refused, as documented: a stale or foreign If-Match (412), a
sync token beyond the user's changes (410), a cursor that is not one of ours, an
Idempotency-Key used for another request, or a recurrence for a task with no due date (422).
Those operations list those statuses as expected for valid data; every other check runs as
schemathesis ships it.

The event stream never ends by itself: schemathesis reads a stream until the request timeout
has passed in total, so at the 30 s that other requests get, its dozen or so 200 cases took
~6 of the ~6.5 minutes of a run. That one operation gets a few seconds instead, and this
module's server sends a heartbeat often, so the part of each stream that is read still holds
the opening and several heartbeats. Schemathesis runs in a temporary folder: its example
cache (`.schemathesis/`) goes there, never into the repository, and every run starts uncached.
"""

import re
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest

from tests.fixtures.servers import LiveServer
from tests.helpers import SECRET

pytestmark = pytest.mark.live  # it starts processes: servers of its own

EXAMPLES = 15
SEED = 20261130
REQUEST_TIMEOUT = 30
# Seconds an event stream is read for (a 200 answer) and a bound on its first byte.
EVENTS_TIMEOUT = 5
EVENTS = "GET /api/{user_id}/tasks/events"
# Read by the `live_server` fixture: heartbeats well within EVENTS_TIMEOUT.
LIVE_SERVER_ENV = {"SSE_HEARTBEAT_SECONDS": "0.5"}

# (method, path, statuses a schema-valid request may get from the server's state).
STATEFUL_REFUSALS = [
    ("GET", "/api/{user_id}/tasks", [422]),  # a cursor that is not one of ours
    ("GET", "/api/{user_id}/tasks/changes", [410]),
    ("GET", "/api/{user_id}/tasks/events", [410]),
    ("POST", "/api/{user_id}/tasks", [422]),  # an Idempotency-Key used for another body
    # …and a recurrence for a task that has no due date (the body alone cannot show it).
    ("PUT", "/api/{user_id}/tasks/{task_id}", [412, 422]),
    ("PATCH", "/api/{user_id}/tasks/{task_id}", [412, 422]),
    ("DELETE", "/api/{user_id}/tasks/{task_id}", [412]),
    ("PATCH", "/api/{user_id}/tasks/{task_id}/complete", [412, 422]),
]
ACCEPTED = ["2xx", "3xx", 401, 403, 404, 409, 429]


def _config(token: str) -> str:
    lines = [
        f'headers = {{ Authorization = "Bearer {token}" }}',
        f"seed = {SEED}",
        f"request-timeout = {REQUEST_TIMEOUT}",
        "",
        "[parameters]",
        '"path.user_id" = "alice"',
        "",
        "[generation]",
        f"max-examples = {EXAMPLES}",
        "",
        "[[operations]]",
        f'include-name = "{EVENTS}"',
        f"request-timeout = {EVENTS_TIMEOUT}",
    ]
    for method, path, statuses in STATEFUL_REFUSALS:
        expected = ", ".join(f'"{s}"' if isinstance(s, str) else str(s) for s in ACCEPTED)
        lines += [
            "",
            "[[operations]]",
            f'include-name = "{method} {path}"',
            "[operations.checks.positive_data_acceptance]",
            f"expected-statuses = [{expected}, {', '.join(map(str, statuses))}]",
        ]
    return "\n".join(lines) + "\n"


def test_the_live_app_keeps_its_documented_contract(
    live_server: LiveServer, tmp_path: Path
) -> None:
    now = int(time.time())
    token = jwt.encode({"sub": "alice", "iat": now, "exp": now + 3600}, SECRET, algorithm="HS256")
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(token))
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(config),
        "run",
        f"{live_server.base_url}/openapi.json",
        "--no-color",
    ]
    work = tmp_path / "work"  # its cwd: where it keeps its cache
    work.mkdir()
    try:
        result = subprocess.run(
            command, cwd=work, capture_output=True, text=True, timeout=600, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"schemathesis did not finish: {exc.stdout!r}")
    output = result.stdout + result.stderr
    generated = re.search(r"(\d+) generated", output)
    assert generated is not None, output[-3000:]
    print(f"schemathesis: {generated.group(0)} test cases")
    assert result.returncode == 0, output[-6000:]
    assert int(generated.group(1)) >= 100, output[-3000:]
