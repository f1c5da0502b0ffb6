"""Request and response shapes. Inputs ignore unknown and read-only fields on purpose (clients
send back whole objects), refuse wrong JSON types, and carry the column limits (the fields'
rules are schemas/fields.py's).

"Left out" and "null" differ: a field left out of a PUT or PATCH keeps its value (the MISSING
sentinel, which `model_dump` drops), `"description": null` clears the description, and a null
title or completed is refused. The OpenAPI document says the same: no `null` where none is taken.
"""

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    MISSING,
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationInfo,
    field_validator,
)

from backend.models.task import INTERVAL_MAX, PRIORITIES, TAG_MAX, TAGS_MAX, Frequency, PriorityName
from backend.schemas.fields import (
    PRIORITY_DESCRIPTION,
    Completed,
    Description,
    OptionalTitle,
    Priority,
    PriorityInput,
    TagList,
    Title,
    When,
    clean_line,
    line_pattern,
)

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
    return clean_line(value, TAG_MAX)


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
        Field(description=f"one or more of {PRIORITY_DESCRIPTION}, comma-separated"),
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
        AfterValidator(lambda v: v if v is None else clean_line(v, QUERY_TEXT_MAX)),
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
