"""The statements of one task's reads and writes (services/tasks.py runs them).

Prepared once, as module constants, or built per shape of a write (which fields it sets, whether
it completes, whether If-Match applies) by builders that keep the STATEMENTS_KEPT most recently
used: the values are bound per request.
"""

from functools import lru_cache
from typing import Any

from sqlalchemy import Integer, bindparam, case, delete, insert, or_, select, text, update

from backend import db
from backend.models.task import UTCDateTime
from backend.services.tables import (
    PUBLIC_COLUMNS,
    STATEMENTS_KEPT,
    fold,
    owned,
    sync_table,
    tag_keys,
    task_table,
)

_t = task_table.c
_s = sync_table.c
_NOW = bindparam("now", type_=UTCDateTime())

# If-Match: the task must be at one of these versions.
AT_VERSION = _t.version.in_(bindparam("if_versions", expanding=True))

GET = db.prepare(select(*PUBLIC_COLUMNS).where(owned))
# The same SQL on SQLite and PostgreSQL.
ENSURE_SYNC_STATE = text(
    "INSERT INTO sync_state (user_id) VALUES (:user_id) ON CONFLICT (user_id) DO NOTHING"
)
DELETE = db.prepare(delete(task_table).where(owned).returning(*PUBLIC_COLUMNS))
DELETE_AT_VERSION = db.prepare(
    delete(task_table).where(owned & AT_VERSION).returning(*PUBLIC_COLUMNS)
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
    .where(owned & _t.recurrence.is_(None))
    .values(_TOGGLE_VALUES)
    .returning(*PUBLIC_COLUMNS)
)
TOGGLE = db.prepare(_TOGGLE_ANY)
TOGGLE_AT_VERSION = db.prepare(_TOGGLE_ANY.where(AT_VERSION))
TOGGLE_LOCKED = db.prepare(update(task_table).where(owned).values(_TOGGLE_VALUES).returning(*_t))
LOCK = select(_t.version).where(owned).with_for_update()
LINK = (
    update(task_table)
    .where(_t.id == bindparam("key_id"))
    .values(next_occurrence_id=bindparam("next_id"))
)
CLEAR = delete(task_table).where(_t.user_id == bindparam("user_id"))
CLEAR_COMPLETED = CLEAR.where(_t.completed)
INSERT_OCCURRENCE = insert(task_table).returning(_t.id)
TASK_COUNT = select(_s.task_count).where(_s.user_id == bindparam("user_id")).with_for_update()


# The internal columns that follow from a public field, and how.
DERIVED = {
    "title": ("title_fold", fold),
    "description": ("description_fold", lambda text: None if text is None else fold(text)),
    "tags": ("tag_keys", tag_keys),
}


def derived(changes: dict[str, Any]) -> dict[str, Any]:
    return {
        column: derive(changes[name])
        for name, (column, derive) in DERIVED.items()
        if name in changes
    }


@lru_cache(maxsize=STATEMENTS_KEPT)
def create_statement(names: tuple[str, ...]) -> db.Prepared:
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


@lru_cache(maxsize=STATEMENTS_KEPT)
def update_statement(
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
        if name in DERIVED:
            column = DERIVED[name][0]
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
    where = owned & _t.recurrence.is_(None) if completing else owned
    if conditional:
        where &= AT_VERSION
    return db.prepare(
        update(task_table)
        .where(where)
        .values(values)
        .returning(*(_t if locked else PUBLIC_COLUMNS))
    )
