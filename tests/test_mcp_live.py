"""The MCP server in a real process (uvicorn on loopback), on SQLite and PostgreSQL: the SDK's
client over HTTP, the OpenAI Agents SDK's MCP client (the spec's agent stack; no model: it lists
and calls the tools), the README's agent snippets as written, and an agent's edit arriving live
in an open event stream — and a REST edit seen by the agent."""

import asyncio
import importlib.util
import json
import os
import re
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import httpx2
import jwt
import pytest
from agents.mcp import MCPServerStreamableHttp
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.fixtures.servers import LiveServer
from tests.helpers import SECRET

AUDIENCE = "http://127.0.0.1/mcp"
LIVE_SERVER_ENV = {"MCP_AUDIENCE": AUDIENCE}
README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r'^```(\w+) title="([^"]+)"\n(.*?)^```$', re.MULTILINE | re.DOTALL)


def token(sub: str, aud: str | None = AUDIENCE) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + 600}
    if aud is not None:
        claims["aud"] = aud
    return jwt.encode(claims, SECRET, "HS256")


def new_user() -> str:
    return f"live-agent-{uuid4().hex[:10]}"


def readme_block(title: str) -> str:
    found = [body for _, name, body in BLOCK.findall(README.read_text()) if name == title]
    assert len(found) == 1, title
    return str(found[0])


async def test_the_sdk_client_over_http(live_server: LiveServer) -> None:
    user = new_user()
    url = f"{live_server.base_url}/mcp"
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token(user)}"}) as http,
        Client(streamable_http_client(url, http_client=http)) as c,
    ):
        assert [t.name for t in (await c.list_tools()).tools] == [
            "add_task",
            "list_tasks",
            "complete_task",
            "delete_task",
            "update_task",
        ]
        added = await c.call_tool("add_task", {"title": "over the wire", "priority": "urgent"})
        assert not added.is_error, added.content
        listed = await c.call_tool("list_tasks", {"priority": ["urgent"]})
    assert listed.structured_content is not None
    assert [t["title"] for t in listed.structured_content["tasks"]] == ["over the wire"]


async def test_the_openai_agents_sdk_lists_and_calls_the_tools(live_server: LiveServer) -> None:
    user = new_user()
    params = {
        "url": f"{live_server.base_url}/mcp",
        "headers": {"Authorization": f"Bearer {token(user)}"},
    }
    async with MCPServerStreamableHttp(name="tasks", params=params) as server:  # type: ignore[arg-type]
        names = [tool.name for tool in await server.list_tools()]
        assert names == ["add_task", "list_tasks", "complete_task", "delete_task", "update_task"]
        added = await server.call_tool("add_task", {"title": "from an agent"})
        assert not added.is_error
        task_id = json.loads(added.content[0].text)["task_id"]
        done = await server.call_tool("complete_task", {"task_id": task_id})
        assert json.loads(done.content[0].text)["status"] == "completed"
        mine = await server.call_tool("list_tasks", {"user_id": "someone-else"})
        assert mine.is_error


async def test_the_readme_s_agent_snippets_connect_as_written(
    live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = new_user()
    # agent.py: its server is the one an Agent would use (no model is run here).
    (tmp_path / "agent.py").write_text(readme_block("agent.py"))
    spec = importlib.util.spec_from_file_location("readme_agent", tmp_path / "agent.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("TASKS_MCP_URL", f"{live_server.base_url}/mcp")
    monkeypatch.setenv("TASKS_MCP_TOKEN", token(user))
    async with module.tasks_server() as server:
        added = await server.call_tool("add_task", {"title": "from the README's agent"})
        assert not added.is_error
    # .mcp.json: Claude Code's configuration, with its ${VAR} filled in, is what /mcp takes.
    config = json.loads(readme_block(".mcp.json"))["mcpServers"]["tasks"]
    assert config["type"] == "http"
    assert config["url"] == "http://localhost:8000/mcp"  # the README's local address
    headers = {
        name: value.replace("${TASKS_MCP_TOKEN}", os.environ["TASKS_MCP_TOKEN"])
        for name, value in config["headers"].items()
    }
    url = config["url"].replace("http://localhost:8000", live_server.base_url)
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http)) as claude,
    ):
        listed = await claude.call_tool("list_tasks", {})
    assert listed.structured_content is not None
    assert [t["title"] for t in listed.structured_content["tasks"]] == ["from the README's agent"]


async def test_an_agent_s_edit_arrives_live_in_an_open_event_stream(
    live_server: LiveServer,
) -> None:
    user = new_user()
    rest = {"Authorization": f"Bearer {token(user, aud=None)}"}
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token(user)}"}) as agent,
        httpx.AsyncClient(base_url=live_server.base_url, timeout=30) as http,
        http.stream("GET", f"/api/{user}/tasks/events", headers=rest) as stream,
        Client(streamable_http_client(f"{live_server.base_url}/mcp", http_client=agent)) as c,
    ):
        assert stream.status_code == 200
        lines = stream.aiter_lines()
        assert (await anext(lines)).startswith("retry:")
        added = await c.call_tool("add_task", {"title": "live from the agent"})
        assert not added.is_error

        async def next_event() -> dict[str, Any]:
            async for line in lines:
                if line.startswith("data: "):
                    event: dict[str, Any] = json.loads(line.removeprefix("data: "))
                    return event
            raise AssertionError("the stream ended")

        event = await asyncio.wait_for(next_event(), timeout=20)
        assert event["title"] == "live from the agent"
        # And the other way: a REST edit is what the agent sees next.
        patched = await http.patch(
            f"/api/{user}/tasks/{event['id']}", json={"title": "renamed in the tab"}, headers=rest
        )
        assert patched.status_code == 200
        listed = await c.call_tool("list_tasks", {})
    assert listed.structured_content is not None
    assert [t["title"] for t in listed.structured_content["tasks"]] == ["renamed in the tab"]
