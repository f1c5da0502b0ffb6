"""The HTTP side of safe edits: ETag versions in If-Match and If-None-Match, and writes done
once per Idempotency-Key (`services.idempotency.once` keeps the key and the first response)."""

import re
from collections.abc import Awaitable, Callable
from typing import Annotated
from urllib.parse import quote

import orjson
from fastapi import Header, Request
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.responses import Response

from backend.models.sync import IDEMPOTENCY_KEY_MAX, KEY_HOURS
from backend.models.task import VERSION_MAX
from backend.schemas.rendering import to_json
from backend.services import idempotency
from backend.services.tables import Versions
from backend.services.tasks import Written
from backend.web.responses import REPLAYED, Replayed, task_headers

IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='Change the task only if it is still at this version: its ETag, `"3"`. '
        "A stale one is 412 with the task as it is now in `current`.",
    ),
]
IfNoneMatch = Annotated[
    str | None,
    Header(alias="If-None-Match", description="The ETag you have: 304 if it is still current."),
]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=IDEMPOTENCY_KEY_MAX,
        pattern=r"^[\x20-\x7e]+$",
        description="Any unique string (a UUID): a repeat of this request with the same key, "
        f"within {KEY_HOURS} hours, gets the first response again with `{REPLAYED}: true` and "
        "changes nothing; the same key with another request is 422 IDEMPOTENCY_KEY_REUSED.",
    ),
]
# An entity tag as clients send them: `"3"`, weak `W/"3"`, or a bare 3 (a forgotten quote).
_ENTITY_TAG = re.compile(r'(W/)?"(\d{1,18})"|(\d{1,18})')


def versions(header: str | None, *, weak: bool) -> Versions | None:
    """The task versions an If-Match (strong comparison) or If-None-Match (`weak`) names; None
    for none at all (no header) or any (`*`). A bare number is taken as the ETag a client
    forgot to quote; any other entity tag, or a version no task can have, matches none."""
    if header is None:
        return None
    found = set()
    for member in header.split(","):
        member = member.strip()
        if member == "*":
            return None
        match = _ENTITY_TAG.fullmatch(member)
        if match and (weak or not match.group(1)):
            version = int(match.group(2) or match.group(3))
            if version <= VERSION_MAX:
                found.add(version)
    return frozenset(found)


async def once(
    request: Request,
    conn: AsyncConnection,
    user_id: str,
    key: str | None,
    write: Callable[[], Awaitable[Written]],
    status_code: int = 200,
) -> Response:
    """Run a write, once per Idempotency-Key when one is sent, and answer with its task. A
    repeat gets the stored answer, as a `Replayed` response."""
    written: list[Written] = []  # the task, when this request wrote it

    async def run() -> tuple[int, bytes]:
        written.append(await write())
        return status_code, to_json(written[0].task)

    if key is None:
        status, body = await run()
        replayed = False
    else:
        sent = await request.json() if await request.body() else None
        fingerprint = idempotency.request_hash(request.method, request.url.path, sent)
        outcome = await idempotency.once(
            conn, user_id=user_id, key=key, fingerprint=fingerprint, run=run
        )
        status, body, replayed = outcome.status, outcome.body, outcome.replayed
    # A replay has only the stored body to say which task and version it answered with.
    task = orjson.loads(body) if replayed else written[0].task
    headers = task_headers(task, skipped=not replayed and written[0].occurrence_skipped)
    if status == 201:
        headers["Location"] = f"/api/{quote(user_id, safe='')}/tasks/{task['id']}"
    if replayed:
        headers[REPLAYED] = "true"
        return Replayed(body, status_code=status, headers=headers, media_type="application/json")
    return Response(body, status_code=status, headers=headers, media_type="application/json")
