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
/** An error answer of the API (or of something in front of it), as an exception. */
export class TasksApiError extends Error {
    status;
    /** The stable UPPER_SNAKE code (`TASK_NOT_FOUND`…); `HTTP_<status>` if the body had none
     * (an answer from something in front of the API, or a 304). */
    code;
    detail;
    /** The offending field of a 422 (`title`, `due_at`, `cursor`…). */
    field;
    /** Every problem of a 422, when there are several. */
    errors;
    /** A 412's task as it is now: show it, merge, then send again with its version. */
    current;
    /** Seconds to wait before trying again (429 and 503). */
    retryAfter;
    response;
    constructor(response, body) {
        const error = isObject(body) ? body : {};
        const detail = typeof error.detail === "string" ? error.detail : response.statusText;
        super(`${response.status} ${detail}`);
        this.name = "TasksApiError";
        this.status = response.status;
        this.code = typeof error.code === "string" ? error.code : `HTTP_${response.status}`;
        this.detail = detail;
        this.field = typeof error.field === "string" ? error.field : null;
        this.errors = Array.isArray(error.errors) ? error.errors : [];
        this.current = isObject(error.current) ? error.current : null;
        const retryAfter = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
        this.retryAfter = Number.isNaN(retryAfter) ? null : retryAfter;
        this.response = response;
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
