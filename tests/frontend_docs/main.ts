// Runs the guide's files (docs/frontend.md) as a browser would: tests/test_frontend_docs.py
// starts Better Auth (NEXT_PUBLIC_APP_URL stands for the app's origin) and the API.
import assert from "node:assert/strict";
import type { Task } from "tasks-api-client";

const appUrl = process.env.NEXT_PUBLIC_APP_URL ?? "";
const apiUrl = process.env.NEXT_PUBLIC_TASKS_API_URL ?? "";

// The browser's part: a cookie jar for the app's origin (Better Auth's session), the Origin
// header, and a same-origin fetch("/api/token") answered by the app's route. Installed before
// the guide's modules are loaded, as they keep the fetch they find.
const cookies = new Map<string, string>();
let betterAuthTokens = 0;
const networkFetch = globalThis.fetch;
globalThis.fetch = async (input: string | URL | Request, init?: RequestInit) => {
  const url = typeof input === "string" && input.startsWith("/") ? new URL(input, appUrl) : input;
  const request = new Request(url, init);
  if (!request.url.startsWith(appUrl)) return networkFetch(request);
  request.headers.set("cookie", [...cookies].map(([name, value]) => `${name}=${value}`).join("; "));
  request.headers.set("origin", appUrl);
  const path = new URL(request.url).pathname;
  if (path === "/api/token") return (await import("@/app/api/token/route")).GET(request);
  if (path === "/api/mcp-token") return (await import("@/app/api/mcp-token/route")).POST(request);
  if (path === "/api/auth/token") betterAuthTokens += 1;
  const response = await networkFetch(request);
  for (const cookie of response.headers.getSetCookie()) {
    const [pair = ""] = cookie.split(";");
    const [name = "", value = ""] = pair.split("=", 2);
    if (value) cookies.set(name, value);
    else cookies.delete(name);
  }
  return response;
};

const { authClient } = await import("@/lib/auth-client");
const { cachedToken, fromBetterAuth, fromOwnRoute } = await import("@/lib/api-token");
const { api, allTasks, addTask, errorMessage } = await import("@/lib/tasks");
const { saveTask } = await import("@/lib/edit");
const { sync } = await import("@/lib/sync");
const { createTasksClient, TasksApiError, unwrap } = await import("tasks-api-client");

const signUp = await authClient.signUp.email({
  email: `guide-${Date.now()}@example.com`,
  password: "correct-horse-battery-staple",
  name: "Guide Reader",
});
assert.ok(signUp.data, JSON.stringify(signUp.error));
const userId = signUp.data.user.id;

// Tasks on screen, through the jwt plugin's token (lib/tasks.ts).
assert.deepEqual(await allTasks(userId), []);
const added = await addTask(userId, { title: "Buy milk", tags: ["shop"] });
assert.ok("task" in added, JSON.stringify(added));
const milk = added.task;
const refusedTitle = await addTask(userId, { title: "   " });
assert.ok("errors" in refusedTitle, "a 422 becomes the form's field errors");
assert.deepEqual(Object.keys(refusedTitle.errors), ["title"]);
for (let n = 1; n <= 4; n++) await addTask(userId, { title: `task ${n}` });
const paged = await allTasks(userId, { limit: 2, sort: "created_at" });
assert.deepEqual(
  paged.map((task) => task.title),
  ["Buy milk", "task 1", "task 2", "task 3", "task 4"],
);
assert.equal(betterAuthTokens, 1, "the token is fetched once, then reused");

// The getter: cached until asked to refresh.
const getter = cachedToken(fromBetterAuth);
const first = await getter({ refresh: false });
assert.equal(await getter({ refresh: false }), first);
await getter({ refresh: true });
assert.equal(betterAuthTokens, 3);

