"""The rules of a task's fields, as validators and as the JSON Schema that states them: one-line
texts (title, tags), the multi-line description, datetimes with an offset, priorities in any
letter case, and the fields that may be left out but are never null."""

import re
import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    Field,
    StrictBool,
    StrictStr,
    WithJsonSchema,
)

from backend.models.task import (
    CONTROL_CHARACTER,
    CONTROL_CHARACTER_IN_TEXT,
    CONTROL_CLASS,
    DESCRIPTION_MAX,
    PRIORITIES,
    TAG_MAX,
    TAGS_MAX,
    TEXT_CONTROL_CLASS,
    TIME_MAX,
    TIME_MIN,
    TITLE_MAX,
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


def clean_line(value: str, limit: int) -> str:
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
    return clean_line(value, TITLE_MAX)


def _clean_tags(tags: list[str]) -> list[str]:
    # Duplicates are dropped case-insensitively ("Work" and "work" are one tag); the first
    # spelling and the order are kept.
    seen: set[str] = set()
    unique = []
    for tag in tags:
        tag = clean_line(tag, TAG_MAX)
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
PRIORITY_DESCRIPTION = f"{', '.join(PRIORITIES)}, in any letter case (returned lowercase)"
PriorityInput = Annotated[
    PriorityName,
    BeforeValidator(_lower),
    WithJsonSchema(
        {"type": "string", "enum": PRIORITY_SPELLINGS, "description": PRIORITY_DESCRIPTION}
    ),
]
# Fields that may be left out of a body but are never null.
Completed = Annotated[StrictBool, BeforeValidator(_not_null)]
OptionalTitle = Annotated[Title, BeforeValidator(_not_null)]
Priority = Annotated[PriorityInput, BeforeValidator(_not_null)]
TagList = Annotated[Tags, BeforeValidator(_not_null)]
