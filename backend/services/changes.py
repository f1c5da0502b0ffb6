"""The change feed: what changed after a sync token, in change order, and the tombstones of
deleted tasks it remembers (for TOMBSTONE_DAYS, and at most TOMBSTONE_CHANGES a user).

Tokens follow the owner's change sequence, which the database's triggers hand out in commit
order (see `models.sync`): a feed read "after n" can never miss a change committed later.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    BigInteger,
    Integer,
    bindparam,
    case,
    delete,
    false,
    func,
    literal_column,
    null,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy import cast as sa_cast
from sqlalchemy.ext.asyncio import AsyncConnection

from backend import db
from backend.errors import SyncTokenExpired, ValidationFailed
from backend.models.sync import SYNC_TOKEN, TOMBSTONE_DAYS
from backend.services.tables import (
    PUBLIC_COLUMNS,
    TaskRecord,
    public,
    sync_table,
    task_table,
    tombstone_table,
)

_t = task_table.c
_s = sync_table.c
_d = tombstone_table.c
_STATE = select(_s.seq, _s.purged_seq).where(_s.user_id == bindparam("user_id"))
_CHANGED = select(*PUBLIC_COLUMNS, _t.change_seq.label("seq"), false().label("gone")).where(
    _t.user_id == bindparam("user_id")
)
_SINCE = bindparam("since", type_=BigInteger())
# Deleted tasks, in the same columns: only the id and the sequence number are filled in.
_DELETED = select(
    *(
        _d.task_id.label("id") if column.name == "id" else sa_cast(null(), column.type)
        for column in PUBLIC_COLUMNS
    ),
    _d.change_seq.label("seq"),
    true().label("gone"),
).where(_d.user_id == bindparam("user_id"), _d.change_seq > _SINCE)
_LIMIT = bindparam("limit", type_=Integer())
_EVERYTHING = _CHANGED.order_by(_t.change_seq).limit(_LIMIT)
_CHANGES_SINCE = (
    union_all(_CHANGED.where(_t.change_seq > _SINCE), _DELETED)
    .order_by(literal_column("seq"))
    .limit(_LIMIT)
)


@dataclass(frozen=True)
class Changes:
    # In change order: (sequence number, task id, the task as it is now or None if deleted).
    items: list[tuple[int, int, TaskRecord | None]]
    next: str  # the token to ask with next time
    has_more: bool


def parse_sync_token(token: str, *, field: str = "since") -> int:
    if not SYNC_TOKEN.fullmatch(token):
        raise ValidationFailed(f"{field}: is not a sync token this service made", field=field)
    return int(token)


async def _sync_bounds(conn: AsyncConnection, user_id: str, after: int | None) -> int:
    """The user's latest change; raises SyncTokenExpired when a token `after` can no longer be
    served: deletions after it were forgotten, or it is beyond the user's latest change (a token
    of another user's, or of a restored database)."""
    state = (await conn.execute(_STATE, {"user_id": user_id})).first()
    latest, purged = (0, 0) if state is None else (state.seq, state.purged_seq)
    if after is not None and not purged <= after <= latest:
        raise SyncTokenExpired()
    return int(latest)


async def start_token(conn: AsyncConnection, *, user_id: str, since: str | None) -> str:
    """Where a follower of the changes starts: `since` once it is known to be servable, or the
    user's latest change without it."""
    after = None if since is None else parse_sync_token(since)
    latest = await _sync_bounds(conn, user_id, after)
    return str(latest) if since is None else since


async def changes(conn: AsyncConnection, *, user_id: str, since: str | None, limit: int) -> Changes:
    """What changed after `since` (everything there is, without it), in change order: at most
    `limit`, and the token to go on from. Read in one snapshot, so that the sequence number the
    next token names covers exactly what was read."""
    after = None if since is None else parse_sync_token(since)
    async with db.snapshot(conn):
        latest = await _sync_bounds(conn, user_id, after)
        params = {"user_id": user_id, "since": after, "limit": limit + 1}
        statement = _EVERYTHING if after is None else _CHANGES_SINCE
        rows = (await conn.execute(statement, params)).mappings().all()
    has_more = len(rows) > limit
    rows = rows[:limit]
    items = [(row["seq"], row["id"], None if row["gone"] else public(row)) for row in rows]
    next_seq = rows[-1]["seq"] if has_more else latest
    return Changes(items=items, next=str(next_seq), has_more=has_more)


async def forget_deletions(conn: AsyncConnection, *, now: datetime) -> int:
    """Drop the tombstones older than TOMBSTONE_DAYS, remembering for each user the newest one
    dropped (a token older than it can no longer be served). Returns how many were dropped."""
    cutoff = now - timedelta(days=TOMBSTONE_DAYS)
    old = _d.deleted_at < cutoff
    newest_dropped = (
        select(func.max(_d.change_seq)).where(_d.user_id == _s.user_id, old).scalar_subquery()
    )
    async with db.transaction(conn):
        await conn.execute(
            update(sync_table)
            .where(select(_d.task_id).where(_d.user_id == _s.user_id, old).exists())
            .values(
                purged_seq=case(
                    (newest_dropped > _s.purged_seq, newest_dropped), else_=_s.purged_seq
                )
            )
        )
        result = await conn.execute(delete(tombstone_table).where(old))
    return int(result.rowcount)
