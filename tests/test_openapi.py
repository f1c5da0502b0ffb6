"""The OpenAPI document: exact enough to generate a client from, and the same as `openapi.json`.

Every operation has its stable operationId, every error status it can answer with (with the
error body's schema, an example of each error and the headers it carries), every response
header, and examples that the service itself accepts; /docs works without the internet. The
document does not depend on the database, so these tests build the app once, without one.
"""

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from backend.errors import error_codes
from backend.schemas.error import ErrorBody, PreconditionFailedBody
from backend.schemas.fields import TEXT_PATTERN, line_pattern
from backend.schemas.task import (
    ChangesRead,
    CompleteBody,
    DeletedCount,
    TaskCreate,
    TaskRead,
    TaskReplace,
    TaskUpdate,
)
from tests.fixtures.app import running_app
from tests.fixtures.databases import make_settings

ROOT = Path(__file__).resolve().parent.parent
ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
PRECONDITION_REF = {"$ref": "#/components/schemas/PreconditionFailedBody"}
OPERATION_IDS = {
    ("/api/{user_id}/tasks", "get"): "listTasks",
    ("/api/{user_id}/tasks", "post"): "createTask",
    ("/api/{user_id}/tasks", "delete"): "clearTasks",
    ("/api/{user_id}/tasks/changes", "get"): "listTaskChanges",
    ("/api/{user_id}/tasks/events", "get"): "streamTaskEvents",
    ("/api/{user_id}/tasks/{task_id}", "get"): "getTask",
    ("/api/{user_id}/tasks/{task_id}", "put"): "replaceTask",
    ("/api/{user_id}/tasks/{task_id}", "patch"): "updateTask",
    ("/api/{user_id}/tasks/{task_id}", "delete"): "deleteTask",
    ("/api/{user_id}/tasks/{task_id}/complete", "patch"): "completeTask",
    ("/health", "get"): "getHealth",
    ("/ready", "get"): "getReadiness",
    ("/metrics", "get"): "getMetrics",
}


@pytest.fixture(scope="module")
async def http(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    # An unmigrated SQLite file that is never opened: the document and /docs need no database.
    url = f"sqlite:///{tmp_path_factory.mktemp('openapi') / 'unused.db'}"
    async with running_app(make_settings(url)) as (_, client):
        yield client


@pytest.fixture(scope="module")
async def spec(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op) for path, item in spec["paths"].items() for method, op in item.items()
    ]


async def test_the_committed_openapi_json_is_what_the_app_serves(spec: dict[str, Any]) -> None:
    committed = json.loads((ROOT / "openapi.json").read_text())
    assert committed == spec, "openapi.json is stale: run `make openapi` and commit it"


async def test_every_operation_has_its_stable_id_tag_and_descriptions(
    spec: dict[str, Any],
) -> None:
    operations = _operations(spec)
    assert {(path, method): op["operationId"] for path, method, op in operations} == OPERATION_IDS
    tags = {tag["name"] for tag in spec["tags"]}
    for path, method, op in operations:
        assert op["summary"], (path, method)
        assert len(op["tags"]) == 1, (path, method)
        assert op["tags"][0] in tags, (path, method)
        for status, response in op["responses"].items():
            assert response["description"] != "Successful Response", (path, method, status)
            assert "X-Request-ID" in response["headers"], (path, method, status)


async def test_every_api_operation_documents_auth_and_its_errors(spec: dict[str, Any]) -> None:
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A Better Auth JWT whose `sub` is the user id in the path.",
    }
    for path, method, op in _operations(spec):
        if not path.startswith("/api/"):
            assert "security" not in op, (path, method)
            continue
        responses = op["responses"]
        assert op["security"] == [{"HTTPBearer": []}], (path, method)
        for status in ("401", "403", "405", "422", "429", "500", "503"):
            assert responses[status]["content"]["application/json"]["schema"] == ERROR_REF
        assert "WWW-Authenticate" in responses["401"]["headers"]
        assert "Allow" in responses["405"]["headers"]
        for status in ("429", "503"):
            assert "Retry-After" in responses[status]["headers"], (path, method, status)
        for status, response in responses.items():
            if status.startswith("2"):
                assert "RateLimit-Remaining" in response["headers"], (path, method)
        if "{task_id}" in path:
            assert responses["404"]["content"]["application/json"]["schema"] == ERROR_REF
        assert ({"400", "413", "415"} <= set(responses)) == (method in ("post", "put", "patch"))
        # Conditional requests: a GET of a task may be 304, a write of one may be 412 (with
        # the task as it is now); a sync token may be too old (410).
        assert ("304" in responses) == ("{task_id}" in path and method == "get")
        writes_a_task = "{task_id}" in path and method != "get"
        assert ("412" in responses) == writes_a_task, (path, method)
        if writes_a_task:
            assert responses["412"]["content"]["application/json"]["schema"] == PRECONDITION_REF
            assert "ETag" in responses["412"]["headers"]
            headers = {p["name"] for p in op["parameters"] if p["in"] == "header"}
            assert "If-Match" in headers, (path, method)
        syncs = path.endswith(("/changes", "/events"))
        assert ("410" in responses) == syncs, (path, method)
        assert ("409" in responses) == (op["operationId"] == "createTask")
    assert "HTTPValidationError" not in spec["components"]["schemas"]


