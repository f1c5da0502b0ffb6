"""One task's reads and writes: get, create, update (PUT and PATCH), complete, delete, and
clearing a user's tasks.

Each operation is one statement with the owner in its WHERE clause (a task of another user is
simply not found) and `RETURNING` the row, so a request costs one database round trip and no
read-back. Rows come back as plain dicts of the public columns, ready to be rendered.

Every change moves the task's `version` (its ETag). A write sent with `If-Match` carries the
versions it accepts in the same statement's WHERE, so of two writers holding one version exactly
one wins; when nothing matched, a read tells 404 from 412. The database's triggers give each
change its place in the owner's change sequence (see `models.sync`), which the change feed reads.

Completing a recurring task creates its next occurrence, exactly once, in a transaction
(`db.transaction`). A completion first tries the one-statement path with `recurrence IS NULL`
in its WHERE; only a recurring task (or a missing one) takes the locked path: lock the row,
update it, insert the next occurrence (`services.recurrence`) unless `next_occurrence_id` says
it exists, and remember its id. Toggling back and forth, repeating the request or racing two
requests therefore never makes two.
"""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from backend import db
from backend.errors import PreconditionFailed, QuotaExceeded, TaskNotFound, ValidationFailed
from backend.schemas.task import TaskCreate, TaskReplace, TaskUpdate
from backend.services import statements, tables
from backend.services.recurrence import next_occurrence, offset_minutes
from backend.services.tables import (
    TaskRecord,
    Versions,
    first,
    key,
    public,
)


@dataclass(frozen=True, slots=True)
class Written:
    """A task as a write left it; `occurrence_skipped`: it was a recurring task completed while
    its user had MAX_TASKS_PER_USER tasks, so no next occurrence was made."""

    task: TaskRecord
    occurrence_skipped: bool = False


async def _refused(conn: AsyncConnection, user_id: str, task_id: int) -> PreconditionFailed:
    """A conditional write matched no row: 404 if the task is not there, else 412 with the task
    as it is now."""
    return PreconditionFailed(await get_task(conn, user_id=user_id, task_id=task_id))


def _check_version(task: TaskRecord, if_match: Versions | None) -> TaskRecord:
    if if_match is not None and task["version"] not in if_match:
        raise PreconditionFailed(task)
    return task


def _one(row: TaskRecord | None) -> TaskRecord:
    if row is None:
        raise TaskNotFound()
    return row


# --- reading and creating ------------------------------------------------------------------------


async def get_task(conn: AsyncConnection, *, user_id: str, task_id: int) -> TaskRecord:
    return _one(await first(conn, statements.GET, key(user_id, task_id)))


async def create_task(
    conn: AsyncConnection, *, user_id: str, data: TaskCreate, max_tasks: int
) -> TaskRecord:
    """A new task, unless the user has `max_tasks` already (QuotaExceeded). The next occurrence
    of a recurring task is made without this check (completing a task must not fail), and
    counts like any other."""
    created = tables.now()
    fields = data.model_dump()  # fields left out are MISSING: the table's defaults apply
    values = {**fields, **statements.derived(fields), "user_id": user_id, "created_at": created}
    values["updated_at"] = created
    if fields.get("completed"):
        values["completed_at"] = created
    if fields.get("recurrence") is not None:
        values["recurrence_anchor"] = fields["due_at"]
        values["recurrence_offset_minutes"] = offset_minutes(fields["due_at"])
    statement = statements.create_statement(tuple(sorted(values)))
    values["max_tasks"] = max_tasks
    row = await first(conn, statement, values)
    if row is None:
        # The user had max_tasks tasks, or has never had a task (no sync_state row to lock yet:
        # make one, so that concurrent first creates queue on it too, and try once more).
        await conn.execute(statements.ENSURE_SYNC_STATE, {"user_id": user_id})
        row = await first(conn, statement, values)
        if row is None:
            raise QuotaExceeded(max_tasks)
    return _one(row)


# --- updating and completing ---------------------------------------------------------------------


