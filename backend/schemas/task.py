"""Request and response shapes. Inputs ignore unknown and read-only fields on purpose (clients
send back whole objects), refuse wrong JSON types, and carry the column limits.

"Left out" and "null" differ: a field left out of a PUT or PATCH keeps its value (the MISSING
sentinel, which `model_dump` drops), `"description": null` clears the description, and a null
title or completed is refused. The OpenAPI document says the same: no `null` where none is taken.
"""

import re
import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    MISSING,
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from backend.models.task import (
    CONTROL_CHARACTER,
    CONTROL_CHARACTER_IN_TEXT,
    CONTROL_CLASS,
    DESCRIPTION_MAX,
    INTERVAL_MAX,
    PRIORITIES,
    TAG_MAX,
    TAGS_MAX,
    TEXT_CONTROL_CLASS,
    TIME_MAX,
    TIME_MIN,
    TITLE_MAX,
    Frequency,
    PriorityName,
)

# Characters that show nothing on their own: white space of every kind and format characters
# such as the zero-width space (U+200B) or the BOM. A title made only of these is empty.
_INVISIBLE_CATEGORIES = {"Zs", "Zl", "Zp", "Cf"}
# The same rules as JSON Schema patterns (ECMA and Python regex alike), so that the OpenAPI
# document says exactly what is accepted: a line is trimmed of white space, and what is left
# starts and ends with a visible character, holds no control character and is 1..limit long
# (so the limit is in the pattern: a maxLength would count the white space trimmed off).
_SPACE = "\\t\\n\\r \\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
_FORMAT = "\\u00ad\\u061c\\u180e\\u200b-\\u200f\\u202a-\\u202e\\u2060-\\u206f\\ufeff"
_EDGE = f"[^{CONTROL_CLASS}{_SPACE}{_FORMAT}]"


def line_pattern(limit: int) -> str:
    return f"^[{_SPACE}]*({_EDGE}|{_EDGE}[^{CONTROL_CLASS}]{{0,{limit - 2}}}{_EDGE})[{_SPACE}]*$"


TEXT_PATTERN = f"^[^{TEXT_CONTROL_CLASS}]*$"


