"""Bounds that hold whatever an ordinary account sends: what one process keeps for the shapes of
the requests it serves, and what the database keeps for each user (tombstones, idempotency keys).
Through the real app, on both databases; the sizes are asserted, never the memory of the process."""

import itertools
from collections.abc import Callable, Iterator
from typing import Any, get_args
from urllib.parse import urlencode

import httpx
import pytest

from backend.config import Settings
from backend.schemas.task import SortKey
from backend.services import tasks
from tests.conftest import make_settings

Auth = Callable[..., dict[str, str]]


@pytest.fixture
def settings(database_url: str) -> Settings:
    # These tests send thousands of requests as one user; the rate limit has tests of its own.
    return make_settings(database_url, rate_limit=0)


_FILTERS: tuple[tuple[str, str], ...] = (
    ("q", "milk"),
    ("due_before", "2030-01-01T00:00:00Z"),
    ("due_after", "2001-01-01T00:00:00Z"),
    ("overdue", "true"),
    ("remind_before", "2030-01-01T00:00:00Z"),
)


def _distinct_list_queries() -> Iterator[list[tuple[str, str]]]:
    """Valid list queries of distinct statement shapes: sort x status x number of tags x the
    optional filters (10 x 3 x 2 x 32 = 1,920 of them)."""
    for sort, status, tag_count, chosen in itertools.product(
        get_args(SortKey),
        ("all", "pending", "completed"),
        range(2),
        itertools.product((False, True), repeat=len(_FILTERS)),
    ):
        query = [("sort", sort), ("status", status), ("limit", "5")]
        query += [("tag", f"t{n}") for n in range(tag_count)]
        query += [pair for pair, on in zip(_FILTERS, chosen, strict=True) if on]
        yield query


def _sizes() -> dict[str, int]:
    builders: dict[str, Any] = {
        "list": tasks._list_statement,
        "empty page": tasks._empty_page_statement,
        "total": tasks._total,
        "update": tasks._update_statement,
        "create": tasks._create_statement,
    }
    return {name: builder.cache_info().currsize for name, builder in builders.items()}


async def test_statement_caches_stay_bounded_under_thousands_of_distinct_valid_requests(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    # A cache keyed by what requests send must have a bound: every distinct combination of
    # list filters and sort (80,640 are valid) kept a compiled statement for the life of the
    # process (about 68 KiB each), and so did every distinct set of fields a PATCH sends.
    headers = auth("alice")
    created = await client.post("/api/alice/tasks", headers=headers, json={"title": "Milk"})
    assert created.status_code == 201
    task_id = created.json()["id"]
    shapes = 0
    for query in _distinct_list_queries():
        response = await client.get(f"/api/alice/tasks?{urlencode(query)}", headers=headers)
        assert response.status_code == 200, response.text
        shapes += 1
    fields = {
        "title": "Milk",
        "description": "two litres",
        "priority": "high",
        "tags": ["home"],
        "due_at": "2030-01-01T00:00:00Z",
        "remind_at": "2029-12-31T00:00:00Z",
        "completed": False,
    }
    for count in range(1, len(fields) + 1):
        for names in itertools.combinations(fields, count):
            body = {name: fields[name] for name in names}
            response = await client.patch(f"/api/alice/tasks/{task_id}", headers=headers, json=body)
            assert response.status_code == 200, response.text
            shapes += 1
    assert shapes > 2_000
    sizes = _sizes()
    assert sizes["list"] == tasks.STATEMENTS_KEPT
    assert all(size <= tasks.STATEMENTS_KEPT for size in sizes.values()), sizes
    # A prepared statement keeps at most one plan per kind of database.
    assert len(tasks._GET._plans) <= 2