// An optimistic edit with If-Match, then one from a stale copy: 412, and `current` is shown.
const shown: string[] = [];
const renamed = await saveTask(milk, { title: "Buy oat milk" }, (task) => shown.push(task.title));
assert.equal(renamed.version, 2);
assert.deepEqual(shown, ["Buy oat milk", "Buy oat milk"]);
shown.length = 0;
const stale = await saveTask(milk, { title: "Buy soy milk" }, (task) => shown.push(task.title)).then(
  () => assert.fail("a stale If-Match must fail"),
  (error: unknown) => error,
);
assert.ok(stale instanceof TasksApiError && stale.status === 412, String(stale));
assert.deepEqual(shown, ["Buy soy milk", "Buy oat milk"]);

// Errors by code.
const missing = await unwrap(
  api.GET("/api/{user_id}/tasks/{task_id}", { params: { path: { user_id: userId, task_id: 999999 } } }),
).catch((error: unknown) => error);
assert.equal(errorMessage(missing), "This task no longer exists.");
assert.equal(errorMessage(new TypeError("fetch failed")), "The tasks cannot be reached. Check your connection.");

// Sync into a store: everything first, then only the changes.
const tasks = new Map<number, Task>();
let token: string | null = null;
const store = {
  syncToken: async () => token,
  setSyncToken: async (next: string | null) => {
    token = next;
  },
  clear: async () => tasks.clear(),
  put: async (changed: Task[]) => changed.forEach((task) => tasks.set(task.id, task)),
  remove: async (ids: number[]) => ids.forEach((id) => tasks.delete(id)),
};
await sync(userId, store);
assert.equal(tasks.size, 5);
assert.equal(tasks.get(milk.id)?.title, "Buy oat milk");
await unwrap(api.DELETE("/api/{user_id}/tasks/{task_id}", { params: { path: { user_id: userId, task_id: milk.id } } }));
await addTask(userId, { title: "after the sync" });
await sync(userId, store);
assert.equal(tasks.has(milk.id), false);
assert.deepEqual([...tasks.values()].map((task) => task.title).sort(), [
  "after the sync",
  "task 1",
  "task 2",
  "task 3",
  "task 4",
]);

// The shared secret: the app's route signs an HS256 token for the session's user.
const viaRoute = createTasksClient({ baseUrl: apiUrl, token: cachedToken(fromOwnRoute) });
const listed = await unwrap(viaRoute.GET("/api/{user_id}/tasks", { params: { path: { user_id: userId } } }));
assert.equal(listed.length, 5);

// An AI agent's token (section 5): the MCP server takes it, and refuses the app's own.
async function mcp(token: string | null, method: string, params: object): Promise<Response> {
  return networkFetch(`${apiUrl}/mcp`, {
    method: "POST",
    headers: {
      authorization: `Bearer ${token}`,
      "content-type": "application/json",
      accept: "application/json, text/event-stream",
      "mcp-protocol-version": "2025-06-18",
    },
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params }),
  });
}
const minted = (await (await fetch("/api/mcp-token", { method: "POST" })).json()) as { token: string };
const call = await mcp(minted.token, "tools/call", { name: "add_task", arguments: { title: "from the agent" } });
assert.equal(call.status, 200, await call.clone().text());
const answer = (await call.json()) as { result: { isError?: boolean; structuredContent: { status: string } } };
assert.equal(answer.result.structuredContent.status, "created", JSON.stringify(answer));
const appToken = await fromBetterAuth();
assert.equal((await mcp(appToken, "tools/list", {})).status, 401, "the app's token is not the MCP server's");

// Signed out: no token from either, and the API's 401 reads as such.
await authClient.signOut();
assert.equal(await fromOwnRoute(), null);
assert.equal(await fromBetterAuth(), null);
const signedOut = createTasksClient({ baseUrl: apiUrl, token: cachedToken(fromBetterAuth) });
const refused = await unwrap(signedOut.GET("/api/{user_id}/tasks", { params: { path: { user_id: userId } } })).catch(
  (error: unknown) => error,
);
assert.equal(errorMessage(refused), "Your session has ended. Please sign in again.");

console.log("the guide works");
