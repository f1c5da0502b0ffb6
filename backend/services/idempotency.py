"""Idempotency-Key: a request repeated with the same key gets the first one's response.

The key is claimed, the work done and its response stored in one transaction. The claim is an
INSERT on the key's primary key (user, key), so the database decides which of several concurrent
repeats goes first, whichever process serves them: the others wait for its commit, find its
response and replay it (or, if it failed and rolled back, one of them goes first instead). Only
a success is stored: a request that failed may be repeated with the same key. A key older than
KEY_HOURS is free again, and `purge` drops such keys. A user's newest KEYS_PER_USER keys are
kept: claiming another forgets the oldest beyond them, so what is stored per user (a response is
one task) is bounded by that, not by how many requests the user can send in a day.
"""

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
from sqlalchemy import ColumnElement, Insert, Table, bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from backend import db
from backend.errors import IdempotencyKeyReused
from backend.models.sync import KEY_HOURS, IdempotencyKey

KEYS_PER_USER = 1000

key_table = cast(Table, IdempotencyKey.__table__)  # type: ignore[attr-defined]
_k = key_table.c
# Named apart from the columns: UPDATE reserves the column names for its SET values.
_this_key = (_k.user_id == bindparam("key_user")) & (_k.key == bindparam("key_value"))
_STORED = select(_k.request_hash, _k.status, _k.body).where(_this_key)
_RECORD = (
    update(key_table).where(_this_key).values(status=bindparam("status"), body=bindparam("body"))
)
_OLDEST_KEPT = (
    select(_k.created_at)
    .where(_k.user_id == bindparam("key_user"))
    .order_by(_k.created_at.desc())
    .offset(KEYS_PER_USER - 1)
    .limit(1)
    .scalar_subquery()
)
# The user's keys older than the newest KEYS_PER_USER (read by the index on user and age).
_FORGET_OLDEST = delete(key_table).where(
    _k.user_id == bindparam("key_user"), _k.created_at < _OLDEST_KEPT
)


@dataclass(frozen=True)
class Outcome:
    status: int
    body: bytes
    replayed: bool


def request_hash(method: str, path: str, body: Any) -> str:
    """What makes two requests the same: method, path, and the body's JSON value (key order and
    spacing aside)."""
    value = [method, path, body]
    try:
        canonical = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        # What orjson will not write but a JSON body may hold (and a body's unknown fields are
        # ignored, not refused): integers beyond 64 bits, lone surrogates in strings.
        canonical = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


async def once(
    conn: AsyncConnection,
    *,
    user_id: str,
    key: str,
    fingerprint: str,
    run: Callable[[], Awaitable[tuple[int, bytes]]],
    now: datetime | None = None,
) -> Outcome:
    """`run()` once for this user's key, in the transaction that stores its response; the
    stored response when the key was used before with the same request."""
    now = now or datetime.now(UTC)
    values = {"user_id": user_id, "key": key, "request_hash": fingerprint, "created_at": now}
    where = {"key_user": user_id, "key_value": key}
    async with db.transaction(conn):
        claim = insert_unless_present(
            conn,
            key_table,
            {**values, "status": None, "body": None},
            replace_where=_k.created_at < now - timedelta(hours=KEY_HOURS),
        )
        if (await conn.execute(claim)).first() is None:
            # Stored by a transaction that has committed (a concurrent one is waited for).
            stored = (await conn.execute(_STORED, where)).one()
            if stored.request_hash != fingerprint:
                raise IdempotencyKeyReused()
            return Outcome(status=stored.status, body=stored.body.encode(), replayed=True)
        status, body = await run()
        await conn.execute(_RECORD, {**where, "status": status, "body": body.decode()})
        await conn.execute(_FORGET_OLDEST, {"key_user": user_id})
    return Outcome(status=status, body=body, replayed=False)


def insert_unless_present(
    conn: AsyncConnection,
    table: Table,
    values: dict[str, Any],
    *,
    replace_where: ColumnElement[bool],
) -> Insert:
    """INSERT these values, or replace the row with the same primary key if `replace_where`
    holds for it (an expired one, say). A row comes back when the values were written; none when
    a row that stays was there. A row being written by another transaction is waited for."""
    statement = db.upsert(conn, table).values(values)
    return statement.on_conflict_do_update(
        index_elements=list(table.primary_key.columns),
        set_={name: statement.excluded[name] for name in values},
        where=replace_where,
    ).returning(*table.primary_key.columns)


async def purge(conn: AsyncConnection, *, now: datetime) -> int:
    """Drop the keys older than KEY_HOURS; returns how many."""
    cutoff = now - timedelta(hours=KEY_HOURS)
    result = await conn.execute(delete(key_table).where(_k.created_at < cutoff))
    return int(result.rowcount)
