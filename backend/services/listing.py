"""Listing a user's tasks: filters, sort, cursors, one page and the count of all that match.

A list is paged by key, not by OFFSET: page 1,000 costs what page 1 costs, and a task inserted
while a client pages is never returned twice. The statement for each shape of query (which
filters, which sort, a cursor or not) is built once, its values bound per request; an empty
page asks for the total count on its own.
"""

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, bindparam, case, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from backend import db
from backend.errors import ValidationFailed
from backend.models.task import ID_MAX, PRIORITIES, UTCDateTime
from backend.schemas.task import TaskQuery
from backend.services import tables
from backend.services.tables import (
    PUBLIC_COLUMNS,
    PUBLIC_NAMES,
    STATEMENTS_KEPT,
    TAG_SEPARATOR,
    TaskRecord,
    fold,
    sync_table,
    task_table,
)

_t = task_table.c
_s = sync_table.c


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
    values: dict[str, Any] = {"user_id": user_id, "now": tables.now()}
    if query.priority:
        values["priorities"] = query.priority
    for n, tag in enumerate(query.tag):
        values[f"tag_{n}"] = f"%{TAG_SEPARATOR}{_like(fold(tag))}{TAG_SEPARATOR}%"
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
    # Rows to dicts by zipping names (cheaper than dict(row) over .mappings()); the
    # statement's last two columns, the same on every row, are the page's total and token.
    rows = [dict(zip(PUBLIC_NAMES, row, strict=False)) for row in found]
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
    "id": lambda value: type(value) is int and -ID_MAX - 1 <= value <= ID_MAX,
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
