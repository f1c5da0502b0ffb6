"""The OpenAPI document: /docs has an Authorize button and every error (and 304) is documented."""

import httpx

from backend.schemas.task import TEXT_PATTERN, line_pattern


async def test_openapi_documents_auth_and_errors(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    precondition_ref = {"$ref": "#/components/schemas/PreconditionFailedBody"}
    operations = [
        (path, method, op)
        for path, item in spec["paths"].items()
        if path.startswith("/api/")
        for method, op in item.items()
    ]
    assert sorted((path, method) for path, method, _ in operations) == [
        ("/api/{user_id}/tasks", "delete"),
        ("/api/{user_id}/tasks", "get"),
        ("/api/{user_id}/tasks", "post"),
        ("/api/{user_id}/tasks/changes", "get"),
        ("/api/{user_id}/tasks/events", "get"),
        ("/api/{user_id}/tasks/{task_id}", "delete"),
        ("/api/{user_id}/tasks/{task_id}", "get"),
        ("/api/{user_id}/tasks/{task_id}", "patch"),
        ("/api/{user_id}/tasks/{task_id}", "put"),
        ("/api/{user_id}/tasks/{task_id}/complete", "patch"),
    ]
    for path, method, op in operations:
        assert op["summary"], (path, method)
        assert op["security"] == [{"HTTPBearer": []}], (path, method)
        for status in ("401", "403", "422"):
            schema = op["responses"][status]["content"]["application/json"]["schema"]
            assert schema == error_ref, (path, method, status)
        if "{task_id}" in path:
            assert op["responses"]["404"]["content"]["application/json"]["schema"] == error_ref
        if method in ("post", "put", "patch"):
            assert {"400", "413", "415"} <= set(op["responses"]), (path, method)
        # Conditional requests: a GET of a task may be 304, a write of one may be 412 (with
        # the task as it is now); a sync token may be too old (410).
        assert ("304" in op["responses"]) == ("{task_id}" in path and method == "get")
        writes_a_task = "{task_id}" in path and method != "get"
        assert ("412" in op["responses"]) == writes_a_task, (path, method)
        if writes_a_task:
            schema = op["responses"]["412"]["content"]["application/json"]["schema"]
            assert schema == precondition_ref, (path, method)
            headers = {p["name"] for p in op["parameters"] if p["in"] == "header"}
            assert "If-Match" in headers, (path, method)
        syncs = path.endswith(("/changes", "/events"))
        assert ("410" in op["responses"]) == syncs, (path, method)
        if syncs:
            schema = op["responses"]["410"]["content"]["application/json"]["schema"]
            assert schema == error_ref, (path, method)
    precondition = spec["components"]["schemas"]["PreconditionFailedBody"]
    assert precondition["properties"]["current"] == {"$ref": "#/components/schemas/TaskRead"}
    assert {"detail", "code", "current"} <= set(precondition["required"])
    assert "HTTPValidationError" not in spec["components"]["schemas"]


async def test_docs_page_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert "swagger-ui" in response.text


async def test_openapi_states_the_limits_and_refuses_no_advertised_value(
    client: httpx.AsyncClient,
) -> None:
    # Schemathesis found these: schema-valid bodies that the service refuses.
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
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


async def test_openapi_task_id_is_a_positive_64_bit_integer(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    parameters = spec["paths"]["/api/{user_id}/tasks/{task_id}"]["get"]["parameters"]
    (task_id,) = [p for p in parameters if p["name"] == "task_id"]
    assert task_id["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 2**63 - 1,
        "description": "The task's id",
        "title": "Task Id",
    }
