"""Every query and rule about tasks.

Each operation is one statement with the owner in its WHERE clause (a task of another user is
simply not found) and `RETURNING` the row, so a request costs one database round trip and no
read-back. Rows come back as plain dicts of the public columns, ready to be rendered.

Every change moves the task's `version` (its ETag). A write sent with `If-Match` carries the
versions it accepts in the same statement's WHERE, so of two writers holding one version exactly
one wins; when nothing matched, a read tells 404 from 412. The database's triggers give each
change its place in the owner's change sequence (see `models.sync`), which the change feed reads.

Two things need more than one statement, and get a transaction (`db.transaction`):
- Completing a recurring task creates its next occurrence, exactly once. A completion first
  tries the one-statement path with `recurrence IS NULL` in its WHERE; only a recurring task
  (or a missing one) takes the locked path: lock the row, update it, insert the next occurrence
  unless `next_occurrence_id` says it exists, and remember its id. Toggling back and forth,
  repeating the request or racing two requests therefore never makes two.
- An empty page of a list asks for the total count on its own.
"""

import base64
import binascii
import calendar
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, cast

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    Table,
    and_,
    bindparam,
    case,
    delete,
    false,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    true,
    union_all,
    update,
)
from sqlalchemy import cast as sa_cast
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from backend import db
from backend.errors import (
    PreconditionFailed,
    QuotaExceeded,
    SyncTokenExpired,
    TaskNotFound,
    ValidationFailed,
)
from backend.models.sync import SyncState, TaskTombstone
from backend.models.task import PRIORITIES, TIME_MAX, TIME_MIN, Task, UTCDateTime
from backend.schemas.task import TaskCreate, TaskQuery, TaskRead, TaskReplace, TaskUpdate

# A task as the public columns name it: what every service function returns.
TaskRecord = dict[str, Any]
# The versions an If-Match accepts; None when there is no If-Match (or it is `*`).
Versions = frozenset[int]

task_table = cast(Table, Task.__table__)  # type: ignore[attr-defined]
_t = task_table.c
# What a client sees, named once: the fields of the response schema. Every statement selects or
# returns exactly these columns, so a column added for internal use never reaches a response.
PUBLIC_COLUMNS = tuple(_t[name] for name in TaskRead.model_fields)
_PUBLIC_NAMES = tuple(TaskRead.model_fields)
# Named apart from the columns: UPDATE reserves the column names for its SET values.
_owned = (_t.id == bindparam("key_id")) & (_t.user_id == bindparam("key_user"))
sync_table = cast(Table, SyncState.__table__)  # type: ignore[attr-defined]
_s = sync_table.c
tombstone_table = cast(Table, TaskTombstone.__table__)  # type: ignore[attr-defined]
_d = tombstone_table.c
_NOW = bindparam("now", type_=UTCDateTime())
_TAG_SEPARATOR = "\x1f"  # a control character: no tag can hold it

# Statements are built once per shape (which fields a write sets, which filters and sort a list
# uses) and their values bound per request. The shapes valid requests can reach number tens of
# thousands (a list's filters and sort alone: 80,640), so each builder keeps the most recently
# used ones only; a shape it forgot is built again (about a millisecond), never kept twice.
STATEMENTS_KEPT = 64

# If-Match: the task must be at one of these versions.
_AT_VERSION = _t.version.in_(bindparam("if_versions", expanding=True))

_GET = db.prepare(select(*PUBLIC_COLUMNS).where(_owned))
# The same SQL on SQLite and PostgreSQL.
_ENSURE_SYNC_STATE = text(
    "INSERT INTO sync_state (user_id) VALUES (:user_id) ON CONFLICT (user_id) DO NOTHING"
)
_DELETE = db.prepare(delete(task_table).where(_owned).returning(*PUBLIC_COLUMNS))
_DELETE_AT_VERSION = db.prepare(
    delete(task_table).where(_owned & _AT_VERSION).returning(*PUBLIC_COLUMNS)
)
_TOGGLE_VALUES = {
    "completed": ~_t.completed,
    "completed_at": case((_t.completed, None), else_=_NOW),
    "updated_at": _NOW,
    "version": _t.version + 1,
}
# The one-statement toggle, for a task that does not recur (the others take the locked path).
_TOGGLE_ANY = (
    update(task_table)
    .where(_owned & _t.recurrence.is_(None))
    .values(_TOGGLE_VALUES)
    .returning(*PUBLIC_COLUMNS)
)
_TOGGLE = db.prepare(_TOGGLE_ANY)
_TOGGLE_AT_VERSION = db.prepare(_TOGGLE_ANY.where(_AT_VERSION))
_TOGGLE_LOCKED = db.prepare(update(task_table).where(_owned).values(_TOGGLE_VALUES).returning(*_t))
_LOCK = select(_t.version).where(_owned).with_for_update()
_LINK = (
    update(task_table)
    .where(_t.id == bindparam("key_id"))
    .values(next_occurrence_id=bindparam("next_id"))
)