async def test_every_error_example_is_what_the_service_renders(spec: dict[str, Any]) -> None:
    codes: dict[str, set[str]] = {}  # status -> the codes of its examples, over all operations
    for path, method, op in _operations(spec):
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            examples = response["content"]["application/json"]["examples"]
            assert examples, (path, method, status)
            for code, example in examples.items():
                body = example["value"]
                assert body["code"] == code
                model = PreconditionFailedBody if status == "412" else ErrorBody
                assert model.model_validate(body).model_dump(mode="json", exclude_none=True) == body
                codes.setdefault(status, set()).add(code)
    assert codes["401"] == {"AUTH_REQUIRED", "TOKEN_INVALID", "TOKEN_EXPIRED"}
    assert codes["422"] == {"VALIDATION_ERROR", "IDEMPOTENCY_KEY_REUSED"}
    error_body = spec["components"]["schemas"]["ErrorBody"]
    assert error_body["properties"]["code"]["enum"] == error_codes()
    assert error_body["required"] == ["detail", "code"]
    # `field` and `errors` are left out when they do not apply: never null.
    assert error_body["properties"]["field"]["type"] == "string"
    assert error_body["properties"]["errors"]["type"] == "array"
    precondition = spec["components"]["schemas"]["PreconditionFailedBody"]
    assert precondition["properties"]["current"]["$ref"] == "#/components/schemas/TaskRead"
    assert {"detail", "code", "current"} <= set(precondition["required"])


async def test_success_responses_document_their_headers(spec: dict[str, Any]) -> None:
    paths = spec["paths"]
    listing = paths["/api/{user_id}/tasks"]["get"]["responses"]["200"]["headers"]
    assert {"X-Total-Count", "Link", "X-Sync-Token"} <= set(listing)
    created = paths["/api/{user_id}/tasks"]["post"]["responses"]["201"]["headers"]
    assert {"Location", "ETag", "Idempotent-Replayed"} <= set(created)
    one = paths["/api/{user_id}/tasks/{task_id}"]
    for method in ("get", "put", "patch", "delete"):
        assert "ETag" in one[method]["responses"]["200"]["headers"], method
    assert "ETag" in one["get"]["responses"]["304"]["headers"]
    complete = paths["/api/{user_id}/tasks/{task_id}/complete"]["patch"]["responses"]["200"]
    assert {"ETag", "Idempotent-Replayed"} <= set(complete["headers"])


@pytest.mark.parametrize(
    "model",
    [TaskCreate, TaskReplace, TaskUpdate, CompleteBody, TaskRead, ChangesRead, DeletedCount],
)
async def test_every_schema_example_is_one_the_service_accepts(
    spec: dict[str, Any], model: type[BaseModel]
) -> None:
    examples = spec["components"]["schemas"][model.__name__]["examples"]
    assert examples
    for example in examples:
        model.model_validate(example)


async def test_openapi_states_the_limits_and_refuses_no_advertised_value(
    spec: dict[str, Any],
) -> None:
    # Schemathesis found these: schema-valid bodies that the service refuses.
    schemas = spec["components"]["schemas"]
    # A title's limit counts after trimming, so it is in the pattern, not in a maxLength.
    title = {"type": "string", "pattern": line_pattern(200)}
    for name in ("TaskCreate", "TaskReplace", "TaskUpdate"):
        properties = schemas[name]["properties"]
        assert title.items() <= properties["title"].items(), name
        assert "maxLength" not in properties["title"], name
        description = properties["description"]["anyOf"]
        assert {"type": "string", "maxLength": 1000, "pattern": TEXT_PATTERN} in description, name
        tags = properties["tags"]["items"]
        assert tags == {"type": "string", "pattern": line_pattern(32)}, name
        assert {"type": "null"} in description, name  # null clears it
        assert properties["completed"]["type"] == "boolean", name  # never null
        assert "anyOf" not in properties["completed"], name
    assert schemas["TaskCreate"]["required"] == ["title"]
    assert schemas["TaskReplace"]["required"] == ["title"]  # PUT: only the title is required
    assert "required" not in schemas["TaskUpdate"]
    assert schemas["CompleteBody"]["properties"]["completed"] == {
        "title": "Completed",
        "type": "boolean",
    }
    parameters = spec["paths"]["/api/{user_id}/tasks"]["get"]["parameters"]
    by_name = {p["name"]: p["schema"] for p in parameters}
    assert by_name["tag"]["items"] == {"type": "string", "pattern": line_pattern(32)}
    assert by_name["q"]["pattern"] == line_pattern(100)
    for name in ("cursor", "q", "due_before"):
        assert "anyOf" not in by_name[name], name  # left out, never the text "null"


async def test_openapi_task_id_is_a_positive_64_bit_integer(spec: dict[str, Any]) -> None:
    parameters = spec["paths"]["/api/{user_id}/tasks/{task_id}"]["get"]["parameters"]
    (task_id,) = [p for p in parameters if p["name"] == "task_id"]
    assert task_id["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 2**63 - 1,
        "description": "The task's id",
        "title": "Task Id",
    }


async def test_the_docs_page_needs_no_internet(http: httpx.AsyncClient) -> None:
    page = await http.get("/docs")
    assert page.status_code == 200
    assert "swagger-ui" in page.text
    assert "://" not in page.text  # no CDN, no font host
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f'"/docs/assets/{asset}"' in page.text, asset
        response = await http.get(f"/docs/assets/{asset}")
        assert response.status_code == 200, asset
        assert len(response.content) > 10_000, asset
    redoc = await http.get("/redoc")
    assert redoc.status_code == 200
    assert "://" not in redoc.text
    assert (await http.get("/docs/assets/redoc.standalone.js")).status_code == 200
