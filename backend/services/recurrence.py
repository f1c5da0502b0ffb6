"""Recurrence: the calendar arithmetic of a series, pure (no database, no clock).

A series is anchored to its first occurrence, in the UTC offset its due date was sent with:
occurrence n falls n steps after the anchor, so a monthly task on Jan 31 falls on Feb 28/29,
then Mar 31, and a yearly one on Feb 29 on Feb 28 in other years.
"""

import calendar
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from backend.models.task import TIME_MAX, TIME_MIN


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


def offset_minutes(when: datetime) -> int:
    """The UTC offset a time was given in, in minutes: the calendar its series counts in."""
    offset = when.utcoffset()
    return 0 if offset is None else int(offset.total_seconds() // 60)


def _storable(when: datetime) -> datetime | None:
    """`when`, unless it is one of the two instants no task may hold (see TIME_MIN)."""
    return None if when in (TIME_MIN, TIME_MAX) else when


def next_occurrence(task: dict[str, Any], now: datetime) -> dict[str, Any] | None:
    """The row of the occurrence after `task` (a row with the internal columns too), created
    at `now`; None when the series has ended."""
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
