"""Request and response shapes. Inputs ignore unknown and read-only fields on purpose (clients
send back whole objects), refuse wrong JSON types, and carry the column limits.

"Left out" and "null" differ: a field left out of a PUT or PATCH keeps its value (the MISSING
sentinel, which `model_dump` drops), `"description": null` clears the description, and a null
title or completed is refused. The OpenAPI document says the same: no `null` where none is taken.
"""

import unicodedata
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    MISSING,
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
)

from backend.models.task import (
    CONTROL_CHARACTER,
    CONTROL_CHARACTER_IN_TEXT,
    DESCRIPTION_MAX,
    TITLE_MAX,
)

# Characters that show nothing on their own: white space of every kind and format characters
# such as the zero-width space (U+200B) or the BOM. A title made only of these is empty.
_INVISIBLE_CATEGORIES = {"Zs", "Zl", "Zp", "Cf"}


def _storable(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800" from JSON
        raise ValueError("must be valid Unicode text (no unpaired surrogates)") from None
    return value


def _clean_title(value: str) -> str:
    # Checked before trimming too: str.strip() would silently drop a C1 control such as U+0085
    # (tab and line breaks around the title are only white space, and trimmed).
    value = value.strip() if not CONTROL_CHARACTER_IN_TEXT.search(value) else "\x00"
    if CONTROL_CHARACTER.search(value):
        raise ValueError("must not contain control characters")
    value = _storable(value)
    if all(unicodedata.category(c) in _INVISIBLE_CATEGORIES or c.isspace() for c in value):
        raise ValueError("must not be empty (it has no visible character)")
    if len(value) > TITLE_MAX:
        raise ValueError(f"must be at most {TITLE_MAX} characters")
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
        json_schema_extra={"minLength": 1, "maxLength": TITLE_MAX},
        description=f"1 to {TITLE_MAX} characters after trimming surrounding white space",
    ),
]
Description = Annotated[
    StrictStr,
    AfterValidator(_clean_description),
    Field(json_schema_extra={"maxLength": DESCRIPTION_MAX}),
]
# Fields that may be left out of a body but are never null.
Completed = Annotated[StrictBool, BeforeValidator(_not_null)]
OptionalTitle = Annotated[Title, BeforeValidator(_not_null)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TaskCreate(_Input):
    title: Title
    description: Description | None = None
    completed: Completed = False


class TaskReplace(_Input):
    """PUT, the spec's update: `title` is required, every other field changes only if sent."""

    title: Title
    description: Description | MISSING | None = MISSING
    completed: Completed | MISSING = MISSING


class TaskUpdate(_Input):
    """PATCH: only the fields sent change; `{}` changes nothing."""

    title: OptionalTitle | MISSING = MISSING
    description: Description | MISSING | None = MISSING
    completed: Completed | MISSING = MISSING


class CompleteBody(_Input):
    """Body of PATCH …/complete: `{"completed": bool}` sets it; no body or `{}` toggles."""

    completed: Completed | MISSING = MISSING


class TaskRead(BaseModel):
    id: int
    user_id: str
    title: str
    description: str | None
    completed: bool
    created_at: datetime
    updated_at: datetime
