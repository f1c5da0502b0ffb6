// The Tasks API client: openapi-fetch over the types that openapi-typescript generates from the
// service's openapi.json (src/schema.ts, `npm run generate`), and the little a frontend needs
// around it: the user's JWT on every request (fetched again once after a 401), errors as
// exceptions carrying the body's `code` and `field`, pages followed through `Link`, and
// `If-Match` from a task's version.
import createClient from "openapi-fetch";
export function createTasksClient({ baseUrl, token, fetch }) {
    const client = createClient({ baseUrl, fetch });
    client.use(bearer(token));
    return client;
}
function bearer(token) {
    // A copy of each request that carried a token, to send again after a 401 (the original's
    // body has been read by then). Authentication comes before anything else in the API, so a
    // 401 means nothing was done and the retry is safe for any method.
    const spares = new WeakMap();
    return {
        async onRequest({ request }) {
            const value = await token({ refresh: false });
            if (!value)
                return undefined;
            request.headers.set("Authorization", `Bearer ${value}`);
            spares.set(request, request.clone());
            return request;
        },
        async onResponse({ request, response, options }) {
            const spare = spares.get(request);
            spares.delete(request);
            if (response.status !== 401 || spare === undefined)
                return undefined;
            const value = await token({ refresh: true });
            if (!value)
                return undefined;
            spare.headers.set("Authorization", `Bearer ${value}`);
            await response.body?.cancel();
            return options.fetch(spare);
        },
    };
}
// This module's URL: the frames of a stack that are the client's own.
const HERE = import.meta.url;
/**
 * An error answer of the API (or of something in front of it), as an exception. Its message is
 * `<status> <code>: <detail>`. Printed by Node it stays short: console.log shows that line and
 * the caller's frame, an uncaught one its stack, never the Response or the task of a 412 (its
 * fields are not enumerable; read them by name).
 */
export class TasksApiError extends Error {
    constructor(response, body) {
        const error = isObject(body) ? body : {};
        const detail = typeof error.detail === "string" ? error.detail : response.statusText;
        const code = typeof error.code === "string" ? error.code : `HTTP_${response.status}`;
        super(`${response.status} ${code}: ${detail}`);
        const retryAfter = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
        const fields = {
            status: response.status,
            code,
            detail,
            field: typeof error.field === "string" ? error.field : null,
            errors: Array.isArray(error.errors) ? error.errors : [],
            current: isObject(error.current) ? error.current : null,
            retryAfter: Number.isNaN(retryAfter) ? null : retryAfter,
            response,
        };
        for (const [name, value] of Object.entries(fields))
            Object.defineProperty(this, name, { value });
        Object.defineProperty(this, "name", { value: "TasksApiError" });
    }
    [Symbol.for("nodejs.util.inspect.custom")]() {
        const frames = (this.stack ?? "").split("\n").slice(1);
        const caller = frames.find((frame) => !frame.includes(HERE) && !frame.includes("(node:internal/"));
        return `${this.name}: ${this.message}${caller === undefined ? "" : `\n${caller}`}`;
    }
}
function isObject(value) {
    return typeof value === "object" && value !== null && !Array.isArray(value);
}
/** The data of a call, or its error thrown as a TasksApiError. */
export async function unwrap(call) {
    const { data, error, response } = await call;
    if (!response.ok)
        throw new TasksApiError(response, error);
    return data;
}
/** The `ETag` of a response that carries one task: its version in quotes, `"3"`. */
export function etag(response) {
    return response.headers.get("ETag");
}
/** The `If-Match` value for a task as it was read, or for an ETag. */
export function ifMatch(task) {
    return typeof task === "string" ? task : `"${task.version}"`;
}
/** The URL of `Link: <…>; rel="next"`, or null on the last page. */
export function nextLink(response) {
    const link = response.headers.get("Link") ?? "";
    return /<([^>]*)>\s*;\s*rel="?next"?/.exec(link)?.[1] ?? null;
}
/**
 * The user's tasks matching `query`, a page (at most `query.limit` tasks) at a time, following
 * each page's `Link` until the last one.
 */
export async function* pages(client, userId, query = {}) {
    let cursor = query.cursor;
    for (;;) {
        const { data, error, response } = await client.GET("/api/{user_id}/tasks", {
            params: { path: { user_id: userId }, query: { ...query, cursor } },
        });
        if (data === undefined)
            throw new TasksApiError(response, error);
        yield data;
        const next = nextLink(response);
        if (next === null)
            return;
        cursor = new URL(next, "http://localhost").searchParams.get("cursor") ?? undefined;
        if (cursor === undefined)
            return;
    }
}