_TASK_COUNT = select(_s.task_count).where(_s.user_id == bindparam("user_id")).with_for_update()


@dataclass(frozen=True, slots=True)
class Written:
    """A task as a write left it; `occurrence_skipped`: it was a recurring task completed while
    its user had MAX_TASKS_PER_USER tasks, so no next occurrence was made."""

    task: TaskRecord
    occurrence_skipped: bool = False


def _key(user_id: str, task_id: int, if_match: Versions | None = None) -> dict[str, Any]:
    key: dict[str, Any] = {"key_id": task_id, "key_user": user_id}
    if if_match is not None:
        key["if_versions"] = sorted(if_match)
    return key


async def _refused(conn: AsyncConnection, user_id: str, task_id: int) -> PreconditionFailed:
    """A conditional write matched no row: 404 if the task is not there, else 412 with the task
    as it is now."""
    return PreconditionFailed(await get_task(conn, user_id=user_id, task_id=task_id))


def _check_version(task: TaskRecord, if_match: Versions | None) -> TaskRecord:
    if if_match is not None and task["version"] not in if_match:
        raise PreconditionFailed(task)
    return task


def _now() -> datetime:
    return datetime.now(UTC)


def _one(row: TaskRecord | None) -> TaskRecord:
    if row is None:
        raise TaskNotFound()
    return row


async def _first(
    conn: AsyncConnection, statement: db.Prepared, params: dict[str, Any]
) -> TaskRecord | None:
    """The task a statement selects or returns (its public columns, in their order), if any."""
    rows = await db.fetch(conn, statement, params)
    return dict(zip(_PUBLIC_NAMES, rows[0], strict=True)) if rows else None


def _public(row: Any) -> TaskRecord:
    return {column.name: row[column.name] for column in PUBLIC_COLUMNS}


def fold(text: str) -> str:
    """The case folding of search and tags: full Unicode (`É` → `é`, `ß` → `ss`), the same on
    both databases because it is done here, not by the database's lower()."""
    return text.casefold()


def tag_keys(tags: Sequence[str]) -> str:
    if not tags:
        return ""
    return _TAG_SEPARATOR + _TAG_SEPARATOR.join(fold(tag) for tag in tags) + _TAG_SEPARATOR


