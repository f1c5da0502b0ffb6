"""Safe edits, retries and the change feed through the real app, on both databases: versions
and ETags, If-None-Match, If-Match (412 with the current task), Idempotency-Key, and the feed
with its tokens, paging, tombstones and their expiry. (The races between processes and the
event stream run against live servers: test_live_races.py, test_sync_live.py.)"""

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from backend import db
from backend.config import Settings
from backend.models.sync import KEY_HOURS
from backend.services import idempotency
from backend.services.changes import forget_deletions
from backend.services.idempotency import key_table
from tests.helpers import Auth, Task, assert_error, assert_validation, create, etag, fetch, ok

BASE = "/api/alice/tasks"


def assert_precondition_failed(response: httpx.Response, current: Task) -> None:
    assert response.status_code == 412, response.text
    body = response.json()
    assert set(body) == {"detail", "code", "current"}
    assert body["code"] == "PRECONDITION_FAILED"
    assert body["detail"]
    assert body["current"] == current
    assert response.headers["etag"] == etag(current)


# --- versions and ETags ----------------------------------------------------------------------


async def test_version_moves_by_one_on_each_change_and_only_then(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    headers = auth("alice")
    task = await create(client, auth)
    assert task["version"] == 1
    url = f"{BASE}/{task['id']}"
    steps: list[tuple[str, str, Any, int]] = [
        ("PATCH", url, {"title": "t2"}, 2),
        ("PATCH", url, {"title": "t2"}, 2),  # the same value: no change
        ("PATCH", url, {}, 2),
        ("PUT", url, {"title": "t2", "description": None}, 2),
        ("PUT", url, {"title": "t3", "priority": "high"}, 3),
        ("PATCH", f"{url}/complete", None, 4),  # toggles always change
        ("PATCH", f"{url}/complete", {"completed": True}, 4),  # already completed
        ("PATCH", f"{url}/complete", {"completed": False}, 5),
        ("PATCH", f"{url}/complete", None, 6),
    ]
    for method, path, body, version in steps:
        response = await client.request(method, path, json=body, headers=headers)
        changed = ok(response)
        assert changed["version"] == version, (method, path, body)
        assert response.headers["etag"] == f'"{version}"'
    response = await client.get(url, headers=headers)
    assert ok(response)["version"] == 6
    assert response.headers["etag"] == '"6"'
    response = await client.delete(url, headers=headers)
    assert ok(response)["version"] == 6
    assert response.headers["etag"] == '"6"'


@pytest.mark.parametrize(
    ("header", "cached"),
    [
        ('"1"', True),
        ('W/"1"', True),  # If-None-Match compares weakly
        ('"7", "1"', True),
        ("*", True),
        ("1", True),  # an unquoted number is taken as the ETag it meant
        ('"2"', False),
        ('"x"', False),
        ("", False),
    ],
)
async def test_if_none_match(
    client: httpx.AsyncClient, auth: Auth, header: str, cached: bool
) -> None:
    task = await create(client, auth)
    response = await client.get(
        f"{BASE}/{task['id']}", headers={**auth("alice"), "If-None-Match": header}
    )
    if cached:
        assert response.status_code == 304
        assert response.content == b""
        assert response.headers["etag"] == '"1"'
    else:
        assert ok(response) == task


async def test_if_none_match_of_a_missing_task_is_404(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    response = await client.get(f"{BASE}/999999", headers={**auth("alice"), "If-None-Match": "*"})
    assert_error(response, 404, "TASK_NOT_FOUND")


# --- If-Match ----------------------------------------------------------------------------------

WRITES: dict[str, tuple[str, str, Any]] = {
    "put": ("PUT", "", {"title": "changed"}),
    "patch": ("PATCH", "", {"title": "changed"}),
    "patch-nothing": ("PATCH", "", {}),
    "toggle": ("PATCH", "/complete", None),
    "set-completed": ("PATCH", "/complete", {"completed": True}),
    "delete": ("DELETE", "", None),
}


@pytest.mark.parametrize("write", WRITES)
async def test_a_stale_if_match_is_412_with_the_current_task_and_changes_nothing(
    client: httpx.AsyncClient, auth: Auth, write: str
) -> None:
    method, suffix, body = WRITES[write]
    task = await create(client, auth)
    url = f"{BASE}/{task['id']}"
    current = ok(
        await client.patch(url, json={"description": "by the other tab"}, headers=auth("alice"))
    )
    assert current["version"] == 2
    for stale in ('"1"', 'W/"2"', '"1", "3"', '"abc"', "garbage"):
        response = await client.request(
            method, url + suffix, json=body, headers={**auth("alice"), "If-Match": stale}
        )
        assert_precondition_failed(response, current)
    assert await fetch(client, auth, task["id"]) == current


@pytest.mark.parametrize("write", WRITES)
async def test_a_version_no_task_can_have_matches_nothing(
    client: httpx.AsyncClient, auth: Auth, write: str
) -> None:
    # The version is an INTEGER column: "2147483648" overflowed PostgreSQL's driver (a 500).
    method, suffix, body = WRITES[write]
    task = await create(client, auth)
    url = f"{BASE}/{task['id']}"
    for beyond in ('"2147483648"', '"999999999999999999"', "2147483648", '"2", "2147483648"'):
        response = await client.request(
            method, url + suffix, json=body, headers={**auth("alice"), "If-Match": beyond}
        )
        assert_precondition_failed(response, task)
    for beyond in ('"2147483648"', 'W/"999999999999999999"'):
        response = await client.get(url, headers={**auth("alice"), "If-None-Match": beyond})
        assert ok(response) == task


@pytest.mark.parametrize("write", WRITES)
@pytest.mark.parametrize("header", ['"2"', '"1", "2"', "*", "2"])
async def test_a_current_if_match_lets_the_write_through(
    client: httpx.AsyncClient, auth: Auth, write: str, header: str
) -> None:
    method, suffix, body = WRITES[write]
    task = await create(client, auth)
    url = f"{BASE}/{task['id']}"
    ok(await client.patch(url, json={"description": "d"}, headers=auth("alice")))
    response = await client.request(
        method, url + suffix, json=body, headers={**auth("alice"), "If-Match": header}
    )
    done = ok(response)
    assert response.headers["etag"] == etag(done)
    expected_version = 2 if write in ("patch-nothing", "delete") else 3
    assert done["version"] == expected_version


@pytest.mark.parametrize("write", WRITES)
async def test_if_match_on_a_missing_task_is_404(
    client: httpx.AsyncClient, auth: Auth, write: str
) -> None:
    method, suffix, body = WRITES[write]
    task = await create(client, auth)
    # Another user's task is not there for alice either, whatever If-Match says.
    other = ok(await client.post("/api/bob/tasks", json={"title": "b"}, headers=auth("bob")), 201)
    for task_id in (999999, other["id"]):
        response = await client.request(
            method,
            f"{BASE}/{task_id}{suffix}",
            json=body,
            headers={**auth("alice"), "If-Match": '"1"'},
        )
        assert_error(response, 404, "TASK_NOT_FOUND")
    assert await fetch(client, auth, task["id"]) == task


async def test_a_stale_if_match_completes_no_recurring_task_and_creates_no_occurrence(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    task = await create(
        client,
        auth,
        {
            "title": "t",
            "due_at": "2026-12-01T09:00:00Z",
            "recurrence": {"frequency": "daily", "interval": 1},
        },
    )
    url = f"{BASE}/{task['id']}"
    current = ok(await client.patch(url, json={"title": "renamed"}, headers=auth("alice")))
    for body in (None, {"completed": True}):
        response = await client.patch(
            f"{url}/complete", json=body, headers={**auth("alice"), "If-Match": '"1"'}
        )
        assert_precondition_failed(response, current)
    assert ok(await client.get(BASE, headers=auth("alice"))) == [current]
    response = await client.patch(f"{url}/complete", headers={**auth("alice"), "If-Match": '"2"'})
    assert ok(response)["version"] == 3
    assert len(ok(await client.get(BASE, headers=auth("alice")))) == 2


async def test_of_two_writers_with_one_version_exactly_one_wins(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    task = await create(client, auth)
    url = f"{BASE}/{task['id']}"
    for round_ in range(5):
        version = (await fetch(client, auth, task["id"]))["version"]
        headers = {**auth("alice"), "If-Match": f'"{version}"'}
        first, second = await asyncio.gather(
            client.patch(url, json={"title": f"a{round_}"}, headers=headers),
            client.patch(url, json={"title": f"b{round_}"}, headers=headers),
        )
        statuses = sorted([first.status_code, second.status_code])
        assert statuses == [200, 412], (first.text, second.text)
        winner, loser = (first, second) if first.status_code == 200 else (second, first)
        assert loser.json()["current"] == winner.json()


async def test_concurrent_toggles_and_patches_lose_nothing(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    task = await create(client, auth)
    url = f"{BASE}/{task['id']}"
    toggles = [client.patch(f"{url}/complete", headers=auth("alice")) for _ in range(9)]
    patches = [
        client.patch(url, json={"description": "d"}, headers=auth("alice")),
        client.patch(url, json={"priority": "high"}, headers=auth("alice")),
        client.patch(url, json={"tags": ["x"]}, headers=auth("alice")),
    ]
    for response in await asyncio.gather(*toggles, *patches):
        ok(response)
    final = await fetch(client, auth, task["id"])
    assert final["completed"] is True  # 9 toggles
    assert (final["description"], final["priority"], final["tags"]) == ("d", "high", ["x"])
    assert final["version"] == 1 + 9 + 3


# --- Idempotency-Key -----------------------------------------------------------------------------


async def test_a_repeated_post_gets_the_first_response_and_creates_nothing(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    headers = {**auth("alice"), "Idempotency-Key": "3f1c2b9e-key"}
    first = await client.post(BASE, json={"title": "Buy milk", "tags": ["a"]}, headers=headers)
    created = ok(first, 201)
    assert "idempotent-replayed" not in first.headers
    # The same request, its keys in another order and spaced differently: the same JSON.
    again = await client.post(
        BASE,
        content=b'{ "tags": ["a"],  "title": "Buy milk" }',
        headers={**headers, "Content-Type": "application/json"},
    )
    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["etag"] == first.headers["etag"]
    # Even after the task changed, the repeat answers what the first request got.
    ok(await client.patch(f"{BASE}/{created['id']}", json={"title": "x"}, headers=auth("alice")))
    third = await client.post(BASE, json={"title": "Buy milk", "tags": ["a"]}, headers=headers)
    assert (third.status_code, third.content) == (201, first.content)
    assert len(ok(await client.get(BASE, headers=auth("alice")))) == 1


async def test_a_keyed_body_with_what_orjson_cannot_write_is_served(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    # Schemathesis found these: unknown fields are ignored, but the key's fingerprint hashes
    # the whole body, and orjson refuses integers beyond 64 bits and lone surrogates (500).
    bodies = [
        b'{"title": "Buy milk", "n": 69853829358442473225977856}',
        b'{"title": "Buy milk", "s": "\\udadc"}',
    ]
    for number, body in enumerate(bodies):
        headers = {**auth("alice"), "Idempotency-Key": f"big-{number}"}
        headers["Content-Type"] = "application/json"
        first = await client.post(BASE, content=body, headers=headers)
        assert first.status_code == 201, first.text
        again = await client.post(BASE, content=body, headers=headers)
        assert (again.status_code, again.content) == (201, first.content)
        assert again.headers["idempotent-replayed"] == "true"
        toggled = await client.patch(
            f"{BASE}/{first.json()['id']}/complete", content=body, headers=headers
        )
        assert_error(toggled, 422, "IDEMPOTENCY_KEY_REUSED", "Idempotency-Key")
    assert len(ok(await client.get(BASE, headers=auth("alice")))) == 2


async def test_the_same_key_with_another_request_is_refused(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    headers = {**auth("alice"), "Idempotency-Key": "k1"}
    task = ok(await client.post(BASE, json={"title": "a"}, headers=headers), 201)
    for response in (
        await client.post(BASE, json={"title": "b"}, headers=headers),
        await client.patch(f"{BASE}/{task['id']}/complete", headers=headers),
    ):
        assert_error(response, 422, "IDEMPOTENCY_KEY_REUSED", "Idempotency-Key")
    assert ok(await client.get(BASE, headers=auth("alice"))) == [task]


async def test_keys_belong_to_their_user(client: httpx.AsyncClient, auth: Auth) -> None:
    mine = ok(
        await client.post(
            BASE, json={"title": "a"}, headers={**auth("alice"), "Idempotency-Key": "k"}
        ),
        201,
    )
    theirs = ok(
        await client.post(
            "/api/bob/tasks", json={"title": "a"}, headers={**auth("bob"), "Idempotency-Key": "k"}
        ),
        201,
    )
    assert theirs["id"] != mine["id"]
    assert theirs["user_id"] == "bob"


async def test_a_repeated_toggle_does_not_toggle_again(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    task = await create(client, auth)
    url = f"{BASE}/{task['id']}/complete"
    headers = {**auth("alice"), "Idempotency-Key": "toggle-1"}
    first = await client.patch(url, headers=headers)
    assert ok(first)["completed"] is True
    for _ in range(3):
        again = await client.patch(url, headers=headers)
        assert (again.status_code, again.content) == (200, first.content)
        assert again.headers["idempotent-replayed"] == "true"
    assert (await fetch(client, auth, task["id"]))["version"] == 2
    # A new key is a new toggle.
    second = await client.patch(url, headers={**auth("alice"), "Idempotency-Key": "toggle-2"})
    assert ok(second)["completed"] is False


async def test_concurrent_repeats_create_one_task(client: httpx.AsyncClient, auth: Auth) -> None:
    headers = {**auth("alice"), "Idempotency-Key": "many"}
    responses = await asyncio.gather(
        *(client.post(BASE, json={"title": "once"}, headers=headers) for _ in range(10))
    )
    assert {response.status_code for response in responses} == {201}
    assert len({response.content for response in responses}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in responses) == 1
    assert len(ok(await client.get(BASE, headers=auth("alice")))) == 1


async def test_a_failed_request_is_not_remembered(client: httpx.AsyncClient, auth: Auth) -> None:
    headers = {**auth("alice"), "Idempotency-Key": "retry-me"}
    assert_error(
        await client.patch(f"{BASE}/999999/complete", headers=headers), 404, "TASK_NOT_FOUND"
    )
    task = await create(client, auth)
    ok(await client.patch(f"{BASE}/{task['id']}/complete", headers=headers))
    # A body that fails validation stores nothing either.
    assert_validation(
        await client.post(BASE, json={"title": ""}, headers={**headers, "Idempotency-Key": "v"}),
        "title",
    )
    ok(
        await client.post(
            BASE, json={"title": "fine"}, headers={**headers, "Idempotency-Key": "v"}
        ),
        201,
    )


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
async def test_a_bad_key_is_422(client: httpx.AsyncClient, auth: Auth, key: str) -> None:
    headers = [(name.encode(), value.encode()) for name, value in auth("alice").items()] + [
        (b"Idempotency-Key", key.encode("latin-1"))
    ]
    response = await client.post(BASE, json={"title": "a"}, headers=headers)
    assert_validation(response, "Idempotency-Key")
    assert ok(await client.get(BASE, headers=auth("alice"))) == []


async def test_a_key_is_free_again_after_24_hours_and_purged(
    client: httpx.AsyncClient, auth: Auth, settings: Settings
) -> None:
    headers = {**auth("alice"), "Idempotency-Key": "old"}
    ok(await client.post(BASE, json={"title": "a"}, headers=headers), 201)
    engine = db.make_engine(settings)
    try:
        async with engine.connect() as conn:
            later = datetime.now(UTC) + timedelta(hours=KEY_HOURS, minutes=1)
            fingerprint = idempotency.request_hash("POST", BASE, {"title": "b"})

            async def run() -> tuple[int, bytes]:
                return 201, b'{"fresh": true}'

            outcome = await idempotency.once(
                conn, user_id="alice", key="old", fingerprint=fingerprint, run=run, now=later
            )
            assert outcome == idempotency.Outcome(201, b'{"fresh": true}', replayed=False)
            count = select(func.count()).select_from(key_table)
            assert (await conn.execute(count)).scalar_one() == 1
            assert await idempotency.purge(conn, now=later) == 0
            assert await idempotency.purge(conn, now=later + timedelta(hours=25)) == 1
            assert (await conn.execute(count)).scalar_one() == 0
    finally:
        await engine.dispose()


# --- the change feed ------------------------------------------------------------------------------


async def changes(client: httpx.AsyncClient, auth: Auth, **params: Any) -> Any:
    return ok(await client.get(f"{BASE}/changes", params=params, headers=auth("alice")))


async def test_the_feed_without_a_token_is_every_task_in_change_order(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    assert await changes(client, auth) == {
        "changed": [],
        "deleted": [],
        "next": "0",
        "has_more": False,
    }
    a = await create(client, auth, {"title": "a"})
    b = await create(client, auth, {"title": "b"})
    a = ok(await client.patch(f"{BASE}/{a['id']}", json={"title": "a2"}, headers=auth("alice")))
    ok(await client.post("/api/bob/tasks", json={"title": "theirs"}, headers=auth("bob")), 201)
    feed = await changes(client, auth)
    assert feed["changed"] == [b, a]
    assert feed["deleted"] == []
    assert feed["has_more"] is False
    response = await client.get(BASE, headers=auth("alice"))
    assert response.headers["x-sync-token"] == feed["next"]


async def test_the_feed_after_a_list_shows_what_changed_since(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    kept = await create(client, auth, {"title": "kept"})
    edited = await create(client, auth, {"title": "edited"})
    gone = await create(client, auth, {"title": "gone"})
    done = await create(client, auth, {"title": "done", "completed": True})
    response = await client.get(BASE, headers=auth("alice"))
    token = response.headers["x-sync-token"]
    assert await changes(client, auth, since=token) == {
        "changed": [],
        "deleted": [],
        "next": token,
        "has_more": False,
    }
    edited = ok(
        await client.patch(f"{BASE}/{edited['id']}", json={"title": "e2"}, headers=auth("alice"))
    )
    ok(await client.patch(f"{BASE}/{kept['id']}", json={"title": "kept"}, headers=auth("alice")))
    ok(await client.delete(f"{BASE}/{gone['id']}", headers=auth("alice")))
    new = await create(client, auth, {"title": "new"})
    ok(await client.delete(BASE, params={"status": "completed"}, headers=auth("alice")))
    feed = await changes(client, auth, since=token)
    assert feed["changed"] == [edited, new]  # an edit that changed nothing is no change
    assert feed["deleted"] == [gone["id"], done["id"]]
    assert feed["has_more"] is False
    assert await changes(client, auth, since=feed["next"]) == {
        "changed": [],
        "deleted": [],
        "next": feed["next"],
        "has_more": False,
    }
    # A list read now starts where the feed ended.
    assert (await client.get(BASE, headers=auth("alice"))).headers["x-sync-token"] == feed["next"]


async def test_the_feed_pages_with_has_more(client: httpx.AsyncClient, auth: Auth) -> None:
    made = [await create(client, auth, {"title": f"t{n}"}) for n in range(7)]
    for task in made[:3]:
        ok(await client.delete(f"{BASE}/{task['id']}", headers=auth("alice")))
    seen_changed: list[Task] = []
    seen_deleted: list[int] = []
    token = "0"
    pages = 0
    while True:
        feed = await changes(client, auth, since=token, limit=3)
        pages += 1
        assert len(feed["changed"]) + len(feed["deleted"]) <= 3
        seen_changed += feed["changed"]
        seen_deleted += feed["deleted"]
        token = feed["next"]
        if not feed["has_more"]:
            break
    assert pages == 3  # 4 tasks that remain + 3 deletions = 7 changes, 3 a page
    assert seen_changed == made[3:]
    assert seen_deleted == [task["id"] for task in made[:3]]


async def test_a_recurring_task_s_next_occurrence_is_in_the_feed(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    task = await create(
        client,
        auth,
        {
            "title": "t",
            "due_at": "2026-12-01T09:00:00Z",
            "recurrence": {"frequency": "weekly", "interval": 1},
        },
    )
    token = (await client.get(BASE, headers=auth("alice"))).headers["x-sync-token"]
    completed = ok(await client.patch(f"{BASE}/{task['id']}/complete", headers=auth("alice")))
    feed = await changes(client, auth, since=token)
    assert feed["changed"][0] == completed
    (occurrence,) = feed["changed"][1:]
    assert occurrence["due_at"] == "2026-12-08T09:00:00Z"
    assert occurrence["version"] == 1


@pytest.mark.parametrize("since", ["abc", "-1", "1.5", "\uff11", "9" * 19, " 1"])
async def test_a_token_that_is_not_one_is_422(
    client: httpx.AsyncClient, auth: Auth, since: str
) -> None:
    response = await client.get(f"{BASE}/changes", params={"since": since}, headers=auth("alice"))
    assert_validation(response, "since")


async def test_a_token_from_the_future_or_another_user_is_410(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    for _ in range(3):
        ok(await client.post("/api/bob/tasks", json={"title": "b"}, headers=auth("bob")), 201)
    await create(client, auth)
    bobs = (await client.get("/api/bob/tasks", headers=auth("bob"))).headers["x-sync-token"]
    assert bobs == "3"
    response = await client.get(f"{BASE}/changes", params={"since": bobs}, headers=auth("alice"))
    assert_error(response, 410, "SYNC_TOKEN_EXPIRED")


async def test_deletions_are_forgotten_after_30_days_and_older_tokens_expire(
    client: httpx.AsyncClient, auth: Auth, settings: Settings
) -> None:
    first = await create(client, auth)
    old_token = (await client.get(BASE, headers=auth("alice"))).headers["x-sync-token"]
    ok(await client.delete(f"{BASE}/{first['id']}", headers=auth("alice")))
    after_delete = (await client.get(BASE, headers=auth("alice"))).headers["x-sync-token"]
    ok(await client.post("/api/bob/tasks", json={"title": "b"}, headers=auth("bob")), 201)
    engine = db.make_engine(settings)
    try:
        async with engine.connect() as conn:
            now = datetime.now(UTC)
            assert await forget_deletions(conn, now=now + timedelta(days=29)) == 0
            assert (await changes(client, auth, since=old_token))["deleted"] == [first["id"]]
            forgotten = await forget_deletions(conn, now=now + timedelta(days=31))
            assert forgotten == 1
            tombstones = await conn.execute(text("SELECT count(*) FROM task_tombstone"))
            assert tombstones.scalar_one() == 0
    finally:
        await engine.dispose()
    response = await client.get(
        f"{BASE}/changes", params={"since": old_token}, headers=auth("alice")
    )
    assert_error(response, 410, "SYNC_TOKEN_EXPIRED")
    # A token taken after the deletion lost nothing, and still works; so does starting over.
    assert (await changes(client, auth, since=after_delete))["deleted"] == []
    assert (await changes(client, auth))["next"] == after_delete
    # Bob, who deleted nothing, keeps every token.
    response = await client.get(
        "/api/bob/tasks/changes", params={"since": "0"}, headers=auth("bob")
    )
    assert len(ok(response)["changed"]) == 1


async def test_the_feed_is_the_user_s_own(client: httpx.AsyncClient, auth: Auth) -> None:
    response = await client.get("/api/bob/tasks/changes", headers=auth("alice"))
    assert_error(response, 403, "FORBIDDEN")
    response = await client.get(f"{BASE}/changes")
    assert_error(response, 401, "AUTH_REQUIRED")
    response = await client.get(f"{BASE}/events")
    assert_error(response, 401, "AUTH_REQUIRED")


async def test_events_refuse_a_bad_or_expired_token_before_streaming(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    response = await client.get(f"{BASE}/events", headers={**auth("alice"), "Last-Event-ID": "abc"})
    assert_validation(response, "Last-Event-ID")
    response = await client.get(f"{BASE}/events", params={"since": "abc"}, headers=auth("alice"))
    assert_validation(response, "since")
    response = await client.get(f"{BASE}/events", headers={**auth("alice"), "Last-Event-ID": "5"})
    assert_error(response, 410, "SYNC_TOKEN_EXPIRED")


async def test_cors_lets_a_browser_send_and_read_the_sync_headers(
    database_url: str, auth: Auth
) -> None:
    from tests.fixtures.app import app_client
    from tests.fixtures.databases import make_settings

    origin = "https://app.example"
    async with app_client(make_settings(database_url, cors_origins=[origin])) as http:
        preflight = await http.options(
            BASE,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "PATCH",
                "Access-Control-Request-Headers": "authorization, if-match, idempotency-key, "
                "if-none-match, last-event-id, content-type",
            },
        )
        assert preflight.status_code == 200, preflight.text
        response = await http.get(BASE, headers={**auth("alice"), "Origin": origin})
        exposed = {
            name.strip().lower()
            for name in response.headers["access-control-expose-headers"].split(",")
        }
        assert {"etag", "x-sync-token", "idempotent-replayed"} <= exposed


async def test_the_service_purges_expired_keys_and_tombstones_by_itself(
    client: httpx.AsyncClient, auth: Auth, settings: Settings
) -> None:
    from backend.main import create_app

    task = await create(client, auth)
    ok(await client.delete(f"{BASE}/{task['id']}", headers=auth("alice")))
    long_ago = datetime.now(UTC) - timedelta(days=31)
    engine = db.make_engine(settings)
    try:
        async with engine.connect() as conn:
            await conn.execute(
                key_table.insert().values(
                    user_id="alice", key="old", request_hash="h", created_at=long_ago
                )
            )
            await conn.execute(
                text("UPDATE task_tombstone SET deleted_at = :when"), {"when": long_ago}
            )
        # The app's own lifespan, as a server runs it: housekeeping starts with it.
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            deadline = asyncio.get_running_loop().time() + 20
            while True:
                async with engine.connect() as conn:
                    left = await conn.execute(
                        text(
                            "SELECT (SELECT count(*) FROM idempotency_key) "
                            "+ (SELECT count(*) FROM task_tombstone)"
                        )
                    )
                    if left.scalar_one() == 0:
                        break
                assert asyncio.get_running_loop().time() < deadline, "nothing was purged"
                await asyncio.sleep(0.05)
    finally:
        await engine.dispose()
    response = await client.get(f"{BASE}/changes", params={"since": "0"}, headers=auth("alice"))
    assert_error(response, 410, "SYNC_TOKEN_EXPIRED")


async def test_shutdown_cancels_housekeeping_even_in_the_middle_of_a_statement(
    postgresql_database_url: str,
) -> None:
    """Cancelled inside a transaction whose statement waits for a lock, housekeeping ends at
    once: the cancellation is not turned into an error it would log and sleep an hour on."""
    from backend.main import create_app
    from tests.fixtures.databases import make_settings

    settings = make_settings(postgresql_database_url)
    blocker = db.make_engine(settings, for_requests=False)
    try:
        async with blocker.connect() as conn:
            await conn.execute(text("LOCK TABLE sync_state IN ACCESS EXCLUSIVE MODE"))
            app = create_app(settings)
            # Bounded: a shutdown that hangs fails the test instead of the whole run.
            async with asyncio.timeout(60), app.router.lifespan_context(app):
                waiting = text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND query LIKE '%UPDATE sync_state%'"
                )
                deadline = asyncio.get_running_loop().time() + 20
                while True:  # a transaction of its own each time: pg_stat_activity is a snapshot
                    async with blocker.connect() as watcher:
                        if (await watcher.execute(waiting)).scalar_one():
                            break
                    assert asyncio.get_running_loop().time() < deadline, "it never waited"
                    await asyncio.sleep(0.05)
            # Leaving the lifespan cancelled it; had that been swallowed, we would still wait.
            await conn.rollback()
    finally:
        await blocker.dispose()