async def update_task(
    conn: AsyncConnection,
    *,
    user_id: str,
    task_id: int,
    data: TaskUpdate | TaskReplace,
    max_tasks: int,
    if_match: Versions | None = None,
) -> Written:
    """Apply the fields that were sent; the others keep their values, and `{}` changes nothing.
    Completing a recurring task creates its next occurrence unless the user has `max_tasks`."""
    changes = data.model_dump()  # fields left out are MISSING, which model_dump drops
    if not changes:
        task = await get_task(conn, user_id=user_id, task_id=task_id)
        return Written(_check_version(task, if_match))
    params = {
        f"new_{name}": value for name, value in {**changes, **statements.derived(changes)}.items()
    }
    params.update(key(user_id, task_id, if_match), now=tables.now())
    if "due_at" in changes:
        due = changes["due_at"]
        params["new_offset_minutes"] = 0 if due is None else offset_minutes(due)
    fields = tuple(sorted(changes))
    # Only a completion can create an occurrence: anything else is one statement, whatever the
    # task. A completion of a task that may recur (now or after this write) takes the locked path.
    completes = changes.get("completed") is True
    conditional = if_match is not None
    try:
        if not (completes and changes.get("recurrence") is not None):
            statement = statements.update_statement(
                fields, completing=completes, conditional=conditional
            )
            row = await first(conn, statement, params)
            if row is not None:
                return Written(row)
            if not completes:
                if conditional:
                    raise await _refused(conn, user_id, task_id)
                raise TaskNotFound()
        statement = statements.update_statement(fields, locked=True)
        return await _write_locked(conn, statement, params, if_match, max_tasks)
    except sa_exc.IntegrityError:
        raise _needs_due_date(changes) from None


def _needs_due_date(changes: dict[str, Any]) -> ValidationFailed:
    # The table's CHECK: a recurring task has a due date. The body alone could not show it.
    if "due_at" in changes:
        return ValidationFailed(
            "due_at: a recurring task needs a due date (clear its recurrence too)", field="due_at"
        )
    return ValidationFailed(
        "recurrence: a recurring task needs a due_at (the task has none)", field="recurrence"
    )


async def set_completed(
    conn: AsyncConnection,
    *,
    user_id: str,
    task_id: int,
    completed: bool | None,
    max_tasks: int,
    if_match: Versions | None = None,
) -> Written:
    """`completed=None` toggles, atomically in the database; a bool sets it (idempotent)."""
    if completed is not None:
        return await update_task(
            conn,
            user_id=user_id,
            task_id=task_id,
            data=TaskUpdate(completed=completed),
            max_tasks=max_tasks,
            if_match=if_match,
        )
    params = {**key(user_id, task_id, if_match), "now": tables.now()}
    toggle = statements.TOGGLE if if_match is None else statements.TOGGLE_AT_VERSION
    row = await first(conn, toggle, params)
    if row is not None:
        return Written(row)
    return await _write_locked(conn, statements.TOGGLE_LOCKED, params, if_match, max_tasks)


async def _write_locked(
    conn: AsyncConnection,
    statement: db.Prepared,
    params: dict[str, Any],
    if_match: Versions | None,
    max_tasks: int,
) -> Written:
    """The update of a task that may recur: with the row locked, update it, and if that
    completed it, create its next occurrence unless one exists already — or the user has
    `max_tasks` tasks: then the task is completed without one (a completion never fails for
    the quota, and never takes a user past it). Not linked to one, the task makes its next
    occurrence when it is completed again below the quota."""
    skipped = False
    async with db.transaction(conn):
        version = (await conn.execute(statements.LOCK, params)).scalar()
        if version is None:
            raise TaskNotFound()
        if if_match is not None and version not in if_match:
            raise await _refused(conn, params["key_user"], params["key_id"])
        task = dict((await conn.execute(statement.statement, params)).mappings().one())
        if task["completed"] and task["recurrence"] and task["next_occurrence_id"] is None:
            occurrence = next_occurrence(task, params["now"])
            if occurrence is not None:
                # The count with the owner's sync_state row locked, as a create reads it (the
                # completion's own change has locked it already on PostgreSQL).
                count = (
                    await conn.execute(statements.TASK_COUNT, {"user_id": task["user_id"]})
                ).scalar()
                if (count or 0) >= max_tasks:
                    skipped = True
                else:
                    created = await conn.execute(statements.INSERT_OCCURRENCE, occurrence)
                    link = {"key_id": task["id"], "next_id": created.scalar_one()}
                    await conn.execute(statements.LINK, link)
    return Written(public(task), occurrence_skipped=skipped)


async def delete_task(
    conn: AsyncConnection, *, user_id: str, task_id: int, if_match: Versions | None = None
) -> TaskRecord:
    """Delete the task (the database keeps its tombstone for the change feed)."""
    statement = statements.DELETE if if_match is None else statements.DELETE_AT_VERSION
    row = await first(conn, statement, key(user_id, task_id, if_match))
    if row is not None:
        return row
    if if_match is not None:
        raise await _refused(conn, user_id, task_id)
    raise TaskNotFound()


async def delete_tasks(conn: AsyncConnection, *, user_id: str, completed_only: bool) -> int:
    """Clear the user's completed tasks, or all of them."""
    statement = statements.CLEAR_COMPLETED if completed_only else statements.CLEAR
    result = await conn.execute(statement, {"user_id": user_id})
    return int(result.rowcount)
