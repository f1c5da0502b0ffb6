"""The OpenAPI document: /docs has an Authorize button and every error is documented."""

import httpx


async def test_openapi_documents_auth_and_errors(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    operations = [
        (path, method, op)
        for path, item in spec["paths"].items()
        if path.startswith("/api/")
        for method, op in item.items()
    ]
    assert sorted((path, method) for path, method, _ in operations) == [
        ("/api/{user_id}/tasks", "get"),
        ("/api/{user_id}/tasks", "post"),
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
    assert "HTTPValidationError" not in spec["components"]["schemas"]


async def test_docs_page_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert "swagger-ui" in response.text
