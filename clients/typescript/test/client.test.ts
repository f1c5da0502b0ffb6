// The client against a live service: tests/test_typescript_client.py starts one and sets
// TASKS_API_URL and TASKS_API_SECRET (the HS256 secret it verifies tokens with). Each test is a
// user of its own.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";
import { inspect } from "node:util";
import {
  createTasksClient,
  etag,
  ifMatch,
  pages,
  TasksApiError,
  type TasksClient,
  type TokenGetter,
  unwrap,
} from "../src/index.js";
import { hs256 } from "./jwt.js";

const baseUrl = setting("TASKS_API_URL");
const secret = setting("TASKS_API_SECRET");

function setting(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (tests/test_typescript_client.py sets it)`);
  return value;
}

function newUser(): { id: string; client: TasksClient } {
  const id = `ts-${randomUUID()}`;
  return { id, client: createTasksClient({ baseUrl, token: () => hs256(secret, id) }) };
}

async function apiError(call: Promise<unknown>): Promise<TasksApiError> {
  const error = await call.then(
    () => assert.fail("expected a TasksApiError"),
    (error: unknown) => error,
  );
  assert.ok(error instanceof TasksApiError, String(error));
  return error;
}

async function create(user: { id: string; client: TasksClient }, title: string, extra = {}) {
  return unwrap(
    user.client.POST("/api/{user_id}/tasks", {
      params: { path: { user_id: user.id } },
      body: { title, ...extra },
    }),
  );
}

test("create answers 201 with the task, its Location and ETag", async () => {
  const { id, client } = newUser();
  const { data, response } = await client.POST("/api/{user_id}/tasks", {
    params: { path: { user_id: id } },
    body: { title: "  Buy milk ", priority: "high", tags: ["home", "Home", "shop"] },
  });
  assert.equal(response.status, 201);
  assert.ok(data);
  assert.equal(data.title, "Buy milk");
  assert.equal(data.user_id, id);
  assert.equal(data.priority, "high");
  assert.deepEqual(data.tags, ["home", "shop"]);
  assert.equal(data.completed, false);
  assert.equal(data.description, null);
  assert.equal(data.version, 1);
  assert.equal(response.headers.get("Location"), `/api/${id}/tasks/${data.id}`);
  assert.equal(etag(response), '"1"');
});

test("list with filters", async () => {
  const user = newUser();
  const milk = await create(user, "Buy milk", { priority: "high", tags: ["shop"] });
  const rent = await create(user, "Pay rent", { priority: "high", tags: ["home"] });
  await create(user, "Water plants", { priority: "low", tags: ["home"] });
  await unwrap(
    user.client.PATCH("/api/{user_id}/tasks/{task_id}/complete", {
      params: { path: { user_id: user.id, task_id: rent.id } },
    }),
  );

  const list = (query: Parameters<typeof pages>[2]) =>
    unwrap(
      user.client.GET("/api/{user_id}/tasks", { params: { path: { user_id: user.id }, query } }),
    );
  const titles = (tasks: { title: string }[]) => tasks.map((task) => task.title);
  assert.deepEqual(titles(await list({ priority: ["high"], sort: "title" })), [
    "Buy milk",
    "Pay rent",
  ]);
  assert.deepEqual(titles(await list({ priority: ["high", "low"], status: "pending" })), [
    "Water plants",
    "Buy milk",
  ]);
  assert.deepEqual(titles(await list({ tag: ["HOME"], status: "completed" })), ["Pay rent"]);
  assert.deepEqual(titles(await list({ q: "MILK" })), ["Buy milk"]);
  const { data, response } = await user.client.GET("/api/{user_id}/tasks", {
    params: { path: { user_id: user.id }, query: { tag: ["shop"] } },
  });
  assert.deepEqual(data, [milk]);
  assert.equal(response.headers.get("X-Total-Count"), "1");
});

test("pages follows Link to the last page", async () => {
  const user = newUser();
  const created = [];
  for (let n = 1; n <= 5; n++) created.push(await create(user, `task ${n}`));
  const seen = [];
  for await (const page of pages(user.client, user.id, { limit: 2, sort: "created_at" })) {
    seen.push(page.map((task) => task.title));
  }
  assert.deepEqual(seen, [["task 1", "task 2"], ["task 3", "task 4"], ["task 5"]]);
  const forbidden = await apiError(pages(newUser().client, user.id).next());
  assert.equal(forbidden.code, "FORBIDDEN");
});

test("an edit with If-Match; a stale one is 412 with the task as it is now", async () => {
  const user = newUser();
  const task = await create(user, "Draft");
  const path = { user_id: user.id, task_id: task.id };
  const { data: renamed, response } = await user.client.PATCH("/api/{user_id}/tasks/{task_id}", {
    params: { path, header: { "If-Match": ifMatch(task) } },
    body: { title: "Final" },
  });
  assert.equal(renamed?.version, 2);
  assert.equal(etag(response), '"2"');

  const stale = await apiError(
    unwrap(
      user.client.PUT("/api/{user_id}/tasks/{task_id}", {
        params: { path, header: { "If-Match": ifMatch(task) } },
        body: { title: "Overwritten?", description: "no" },
      }),
    ),
  );
  assert.equal(stale.status, 412);
  assert.equal(stale.code, "PRECONDITION_FAILED");
  assert.deepEqual(stale.current, renamed);
  // Printed (console.log), it is its message and where it was awaited: not the task, not the
  // Response.
  const printed = inspect(stale).split("\n");
  assert.equal(printed.length, 2, inspect(stale));
  assert.match(printed[0] ?? "", /^TasksApiError: 412 PRECONDITION_FAILED: \S/);
  assert.match(printed[1] ?? "", /^ +at .*client\.test\.js:\d+/);
  assert.deepEqual(Object.keys(stale), []);

  // Merge onto what is there now and send again with its version.
  const merged = await unwrap(
    user.client.PUT("/api/{user_id}/tasks/{task_id}", {
      params: { path, header: { "If-Match": ifMatch(stale.current!) } },
      body: { title: stale.current!.title, description: "merged" },
    }),
  );
  assert.equal(merged.title, "Final");
  assert.equal(merged.description, "merged");
  assert.equal(merged.version, 3);
});

test("a 422 names the field", async () => {
  const user = newUser();
  const error = await apiError(create(user, "   "));
  assert.equal(error.status, 422);
  assert.equal(error.code, "VALIDATION_ERROR");
  assert.equal(error.field, "title");
  assert.ok(error.detail);
  const dated = await apiError(create(user, "Weekly", { recurrence: { frequency: "weekly" } }));
  assert.equal(dated.field, "recurrence");
});

test("complete toggles or sets; delete answers with the task, then 404", async () => {
  const user = newUser();
  const task = await create(user, "Call mum");
  const path = { user_id: user.id, task_id: task.id };
  const complete = (body?: { completed?: boolean }) =>
    unwrap(user.client.PATCH("/api/{user_id}/tasks/{task_id}/complete", { params: { path }, body }));
  assert.equal((await complete()).completed, true);
  assert.equal((await complete()).completed, false);
  assert.equal((await complete({ completed: true })).completed, true);
  assert.equal((await complete({ completed: true })).completed, true);

  const removed = await unwrap(
    user.client.DELETE("/api/{user_id}/tasks/{task_id}", { params: { path } }),
  );
  assert.equal(removed.id, task.id);
  const again = await apiError(
    unwrap(user.client.DELETE("/api/{user_id}/tasks/{task_id}", { params: { path } })),
  );
  assert.equal(again.status, 404);
  assert.equal(again.code, "TASK_NOT_FOUND");
});

test("clear completed tasks", async () => {
  const user = newUser();
  await create(user, "done", { completed: true });
  await create(user, "to do");
  const cleared = await unwrap(
    user.client.DELETE("/api/{user_id}/tasks", {
      params: { path: { user_id: user.id }, query: { status: "completed" } },
    }),
  );
  assert.deepEqual(cleared, { deleted: 1 });
});

test("the change feed from a list's X-Sync-Token", async () => {
  const user = newUser();
  const gone = await create(user, "gone soon");
  const list = await user.client.GET("/api/{user_id}/tasks", {
    params: { path: { user_id: user.id } },
  });
  const since = list.response.headers.get("X-Sync-Token");
  assert.ok(since);
  const added = await create(user, "new");
  await unwrap(
    user.client.DELETE("/api/{user_id}/tasks/{task_id}", {
      params: { path: { user_id: user.id, task_id: gone.id } },
    }),
  );
  const changes = await unwrap(
    user.client.GET("/api/{user_id}/tasks/changes", {
      params: { path: { user_id: user.id }, query: { since } },
    }),
  );
  assert.deepEqual(changes.changed, [added]);
  assert.deepEqual(changes.deleted, [gone.id]);
  assert.equal(changes.has_more, false);
});

test("401 and 403 are typed errors", async () => {
  const id = `ts-${randomUUID()}`;
  const anonymous = createTasksClient({ baseUrl, token: () => null });
  const list = (client: TasksClient, userId = id) =>
    unwrap(client.GET("/api/{user_id}/tasks", { params: { path: { user_id: userId } } }));

  const missing = await apiError(list(anonymous));
  assert.equal(missing.status, 401);
  assert.equal(missing.code, "AUTH_REQUIRED");

  const forged = createTasksClient({ baseUrl, token: () => hs256("x".repeat(40), id) });
  const invalid = await apiError(list(forged));
  assert.equal(invalid.status, 401);
  assert.equal(invalid.code, "TOKEN_INVALID");

  const someoneElse = createTasksClient({ baseUrl, token: () => hs256(secret, `${id}-other`) });
  const forbidden = await apiError(list(someoneElse));
  assert.equal(forbidden.status, 403);
  assert.equal(forbidden.code, "FORBIDDEN");
});

test("after a 401 the token is fetched again and the request sent again, once", async () => {
  const id = `ts-${randomUUID()}`;
  const asked: boolean[] = [];
  const token: TokenGetter = async ({ refresh }) => {
    asked.push(refresh);
    return hs256(secret, id, refresh ? 600 : -600); // the cached one has expired
  };
  const client = createTasksClient({ baseUrl, token });
  const task = await unwrap(
    client.POST("/api/{user_id}/tasks", {
      params: { path: { user_id: id } },
      body: { title: "sent twice, created once" },
    }),
  );
  assert.equal(task.title, "sent twice, created once");
  assert.deepEqual(asked, [false, true]);
  const all = await unwrap(client.GET("/api/{user_id}/tasks", { params: { path: { user_id: id } } }));
  assert.deepEqual(all, [task]);

  const never = createTasksClient({ baseUrl, token: () => hs256(secret, id, -600) });
  const expired = await apiError(
    unwrap(never.GET("/api/{user_id}/tasks", { params: { path: { user_id: id } } })),
  );
  assert.equal(expired.code, "TOKEN_EXPIRED");
});

test("Retry-After of a 429 or 503, and an error body that is not the API's", async () => {
  const answers = [
    new Response('{"detail": "Slow down", "code": "RATE_LIMITED"}', {
      status: 429,
      headers: { "Content-Type": "application/json", "Retry-After": "7" },
    }),
    new Response("<html>Bad gateway</html>", { status: 502, statusText: "Bad Gateway" }),
  ];
  const client = createTasksClient({
    baseUrl,
    token: () => "unused",
    fetch: async () => answers.shift()!,
  });
  const list = () =>
    unwrap(client.GET("/api/{user_id}/tasks", { params: { path: { user_id: "alice" } } }));
  const limited = await apiError(list());
  assert.equal(limited.code, "RATE_LIMITED");
  assert.equal(limited.retryAfter, 7);
  const gateway = await apiError(list());
  assert.equal(gateway.code, "HTTP_502");
  assert.equal(gateway.detail, "Bad Gateway");
  assert.equal(gateway.retryAfter, null);
});
