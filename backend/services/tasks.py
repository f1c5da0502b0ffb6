"""Every query and rule about tasks.

Each operation is one statement with the owner in its WHERE clause (a task of another user is
simply not found) and `RETURNING` the row, so a request costs one database round trip and no
read-back. Rows come back as plain dicts, ready to be rendered without re-validation.
"""

from datetime import UTC, datetime
from functools import cache
from typing import Any, TypedDict, cast

from sqlalchemy import Table, Update, bindparam, case, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.errors import TaskNotFound
from backend.models.task import Task, UTCDateTime
from backend.schemas.task import TaskCreate, TaskRead, TaskReplace, TaskUpdate


class TaskRow(TypedDict):
    id: int
    user_id: str
    title: str
    description: str | None
    completed: bool
    created_at: datetime
    updated_at: datetime


task_table = cast(Table, Task.__table__)  # type: ignore[attr-defined]
_t = task_table.c
# What a client sees, named once: the fields of the response schema. Every statement selects or
# returns exactly these columns, so a column added for internal use never reaches a response.
PUBLIC_COLUMNS = tuple(_t[name] for name in TaskRead.model_fields)
# Named apart from the columns: UPDATE reserves the column names for its SET values.
_owned = (_t.id == bindparam("key_id")) & (_t.user_id == bindparam("key_user"))

_LIST = select(*PUBLIC_COLUMNS).where(_t.user_id == bindparam("user_id"))
_LIST = _LIST.order_by(_t.created_at.desc(), _t.id.desc()).limit(bindparam("limit"))
_GET = select(*PUBLIC_COLUMNS).where(_owned)
_CREATE = insert(task_table).returning(*PUBLIC_COLUMNS)
_NOW = bindparam("now", type_=UTCDateTime())
_TOGGLE = update(task_table).where(_owned).values(completed=~_t.completed, updated_at=_NOW)
_TOGGLE = _TOGGLE.returning(*PUBLIC_COLUMNS)
_DELETE = delete(task_table).where(_owned).returning(*PUBLIC_COLUMNS)


def _key(user_id: str, task_id: int) -> dict[str, Any]:
    return {"key_id": task_id, "key_user": user_id}


def _now() -> datetime:
    return datetime.now(UTC)


def _one(row: Any) -> TaskRow:
    if row is None:
        raise TaskNotFound()
    return cast(TaskRow, dict(row))


async def list_tasks(conn: AsyncConnection, *, user_id: str, limit: int) -> list[TaskRow]:
    result = await conn.execute(_LIST, {"user_id": user_id, "limit": limit})
    return [cast(TaskRow, dict(row)) for row in result.mappings()]


async def get_task(conn: AsyncConnection, *, user_id: str, task_id: int) -> TaskRow:
    result = await conn.execute(_GET, _key(user_id, task_id))
    return _one(result.mappings().first())


async def create_task(conn: AsyncConnection, *, user_id: str, data: TaskCreate) -> TaskRow:
    now = _now()
    values = {"user_id": user_id, **data.model_dump(), "created_at": now, "updated_at": now}
    result = await conn.execute(_CREATE, values)
    return _one(result.mappings().first())


@cache
def _update_statement(fields: tuple[str, ...]) -> Update:
    """UPDATE of these fields; `updated_at` moves only if one of them really changes."""
    new = {name: bindparam(f"new_{name}", type_=_t[name].type) for name in fields}
    changed = or_(*(_t[name].is_distinct_from(value) for name, value in new.items()))
    return (
        update(task_table)
        .where(_owned)
        .values({**new, "updated_at": case((changed, _NOW), else_=_t.updated_at)})
        .returning(*PUBLIC_COLUMNS)
    )


async def update_task(
    conn: AsyncConnection, *, user_id: str, task_id: int, data: TaskUpdate | TaskReplace
) -> TaskRow:
    """Apply the fields that were sent; the others keep their values, and `{}` changes nothing."""
    changes = data.model_dump()  # fields left out are MISSING, which model_dump drops
    if not changes:
        return await get_task(conn, user_id=user_id, task_id=task_id)
    params = {f"new_{name}": value for name, value in changes.items()}
    result = await conn.execute(
        _update_statement(tuple(sorted(changes))),
        {**params, **_key(user_id, task_id), "now": _now()},
    )
    return _one(result.mappings().first())


async def set_completed(
    conn: AsyncConnection, *, user_id: str, task_id: int, completed: bool | None
) -> TaskRow:
    """`completed=None` toggles, atomically in the database; a bool sets it (idempotent)."""
    if completed is not None:
        return await update_task(
            conn, user_id=user_id, task_id=task_id, data=TaskUpdate(completed=completed)
        )
    result = await conn.execute(_TOGGLE, {**_key(user_id, task_id), "now": _now()})
    return _one(result.mappings().first())


async def delete_task(conn: AsyncConnection, *, user_id: str, task_id: int) -> TaskRow:
    result = await conn.execute(_DELETE, _key(user_id, task_id))
    return _one(result.mappings().first())