def _storable(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800" from JSON
        raise ValueError("must be valid Unicode text (no unpaired surrogates)") from None
    return value


def _clean_line(value: str, limit: int) -> str:
    """A one-line text (title, tag): trimmed, with a visible character, no control character."""
    # Checked before trimming too: str.strip() would silently drop a C1 control such as U+0085
    # (tab and line breaks around it are only white space, and trimmed).
    value = value.strip() if not CONTROL_CHARACTER_IN_TEXT.search(value) else "\x00"
    if CONTROL_CHARACTER.search(value):
        raise ValueError("must not contain control characters")
    value = _storable(value)
    if all(unicodedata.category(c) in _INVISIBLE_CATEGORIES or c.isspace() for c in value):
        raise ValueError("must not be empty (it has no visible character)")
    if len(value) > limit:
        raise ValueError(f"must be at most {limit} characters")
    return value


def _clean_title(value: str) -> str:
    return _clean_line(value, TITLE_MAX)


def _clean_tags(tags: list[str]) -> list[str]:
    # Duplicates are dropped case-insensitively ("Work" and "work" are one tag); the first
    # spelling and the order are kept.
    seen: set[str] = set()
    unique = []
    for tag in tags:
        tag = _clean_line(tag, TAG_MAX)
        if tag.casefold() not in seen:
            seen.add(tag.casefold())
            unique.append(tag)
    if len(unique) > TAGS_MAX:
        raise ValueError(f"must hold at most {TAGS_MAX} tags")
    return unique


_ISO_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _text_only(value: Any) -> Any:
    # pydantic would read a number, or a string of digits, as seconds since 1970: a date must
    # be written as one.
    if value is not None and not (isinstance(value, str) and _ISO_DATE_TIME.match(value)):
        raise ValueError("must be an ISO-8601 date and time with an offset, as a string")
    return value


def _in_range(value: datetime) -> datetime:
    # Kept in the offset it was sent with: a recurrence counts days in the sender's calendar.
    try:
        utc = value.astimezone(UTC)
    except OverflowError:  # "0001-01-01T00:00:00+01:00" is before year 1 in UTC
        raise ValueError("is out of range") from None
    if utc in (TIME_MIN, TIME_MAX):  # PostgreSQL would store them as ±infinity
        raise ValueError(
            f"is out of range: it must lie after {TIME_MIN:%Y-%m-%dT%H:%M:%S.%fZ} and before "
            f"{TIME_MAX:%Y-%m-%dT%H:%M:%S.%fZ}"
        )
    return value


def _clean_description(value: str) -> str:
    if CONTROL_CHARACTER_IN_TEXT.search(value):
        raise ValueError("must not contain control characters other than tab and line breaks")
    value = _storable(value)
    if len(value) > DESCRIPTION_MAX:
        raise ValueError(f"must be at most {DESCRIPTION_MAX} characters")
    return value


def _not_null(value: Any) -> Any:
    if value is None:
        raise ValueError("may be left out, but not set to null")
    return value


# The limits apply after trimming, which a JSON schema cannot say; the document states them
# anyway so that generated clients and form validators know them.
Title = Annotated[
    StrictStr,
    AfterValidator(_clean_title),
    Field(
        json_schema_extra={"pattern": line_pattern(TITLE_MAX)},
        description=f"1 to {TITLE_MAX} characters after trimming surrounding white space",
    ),
]
Description = Annotated[
    StrictStr,
    AfterValidator(_clean_description),
    Field(json_schema_extra={"maxLength": DESCRIPTION_MAX, "pattern": TEXT_PATTERN}),
]
Tags = Annotated[
    list[StrictStr],
    AfterValidator(_clean_tags),
    Field(
        json_schema_extra={
            "maxItems": TAGS_MAX,
            "items": {"type": "string", "pattern": line_pattern(TAG_MAX)},
        },
        description=f"at most {TAGS_MAX} tags of 1 to {TAG_MAX} characters; duplicates (in any "
        "case) are dropped, the order is kept",
    ),
]
When = Annotated[
    AwareDatetime,
    BeforeValidator(_text_only),
    AfterValidator(_in_range),
    Field(description="ISO-8601 with an offset or Z, e.g. 2026-12-01T09:00:00+01:00"),
]


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


# A priority as frontends send it: the name in any letter case ("MEDIUM" from an enum, "Medium"
# from a label), returned lowercase. The document lists the spellings clients use, so that a
# generated client still refuses an unknown level.
PRIORITY_SPELLINGS = [
    spelling for name in PRIORITIES for spelling in (name, name.upper(), name.capitalize())
]
_PRIORITY_DESCRIPTION = f"{', '.join(PRIORITIES)}, in any letter case (returned lowercase)"
PriorityInput = Annotated[
    PriorityName,
    BeforeValidator(_lower),
    WithJsonSchema(
        {"type": "string", "enum": PRIORITY_SPELLINGS, "description": _PRIORITY_DESCRIPTION}
    ),
]
# Fields that may be left out of a body but are never null.
Completed = Annotated[StrictBool, BeforeValidator(_not_null)]
OptionalTitle = Annotated[Title, BeforeValidator(_not_null)]
Priority = Annotated[PriorityInput, BeforeValidator(_not_null)]
TagList = Annotated[Tags, BeforeValidator(_not_null)]


# The task the document's examples show. Examples hold no null: FastAPI leaves every None out
# of the OpenAPI document, so a null in an example would come out as a missing field.
EXAMPLE_TASK: dict[str, Any] = {
    "id": 17,
    "user_id": "kX9f2LwQ",
    "title": "Pay rent",
    "description": "Transfer before the 1st",
    "completed": True,
    "created_at": "2026-11-26T12:00:00Z",
    "updated_at": "2026-11-27T08:30:00Z",
    "priority": "high",
    "tags": ["home", "money"],
    "due_at": "2026-12-01T09:00:00Z",
    "remind_at": "2026-11-30T18:00:00Z",
    "recurrence": {"frequency": "monthly", "interval": 1},
    "completed_at": "2026-11-27T08:30:00Z",
    "version": 2,
}


class Recurrence(BaseModel):
    """Repeat every `interval` days, weeks, months or years, counted from the first due date."""

    model_config = ConfigDict(extra="ignore")

    frequency: Frequency
    interval: Annotated[StrictInt, Field(ge=1, le=INTERVAL_MAX)] = 1


class RecurrenceRead(Recurrence):
    """A task's recurrence as responses show it: `interval` is always there."""

    interval: int


class _Input(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TaskUpdate(_Input):
    """PATCH: only the fields sent change; `{}` changes nothing.

    The one declaration of the task's writable fields: PUT and POST take the same fields, with
    the title required; what is left out of a POST gets the table's default."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"completed": True}, {"priority": "low", "tags": []}]}
    )

    title: OptionalTitle | MISSING = MISSING
    description: Description | MISSING | None = MISSING
    completed: Completed | MISSING = MISSING
    priority: Priority | MISSING = MISSING
    tags: TagList | MISSING = MISSING
    due_at: When | MISSING | None = MISSING
    remind_at: When | MISSING | None = MISSING
    recurrence: Recurrence | MISSING | None = MISSING

    @field_validator("recurrence")
    @classmethod
    def _recurrence_needs_due_at(cls, value: Any, info: ValidationInfo) -> Any:
        # What the body alone shows (`due_at` is validated first); a PATCH of only one of the
        # two is checked by the database (a CHECK constraint).
        if value is not None and info.data.get("due_at", MISSING) in cls._NO_DUE_DATE:
            raise ValueError("a recurring task needs a due_at")
        return value

    _NO_DUE_DATE: ClassVar[tuple[Any, ...]] = (None,)


class TaskReplace(TaskUpdate):
    """PUT, the spec's update: `title` is required, every other field changes only if sent."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"title": "Pay rent", "description": "Before the 1st", "completed": True}]
        }
    )

    title: Title


