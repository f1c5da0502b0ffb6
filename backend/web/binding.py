"""A request's parameters bound to a handler's arguments, without FastAPI's dependency solving.

FastAPI solves each request's parameters generically: for every parameter of every request it
works out again where the value comes from, whether its type is a sequence, which aliases it
has, and it runs the dependencies in exit stacks: a large share of a request's CPU time
(bench/README.md). A `Binder` works all of that out once, when the route is made, and per
request only reads the values and runs each parameter's own validator (the same pydantic
validator, with the same location, that FastAPI runs); the marker dependencies
(web/dependencies.py) it supplies from what the pipeline set, without solving them.

It binds only what it can bind exactly: a request whose values all validate. A missing or
invalid value is left to FastAPI, which then answers with its own 422 as before; a handler with
a parameter of a kind it does not bind (cookies, security scopes, other dependencies) gets no
binder at all (TaskRoute refuses such a handler). So the errors are FastAPI's, and a valid
request gets the same arguments either way (`tests/test_binding.py` compares them).
"""

from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

from fastapi._compat import ModelField, field_annotation_is_sequence
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import _get_param_aliases, _get_param_model
from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from starlette.requests import Request

# Where a parameter's value comes from: the request, or something the route provides.
Provided = dict[Callable[..., Any], Callable[[Request], Any]]


@dataclass(frozen=True, slots=True)
class _Scalar:
    """A path, query or header parameter that takes one value."""

    name: str
    source: str  # "path", "query" or "header"
    keys: tuple[str, ...]  # the request keys it may come under, in FastAPI's order of preference
    field: ModelField
    default: Any  # a callable making the default, or None when the value is required

    def bind(self, sources: dict[str, Any]) -> tuple[Any, bool]:
        received = sources[self.source]
        key = next((key for key in self.keys if key in received), self.keys[0])
        raw = received.get(key)
        if raw is None:
            if self.default is None:
                return None, False  # required: FastAPI says so
            return self.default(), True
        value, errors = self.field.validate(raw, {}, loc=(self.source, key))
        return value, not errors


@dataclass(frozen=True, slots=True)
class _QueryModel:
    """A pydantic model of query parameters (`Annotated[Model, Query()]`): each of its fields
    from its key, a sequence field from every occurrence of its key."""

    name: str
    fields: tuple[tuple[str, bool], ...]  # (key, is a sequence)
    field: ModelField

    def bind(self, sources: dict[str, Any]) -> tuple[Any, bool]:
        received = sources["query"]
        values: dict[str, Any] = {}
        for key, sequence in self.fields:
            if sequence:
                many = received.getlist(key)
                if many:
                    values[key] = many
            elif (one := received.get(key)) is not None:
                values[key] = one
        value, errors = self.field.validate(values, {}, loc=("query",))
        return value, not errors


@dataclass(frozen=True, slots=True)
class _Body:
    """The JSON body as one parameter (not embedded): the parsed document, or its default when
    the body is empty."""

    name: str
    field: ModelField
    default: Any

    def bind(self, sources: dict[str, Any]) -> tuple[Any, bool]:
        body = sources["body"]
        if body is PydanticUndefined:
            if self.default is None:
                return None, False
            return self.default(), True
        value, errors = self.field.validate(body, {}, loc=("body",))
        return value, not errors


class Binder:
    """Binds one route's parameters; `None` from `bind` means "let FastAPI do it"."""

    def __init__(
        self,
        steps: list[_Scalar | _QueryModel | _Body],
        provided: list[tuple[str, Callable[[Request], Any]]],
        request_name: str | None,
    ) -> None:
        self._steps = steps
        self._provided = provided
        self._request_name = request_name

    @classmethod
    def for_dependant(cls, dependant: Dependant, provided: Provided) -> "Binder | None":
        """A binder for this handler's parameters, or None when one of them is of a kind it
        does not bind (cookies, security scopes, dependencies other than `provided`…)."""
        if (
            dependant.cookie_params
            or dependant.own_oauth_scopes
            or dependant.background_tasks_param_name
            or dependant.response_param_name
            or dependant.http_connection_param_name
            or dependant.websocket_param_name
            or dependant.security_scopes_param_name
        ):
            return None
        given: list[tuple[str, Callable[[Request], Any]]] = []
        for dependency in dependant.dependencies:
            make = provided.get(dependency.call)  # type: ignore[arg-type]
            if make is None or dependency.name is None:
                return None
            given.append((dependency.name, make))
        steps: list[_Scalar | _QueryModel | _Body] = []
        for source, fields in (
            ("path", dependant.path_params),
            ("query", dependant.query_params),
            ("header", dependant.header_params),
        ):
            for field in fields:
                step = _param_step(source, field)
                if step is None:
                    return None
                steps.append(step)
        if dependant.body_params:
            if len(dependant.body_params) != 1 or _embeds(dependant.body_params[0]):
                return None
            field = dependant.body_params[0]
            steps.append(_Body(field.name, field, _default_maker(field)))
        return cls(steps, given, dependant.request_param_name)

    def bind(self, request: Request, body: Any) -> dict[str, Any] | None:
        """The handler's arguments for this request; None if FastAPI must answer instead.
        `body` is the parsed JSON body, or PydanticUndefined when there is none."""
        sources = {
            "path": request.path_params,
            "query": request.query_params,
            "header": request.headers,
            "body": body,
        }
        arguments: dict[str, Any] = {}
        for step in self._steps:
            value, ok = step.bind(sources)
            if not ok:
                return None
            arguments[step.name] = value
        for name, make in self._provided:
            arguments[name] = make(request)
        if self._request_name is not None:
            arguments[self._request_name] = request
        return arguments


def _embeds(field: ModelField) -> bool:
    return bool(getattr(field.field_info, "embed", False))


def _default_maker(field: ModelField) -> Callable[[], Any] | None:
    """What FastAPI does for a value that was not sent: None when it is required (FastAPI
    answers), else a maker of the default (copied, as FastAPI copies it; validated when the
    field asks for that)."""
    info = field.field_info
    if info.is_required():
        return None
    if info.validate_default:
        return None  # rare; FastAPI validates the default itself
    default = field.default
    if default is None or isinstance(default, (bool, int, float, str, bytes, tuple, frozenset)):
        return lambda: default
    return lambda: deepcopy(default)


def _param_step(source: str, field: ModelField) -> _Scalar | _QueryModel | None:
    model: type[BaseModel] | None = _get_param_model(field)
    if model is not None:
        inner_fields = model.model_fields
        if (
            source != "query"
            or model.model_config.get("extra", "ignore") != "ignore"  # extras would count
            or field.field_info.annotation is not model  # `Model | None`: FastAPI's rules differ
        ):
            return None
        fields = []
        for name, inner in inner_fields.items():
            if inner.validation_alias is not None:
                return None  # aliases of a model's fields: left to FastAPI
            fields.append((inner.alias or name, field_annotation_is_sequence(inner.annotation)))
        return _QueryModel(field.name, tuple(fields), field)
    if field_annotation_is_sequence(field.field_info.annotation):
        return None  # repeated query keys or headers: left to FastAPI
    keys = tuple(key for _, key in _get_param_aliases(field))
    if source == "header":
        keys = tuple(key.lower() for key in keys)
    return _Scalar(field.name, source, keys, field, _default_maker(field))