def _offset_minutes(when: datetime) -> int:
    offset = when.utcoffset()
    return 0 if offset is None else int(offset.total_seconds() // 60)


# The internal columns that follow from a public field, and how.
_DERIVED = {
    "title": ("title_fold", fold),
    "description": ("description_fold", lambda text: None if text is None else fold(text)),
    "tags": ("tag_keys", tag_keys),
}


def _derived(changes: dict[str, Any]) -> dict[str, Any]:
    return {
        column: derive(changes[name])
        for name, (column, derive) in _DERIVED.items()
        if name in changes
    }


# --- reading and creating ------------------------------------------------------------------------


async def get_task(conn: AsyncConnection, *, user_id: str, task_id: int) -> TaskRecord:
    return _one(await _first(conn, _GET, _key(user_id, task_id)))


async def create_task(
    conn: AsyncConnection, *, user_id: str, data: TaskCreate, max_tasks: int
) -> TaskRecord:
    """A new task, unless the user has `max_tasks` already (QuotaExceeded). The next occurrence
    of a recurring task is made without this check (completing a task must not fail), and
    counts like any other."""
    now = _now()
    fields = data.model_dump()  # fields left out are MISSING: the table's defaults apply
    values = {**fields, **_derived(fields), "user_id": user_id, "created_at": now}
    values["updated_at"] = now
    if fields.get("completed"):
        values["completed_at"] = now
    if fields.get("recurrence") is not None:
        values["recurrence_anchor"] = fields["due_at"]
        values["recurrence_offset_minutes"] = _offset_minutes(fields["due_at"])
    statement = _create_statement(tuple(sorted(values)))
    values["max_tasks"] = max_tasks
    row = await _first(conn, statement, values)
    if row is None:
        # The user had max_tasks tasks, or has never had a task (no sync_state row to lock yet:
        # make one, so that concurrent first creates queue on it too, and try once more).
        await conn.execute(_ENSURE_SYNC_STATE, {"user_id": user_id})
        row = await _first(conn, statement, values)
        if row is None:
            raise QuotaExceeded(max_tasks)
    return _one(row)


@lru_cache(maxsize=STATEMENTS_KEPT)
def _create_statement(names: tuple[str, ...]) -> db.Prepared:
    """INSERT … SELECT of these columns that inserts nothing when the user has `max_tasks`
    tasks: the count is read with their sync_state row locked (FOR UPDATE on PostgreSQL; SQLite
    has one writer anyway), and the insert's trigger adds 1 before the lock is let go, so
    concurrent creates, in any number of processes, see each other's tasks."""
    count = (
        select(_s.task_count)
        .where(_s.user_id == bindparam("user_id", type_=_t.user_id.type))
        .with_for_update()
        .scalar_subquery()
    )
    row = select(*(bindparam(name, type_=_t[name].type) for name in names)).where(
        count < bindparam("max_tasks", type_=Integer())
    )
    return db.prepare(insert(task_table).from_select(list(names), row).returning(*PUBLIC_COLUMNS))


# --- updating and completing ---------------------------------------------------------------------


@lru_cache(maxsize=STATEMENTS_KEPT)
def _update_statement(
    fields: tuple[str, ...],
    *,
    completing: bool = False,
    locked: bool = False,
    conditional: bool = False,
) -> db.Prepared:
    """UPDATE of these public fields (and what follows from them). `updated_at` and `version`
    move only if one of them really changes. A `completing` update leaves a recurring task alone
    (it takes the `locked` path, whose statement returns the internal columns too); a
    `conditional` one (If-Match) only updates the task at one of the versions given."""
    new = {name: bindparam(f"new_{name}", type_=_t[name].type) for name in fields}
    changed = or_(*(_t[name].is_distinct_from(value) for name, value in new.items()))
    values: dict[str, Any] = {
        **new,
        "updated_at": case((changed, _NOW), else_=_t.updated_at),
        "version": case((changed, _t.version + 1), else_=_t.version),
    }
    for name in fields:
        if name in _DERIVED:
            column = _DERIVED[name][0]
            values[column] = bindparam(f"new_{column}", type_=_t[column].type)
    if "completed" in new:
        values["completed_at"] = case(
            (new["completed"] & _t.completed, _t.completed_at),
            (new["completed"], _NOW),
            else_=None,
        )
    if "due_at" in new or "recurrence" in new:
        # A series restarts from the due date when the due date or the rule really changes
        # (a client that PUTs back the object it read changes neither, and keeps its anchor).
        due = new.get("due_at", _t.due_at)
        restarted = or_(
            *(
                _t[name].is_distinct_from(new[name])
                for name in ("due_at", "recurrence")
                if name in new
            )
        )
        offset = (
            bindparam("new_offset_minutes", type_=_t.recurrence_offset_minutes.type)
            if "due_at" in new
            else _t.recurrence_offset_minutes
        )
        values["recurrence_anchor"] = case((restarted, due), else_=_t.recurrence_anchor)
        values["recurrence_count"] = case((restarted, 0), else_=_t.recurrence_count)
        values["recurrence_offset_minutes"] = case(
            (restarted, offset), else_=_t.recurrence_offset_minutes
        )
    where = _owned & _t.recurrence.is_(None) if completing else _owned
    if conditional:
        where &= _AT_VERSION
    return db.prepare(
        update(task_table)
        .where(where)
        .values(values)
        .returning(*(_t if locked else PUBLIC_COLUMNS))
    )


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
    params = {f"new_{name}": value for name, value in {**changes, **_derived(changes)}.items()}
    params.update(_key(user_id, task_id, if_match), now=_now())
    if "due_at" in changes:
        due = changes["due_at"]
        params["new_offset_minutes"] = 0 if due is None else _offset_minutes(due)
    fields = tuple(sorted(changes))
    # Only a completion can create an occurrence: anything else is one statement, whatever the
    # task. A completion of a task that may recur (now or after this write) takes the locked path.
    completes = changes.get("completed") is True
    conditional = if_match is not None
    try:
        if not (completes and changes.get("recurrence") is not None):
            statement = _update_statement(fields, completing=completes, conditional=conditional)
            row = await _first(conn, statement, params)
            if row is not None:
                return Written(row)
            if not completes:
                if conditional:
                    raise await _refused(conn, user_id, task_id)
                raise TaskNotFound()
        statement = _update_statement(fields, locked=True)
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
    params = {**_key(user_id, task_id, if_match), "now": _now()}
    toggle = _TOGGLE if if_match is None else _TOGGLE_AT_VERSION
    row = await _first(conn, toggle, params)
    if row is not None:
        return Written(row)
    return await _write_locked(conn, _TOGGLE_LOCKED, params, if_match, max_tasks)


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
        version = (await conn.execute(_LOCK, params)).scalar()
        if version is None:
            raise TaskNotFound()
        if if_match is not None and version not in if_match:
            raise await _refused(conn, params["key_user"], params["key_id"])
        task = dict((await conn.execute(statement.statement, params)).mappings().one())
        if task["completed"] and task["recurrence"] and task["next_occurrence_id"] is None:
            occurrence = _next_occurrence(task, params["now"])
            if occurrence is not None:
                # The count with the owner's sync_state row locked, as a create reads it (the
                # completion's own change has locked it already on PostgreSQL).
                count = (await conn.execute(_TASK_COUNT, {"user_id": task["user_id"]})).scalar()
                if (count or 0) >= max_tasks:
                    skipped = True
                else:
                    created = await conn.execute(insert(task_table).returning(_t.id), occurrence)
                    link = {"key_id": task["id"], "next_id": created.scalar_one()}
                    await conn.execute(_LINK, link)
    return Written(_public(task), occurrence_skipped=skipped)


def next_due(
    anchor: datetime, *, offset_minutes: int, count: int, frequency: str, interval: int
) -> datetime | None:
    """Occurrence `count + 1` of a series that started at `anchor`, in the calendar of the UTC
    offset its due date was given in. Months and years are counted from the anchor, so a day
    missing from a month is that month's last day (Jan 31 → Feb 28/29 → Mar 31; Feb 29 yearly
    → Feb 28, and Feb 29 again in leap years). None past year 9999: the series ends there."""
    local = anchor.astimezone(timezone(timedelta(minutes=offset_minutes)))
    steps = (count + 1) * interval
    try:
        if frequency == "daily":
            return _storable((local + timedelta(days=steps)).astimezone(UTC))
        if frequency == "weekly":
            return _storable((local + timedelta(weeks=steps)).astimezone(UTC))
        months = steps * (12 if frequency == "yearly" else 1)
        year, month = divmod(local.month - 1 + months, 12)
        year += local.year
        day = min(local.day, calendar.monthrange(year, month + 1)[1])
        return _storable(local.replace(year=year, month=month + 1, day=day).astimezone(UTC))
    except (OverflowError, ValueError):
        return None


def _storable(when: datetime) -> datetime | None:
    """`when`, unless it is one of the two instants no task may hold (see TIME_MIN)."""
    return None if when in (TIME_MIN, TIME_MAX) else when


def _next_occurrence(task: dict[str, Any], now: datetime) -> dict[str, Any] | None:
    rule = task["recurrence"]
    due = next_due(
        task["recurrence_anchor"] or task["due_at"],
        offset_minutes=task["recurrence_offset_minutes"],
        count=task["recurrence_count"],
        frequency=rule["frequency"],
        interval=rule["interval"],
    )
    if due is None:
        return None
    remind = task["remind_at"]
    if remind is not None:
        # The same time before (or after) the due date; a reminder that would fall outside the
        # calendar is dropped, and the occurrence is still made.
        try:
            remind = _storable(due - (task["due_at"] - remind))
        except OverflowError:
            remind = None
    copied = ("user_id", "title", "description", "priority", "tags", "recurrence")
    internal = ("title_fold", "description_fold", "tag_keys", "recurrence_offset_minutes")
    return {
        **{name: task[name] for name in (*copied, *internal)},
        "due_at": due,
        "remind_at": remind,
        "recurrence_anchor": task["recurrence_anchor"] or task["due_at"],
        "recurrence_count": task["recurrence_count"] + 1,
        "completed": False,
        "created_at": now,
        "updated_at": now,
    }


async def delete_task(
    conn: AsyncConnection, *, user_id: str, task_id: int, if_match: Versions | None = None
) -> TaskRecord:
    """Delete the task (the database keeps its tombstone for the change feed)."""
    statement = _DELETE if if_match is None else _DELETE_AT_VERSION
    row = await _first(conn, statement, _key(user_id, task_id, if_match))
    if row is not None:
        return row
    if if_match is not None:
        raise await _refused(conn, user_id, task_id)
    raise TaskNotFound()


async def delete_tasks(conn: AsyncConnection, *, user_id: str, completed_only: bool) -> int:
    """Clear the user's completed tasks, or all of them."""
    statement = delete(task_table).where(_t.user_id == user_id)
    if completed_only:
        statement = statement.where(_t.completed)
    result = await conn.execute(statement)
    return int(result.rowcount)


# --- listing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Order:
    """A sort as the list runs it: SQL expressions, each ascending or not, ending with the id;
    and the same values computed from a returned task, for the cursor."""

    keys: tuple[tuple[ColumnElement[Any], bool], ...]

    def after(self, values: Sequence[Any]) -> ColumnElement[bool]:
        """Rows strictly after `values` in this order: (a > x) or (a = x and (b > y or …)).
        Led by a >= x, which that implies: an ordered index scan cannot start from the OR, so
        without it a deep page read every row before it (page 50 of 20: 1,000 rows)."""
        condition: ColumnElement[bool] | None = None
        for (expression, descending), value in reversed(list(zip(self.keys, values, strict=True))):
            beyond = expression < value if descending else expression > value
            condition = (
                beyond if condition is None else or_(beyond, and_(expression == value, condition))
            )
        assert condition is not None
        (first, descending), start = self.keys[0], values[0]
        return and_(first <= start if descending else first >= start, condition)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NO_DUE = case((_t.due_at.is_(None), 1), else_=0)
_DUE = func.coalesce(_t.due_at, literal(_EPOCH, UTCDateTime()))


def _order(sort: str) -> _Order:
    descending = sort.startswith("-")
    name = sort.removeprefix("-")
    if name == "due_at":
        # Tasks without a due date come last in both directions.
        return _Order(((_NO_DUE, False), (_DUE, descending), (_t.id, descending)))
    column = _t.title_fold if name == "title" else _t[name]
    return _Order(((column, descending), (_t.id, descending)))


def _sort_values(sort: str, task: TaskRecord) -> list[Any]:
    name = sort.removeprefix("-")
    if name == "due_at":
        due = task["due_at"]
        return [1 if due is None else 0, _EPOCH if due is None else due, task["id"]]
    if name == "title":
        return [fold(task["title"]), task["id"]]
    # A priority by its name: the column's type turns it into the stored rank (1..3).
    return [task[name], task["id"]]


@dataclass(frozen=True)
class _Shape:
    """Which filters a list query uses, and its sort: the statement for each shape is built
    once, its values bound per request, so SQLAlchemy finds the compiled SQL in its cache at
    once instead of building and keying a new statement for every request."""

    sort: str
    status: str
    priorities: bool
    tags: int
    q: bool
    due_before: bool
    due_after: bool
    overdue: bool
    remind_before: bool
    cursor: bool


_UNFILTERED = _Shape(
    sort="",
    status="all",
    priorities=False,
    tags=0,
    q=False,
    due_before=False,
    due_after=False,
    overdue=False,
    remind_before=False,
    cursor=False,
)


def _shape(query: TaskQuery) -> _Shape:
    return _Shape(
        sort=query.sort,
        status=query.status,
        priorities=bool(query.priority),
        tags=len(query.tag),
        q=query.q is not None,
        due_before=query.due_before is not None,
        due_after=query.due_after is not None,
        overdue=query.overdue,
        remind_before=query.remind_before is not None,
        cursor=query.cursor is not None,
    )


def _when(name: str) -> Any:
    return bindparam(name, type_=UTCDateTime())


def _filters(shape: _Shape) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [_t.user_id == bindparam("user_id")]
    if shape.status != "all":
        where.append(_t.completed if shape.status == "completed" else ~_t.completed)
    if shape.priorities:
        where.append(_t.priority.in_(bindparam("priorities", expanding=True)))
    for n in range(shape.tags):
        where.append(_t.tag_keys.like(bindparam(f"tag_{n}"), escape="\\"))
    if shape.q:
        where.append(
            or_(
                _t.title_fold.like(bindparam("q"), escape="\\"),
                _t.description_fold.like(bindparam("q"), escape="\\"),
            )
        )
    if shape.due_before:
        where.append(_t.due_at < _when("due_before"))
    if shape.due_after:
        where.append(_t.due_at >= _when("due_after"))
    if shape.overdue:
        where.append(~_t.completed & (_t.due_at < _when("now")))
    if shape.remind_before:
        where.append(~_t.completed & (_t.remind_at < _when("remind_before")))
    return where


def _filter_values(user_id: str, query: TaskQuery) -> dict[str, Any]:
    values: dict[str, Any] = {"user_id": user_id, "now": _now()}
    if query.priority:
        values["priorities"] = query.priority
    for n, tag in enumerate(query.tag):
        values[f"tag_{n}"] = f"%{_TAG_SEPARATOR}{_like(fold(tag))}{_TAG_SEPARATOR}%"
    if query.q is not None:
        values["q"] = f"%{_like(fold(query.q))}%"
    values.update(
        due_before=query.due_before,
        due_after=query.due_after,
        remind_before=query.remind_before,
    )
    return values


@lru_cache(maxsize=STATEMENTS_KEPT)
def _total(shape: _Shape) -> ColumnElement[Any]:
    """How many tasks match the filters: counted, or for the whole list (no filter, the list a
    frontend loads first) the count the database keeps in the user's sync_state row, which the
    same triggers that number each change keep (one row read, however many tasks)."""
    unfiltered = replace(shape, sort="", cursor=False) == _UNFILTERED
    if unfiltered:
        kept = select(_s.task_count).where(_s.user_id == bindparam("user_id")).scalar_subquery()
        return func.coalesce(kept, 0).label("total")
    counted = select(func.count()).select_from(task_table).where(*_filters(shape))
    return counted.scalar_subquery().label("total")


# The user's latest change, read in the list's own statement: a client that follows the change
# feed from it gets everything the list did not show, and nothing is missed between the two.
_SYNC_TOKEN = func.coalesce(
    select(_s.seq).where(_s.user_id == bindparam("user_id")).scalar_subquery(), 0
).label("sync_token")


@lru_cache(maxsize=STATEMENTS_KEPT)
def _empty_page_statement(shape: _Shape) -> db.Prepared:
    return db.prepare(select(_total(shape), _SYNC_TOKEN))


@lru_cache(maxsize=STATEMENTS_KEPT)
def _list_statement(shape: _Shape) -> db.Prepared:
    where = _filters(shape)
    order = _order(shape.sort)
    total = _total(replace(shape, cursor=False))
    statement = select(*PUBLIC_COLUMNS, total, _SYNC_TOKEN).where(*where)
    if shape.cursor:
        after = [
            bindparam(f"after_{n}", type_=expression.type)
            for n, (expression, _) in enumerate(order.keys)
        ]
        statement = statement.where(order.after(after))
    return db.prepare(
        statement.order_by(
            *(
                expression.desc() if descending else expression.asc()
                for expression, descending in order.keys
            )
        ).limit(bindparam("limit"))
    )


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class Page:
    tasks: list[TaskRecord]
    total: int
    cursor: str | None  # the next page's, while there is one
    sync_token: str  # where the change feed takes over from this list


async def list_tasks(conn: AsyncConnection, *, user_id: str, query: TaskQuery) -> Page:
    """One page of the user's tasks matching the query, in its order, by key (no OFFSET: page
    1,000 costs what page 1 costs, and a task inserted meanwhile is never returned twice),
    with the number of all the tasks that match."""
    shape = _shape(query)
    params = {**_filter_values(user_id, query), "limit": query.limit + 1}
    if query.cursor is not None:
        after = _decode_cursor(query.cursor, query.sort, _fingerprint(user_id, query))
        params.update((f"after_{n}", value) for n, value in enumerate(after))
    found = await db.fetch(conn, _list_statement(shape), params)
    # Rows to dicts by zipping names (a third of the cost of dict(row) over .mappings()); the
    # statement's last two columns, the same on every row, are the page's total and token.
    rows = [dict(zip(_PUBLIC_NAMES, row, strict=False)) for row in found]
    if found:
        total, token = found[0][-2:]
    else:
        statement = _empty_page_statement(replace(shape, cursor=False))
        (total, token), *_ = await db.fetch(conn, statement, params)
    cursor = None
    if len(rows) > query.limit:
        del rows[query.limit :]
        cursor = _encode_cursor(_sort_values(query.sort, rows[-1]), _fingerprint(user_id, query))
    return Page(tasks=rows, total=total, cursor=cursor, sync_token=str(token))


def _fingerprint(user_id: str, query: TaskQuery) -> str:
    # A cursor belongs to one user, sort and set of filters; `limit` may change between pages.
    described = query.model_dump(mode="json", exclude={"cursor", "limit"})
    return hashlib.sha256(
        orjson.dumps([user_id, described], option=orjson.OPT_SORT_KEYS)
    ).hexdigest()[:16]


def _encode_cursor(values: list[Any], fingerprint: str) -> str:
    encoded = [value.isoformat() if isinstance(value, datetime) else value for value in values]
    return _b64(orjson.dumps({"k": encoded, "f": fingerprint}))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: str, fingerprint: str) -> list[Any]:
    malformed = ValidationFailed("cursor: is not a cursor this service made", field="cursor")
    try:
        encoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        document = orjson.loads(encoded)
    except (ValueError, binascii.Error):
        raise malformed from None
    # Decoding skips what is not in the alphabet (and padding and unused bits may vary): only
    # the exact text this service wrote is a cursor, so one page has one spelling.
    if _b64(encoded) != cursor:
        raise malformed
    if not isinstance(document, dict) or not isinstance(document.get("k"), list):
        raise malformed
    if document.get("f") != fingerprint:
        raise ValidationFailed(
            "cursor: belongs to another query (its filters or sort differ); start again "
            "without a cursor",
            field="cursor",
        )
    values = document["k"]
    kinds = _CURSOR_KINDS.get(sort.removeprefix("-"), ("time", "id"))
    if len(values) != len(kinds):
        raise malformed
    try:
        return [_cursor_value(kind, value) for kind, value in zip(kinds, values, strict=True)]
    except (ValueError, OverflowError):
        raise malformed from None