class TaskCreate(TaskUpdate):
    """POST: `title` is required; defaults: medium priority, no tags, no dates, not completed.
    A `recurrence` needs a `due_at`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"title": "Buy milk"},
                {
                    "title": "Pay rent",
                    "description": "Transfer before the 1st",
                    "priority": "high",
                    "tags": ["home", "money"],
                    "due_at": "2026-12-01T09:00:00Z",
                    "remind_at": "2026-11-30T18:00:00Z",
                    "recurrence": {"frequency": "monthly", "interval": 1},
                },
            ]
        }
    )

    title: Title
    _NO_DUE_DATE = (None, MISSING)


class CompleteBody(_Input):
    """Body of PATCH …/complete: `{"completed": bool}` sets it; no body or `{}` toggles."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"completed": True}, {}]})

    completed: Completed | MISSING = MISSING


class TaskRead(BaseModel):
    """The task as every response shows it: the one list of its public fields (services return
    exactly these columns, and tests check the inputs and the table against it)."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_TASK]})

    id: int
    user_id: str
    title: str
    description: str | None
    completed: bool
    created_at: datetime
    updated_at: datetime
    priority: PriorityName
    tags: list[str]
    due_at: datetime | None
    remind_at: datetime | None
    recurrence: RecurrenceRead | None
    completed_at: datetime | None
    version: int = Field(description="1 on create, +1 on each change; the ETag is its quoted value")


class ChangesRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"changed": [EXAMPLE_TASK], "deleted": [12, 15], "next": "2841", "has_more": False}
            ]
        }
    )

    changed: list[TaskRead] = Field(description="created or changed tasks, as they are now")
    deleted: list[int] = Field(description="ids of deleted tasks")
    next: str = Field(description="the sync token to ask with next time")
    has_more: bool = Field(description="true: there is more already; ask again at once")


def _priorities(value: Any) -> Any:
    # ?priority=high,medium (comma-separated, as the contract says), or repeated; any case.
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        return [
            part.strip().lower()
            for item in value
            if isinstance(item, str)
            for part in item.split(",")
        ]
    return value


QUERY_TEXT_MAX = 100


def _clean_query_tag(value: str) -> str:
    return _clean_line(value, TAG_MAX)


def _query_datetime(value: Any) -> Any:
    # In a query string every value is text, and pydantic would read "1700000000" as seconds
    # since 1970; and a + that was not sent as %2B arrives as a space.
    if isinstance(value, str):
        if value.replace(".", "", 1).isdigit():
            raise ValueError("must be an ISO-8601 date and time with an offset, not a number")
        if " " in value[11:]:
            raise ValueError(
                "must be an ISO-8601 date and time with an offset; send the offset's + as %2B "
                "(a + in a query string means a space)"
            )
    return value


QueryWhen = Annotated[When, BeforeValidator(_query_datetime)]
SortKey = Literal[
    "created_at",
    "-created_at",
    "updated_at",
    "-updated_at",
    "due_at",
    "-due_at",
    "priority",
    "-priority",
    "title",
    "-title",
]
MAX_LIST_LIMIT = 500


class TaskQuery(BaseModel):
    """The list's query parameters. Unknown parameters are ignored; a bad value of a known one
    is 422 naming it."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["all", "pending", "completed"] = "all"
    priority: Annotated[
        list[PriorityInput] | None,
        BeforeValidator(_priorities),
        Field(description=f"one or more of {_PRIORITY_DESCRIPTION}, comma-separated"),
    ] = None
    tag: Annotated[
        list[
            Annotated[
                str,
                AfterValidator(_clean_query_tag),
                Field(json_schema_extra={"pattern": line_pattern(TAG_MAX)}),
            ]
        ],
        Field(max_length=TAGS_MAX, description="repeatable: a task must have every tag given"),
    ] = []
    q: Annotated[
        str | None,
        # A line like a title: 1 to 100 characters after trimming, in the pattern (a maxLength
        # would count the white space trimmed off).
        AfterValidator(lambda v: v if v is None else _clean_line(v, QUERY_TEXT_MAX)),
        Field(
            json_schema_extra={"pattern": line_pattern(QUERY_TEXT_MAX)},
            description="case-insensitive text in title or description, 1 to 100 characters",
        ),
    ] = None
    due_before: QueryWhen | None = None
    due_after: QueryWhen | None = None
    overdue: bool = Field(default=False, description="true: not completed and due in the past")
    remind_before: QueryWhen | None = None
    sort: SortKey = Field(
        default="-created_at",
        description="a leading - for descending; ties are broken by id; tasks without due_at "
        f"come last either way; priority ascending is {PRIORITIES[0]} to {PRIORITIES[-1]}",
    )
    limit: int = Field(default=MAX_LIST_LIMIT, ge=1, le=MAX_LIST_LIMIT)
    cursor: Annotated[str | None, Field(min_length=1, max_length=1000)] = None


class DeletedCount(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"deleted": 3}]})

    deleted: int
