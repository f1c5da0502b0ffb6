from collections.abc import Callable

import httpx


async def test_create_and_list(
    client: httpx.AsyncClient, auth: Callable[..., dict[str, str]]
) -> None:
    r = await client.post("/api/alice/tasks", json={"title": "a"}, headers=auth("alice"))
    assert r.status_code == 201, r.text
    r = await client.get("/api/alice/tasks", headers=auth("alice"))
    assert [t["title"] for t in r.json()] == ["a"]