# What each key of a cursor holds, by sort (see `_sort_values`).
_CURSOR_KINDS = {
    "due_at": ("no_due", "time", "id"),
    "title": ("text", "id"),
    "priority": ("priority", "id"),
}
# The fingerprint is no signature: a forged key must be a 422, never a driver's error (a 500).
_CURSOR_CHECKS = {
    "text": lambda value: isinstance(value, str) and "\x00" not in value,  # PostgreSQL: no NUL
    "priority": lambda value: value in PRIORITIES,
    "no_due": lambda value: type(value) is int and value in (0, 1),
    "id": lambda value: type(value) is int and -(2**63) <= value < 2**63,
}


def _cursor_value(kind: str, value: Any) -> Any:
    if kind != "time":
        if not _CURSOR_CHECKS[kind](value):
            raise ValueError(f"not a {kind}")
        return value
    when = datetime.fromisoformat(value) if isinstance(value, str) else None
    if when is None or when.tzinfo is None:
        raise ValueError("not a time with an offset")
    when.astimezone(UTC)  # OverflowError beyond years 1..9999 in UTC
    return when


# --- the change feed -----------------------------------------------------------------------------

# Deleted tasks are remembered this long; a sync token older than the deletions forgotten since
# is expired, and its client starts over from a full list.
TOMBSTONE_DAYS = 30
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
    if not (token.isascii() and token.isdigit() and len(token) <= 18):
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
    items = [(row["seq"], row["id"], None if row["gone"] else _public(row)) for row in rows]
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
