"""The error body, for the OpenAPI document (errors.py renders it)."""

from pydantic import BaseModel

from backend.schemas.task import TaskRead


class FieldProblem(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    detail: str
    code: str
    field: str | None = None
    errors: list[FieldProblem] | None = None


class PreconditionFailedBody(ErrorBody):
    current: TaskRead
