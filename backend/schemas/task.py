"""Request and response shapes. Inputs ignore unknown and read-only fields on purpose (clients
send back whole objects), refuse wrong JSON types, and carry the column limits."""

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, StrictBool, StrictStr, field_validator

from backend.models.task import DESCRIPTION_MAX, TITLE_MAX

# C0 controls; tab, line feed and carriage return are allowed in descriptions only.
_CONTROL = {chr(c) for c in range(0x20)}
_CONTROL_IN_TEXT = _CONTROL - {"\t", "\n", "\r"}


def _refuse_unstorable(value: str, forbidden: set[str]) -> str:
    if not forbidden.isdisjoint(value):
        raise ValueError("must not contain control characters (such as NUL)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800" from JSON
        raise ValueError("must be valid Unicode text (no unpaired surrogates)") from None
    return value


def _clean_title(value: str) -> str:
    value = _refuse_unstorable(value.strip(), _CONTROL)
    if not value:
        raise ValueError("must not be empty")
    if len(value) > TITLE_MAX:
        raise ValueError(f"must be at most {TITLE_MAX} characters")
    return value


def _clean_description(value: str) -> str:
    value = _refuse_unstorable(value, _CONTROL_IN_TEXT)
    if len(value) > DESCRIPTION_MAX:
        raise ValueError(f"must be at most {DESCRIPTION_MAX} characters")
    return value


Title = Annotated[StrictStr, AfterValidator(_clean_title)]
Description = Annotated[StrictStr, AfterValidator(_clean_description)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TaskCreate(_Input):
    title: Title
    description: Description | None = None
    completed: StrictBool = False


class TaskReplace(_Input):
    """PUT: every writable field is required; `description` may be null."""

    title: Title
    description: Description | None
    completed: StrictBool


class TaskUpdate(_Input):
    """PATCH: only the fields sent change. `title` and `completed` may be absent, not null."""

    title: Title | None = None
    description: Description | None = None
    completed: StrictBool | None = None

    @field_validator("title", "completed")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("may be left out, but not set to null")
        return value


class CompleteBody(_Input):
    """Body of PATCH …/complete: `{"completed": bool}` sets it; no body or `{}` toggles."""

    completed: StrictBool | None = None


class TaskRead(BaseModel):
    id: int
    user_id: str
    title: str
    description: str | None
    completed: bool
    created_at: datetime
    updated_at: datetime
