// The Tasks API client: openapi-fetch over the types that openapi-typescript generates from the
// service's openapi.json (src/schema.ts, `npm run generate`), and the little a frontend needs
// around it: the user's JWT on every request (fetched again once after a 401), errors as
// exceptions carrying the body's `code` and `field`, pages followed through `Link`, and
// `If-Match` from a task's version.
import createClient, { type Client, type Middleware } from "openapi-fetch";
import type { components, operations, paths } from "./schema.js";

export type { components, operations, paths };

type Schemas = components["schemas"];
export type Task = Schemas["TaskRead"];
export type TaskCreate = Schemas["TaskCreate"];
export type TaskReplace = Schemas["TaskReplace"];
export type TaskUpdate = Schemas["TaskUpdate"];
export type CompleteBody = Schemas["CompleteBody"];
export type Changes = Schemas["ChangesRead"];
export type DeletedCount = Schemas["DeletedCount"];
export type ErrorBody = Schemas["ErrorBody"];
export type PreconditionFailedBody = Schemas["PreconditionFailedBody"];
/** Every code the API answers with (`TASK_NOT_FOUND`, `VALIDATION_ERROR`…). */
export type ErrorCode = ErrorBody["code"];
export type Priority = Task["priority"];
export type Recurrence = NonNullable<Task["recurrence"]>;
/** The filters, sort and page size of `GET /api/{user_id}/tasks`. */
export type TaskQuery = NonNullable<operations["listTasks"]["parameters"]["query"]>;

export type TasksClient = Client<paths>;

/**
 * Returns the JWT to send, or null to send none. Called before every request with
 * `refresh: false` (a cached token that is not about to expire will do), and once more with
 * `refresh: true` after the API answered 401 to a token it gave (fetch a new one): the request
 * is then sent again with it.
 */
export type TokenGetter = (options: {
  refresh: boolean;
}) => string | null | undefined | Promise<string | null | undefined>;

export interface TasksClientOptions {
  /** Where the API is served, e.g. `http://127.0.0.1:8000`. */
  baseUrl: string;
  token: TokenGetter;
  /** Another fetch (tests, server-side rendering); globalThis.fetch by default. */
  fetch?: (input: Request) => Promise<Response>;
}

export function createTasksClient({ baseUrl, token, fetch }: TasksClientOptions): TasksClient {
  const client = createClient<paths>({ baseUrl, fetch });
  client.use(bearer(token));
  return client;
}

function bearer(token: TokenGetter): Middleware {
  // A copy of each request that carried a token, to send again after a 401 (the original's
  // body has been read by then). Authentication comes before anything else in the API, so a
  // 401 means nothing was done and the retry is safe for any method.
  const spares = new WeakMap<Request, Request>();
  return {
    async onRequest({ request }) {
      const value = await token({ refresh: false });
      if (!value) return undefined;
      request.headers.set("Authorization", `Bearer ${value}`);
      spares.set(request, request.clone());
      return request;
    },
    async onResponse({ request, response, options }) {
      const spare = spares.get(request);
      spares.delete(request);
      if (response.status !== 401 || spare === undefined) return undefined;
      const value = await token({ refresh: true });
      if (!value) return undefined;
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
  declare readonly status: number;
  /** The stable UPPER_SNAKE code (`TASK_NOT_FOUND`…); `HTTP_<status>` if the body had none
   * (an answer from something in front of the API, or a 304). */
  declare readonly code: ErrorCode | `HTTP_${number}`;
  declare readonly detail: string;
  /** The offending field of a 422 (`title`, `due_at`, `cursor`…). */
  declare readonly field: string | null;
  /** Every problem of a 422, when there are several. */
  declare readonly errors: { field: string; message: string }[];
  /** A 412's task as it is now: show it, merge, then send again with its version. */
  declare readonly current: Task | null;
  /** Seconds to wait before trying again (429 and 503). */
  declare readonly retryAfter: number | null;
  declare readonly response: Response;

  constructor(response: Response, body: unknown) {
    const error = isObject(body) ? body : {};
    const detail = typeof error.detail === "string" ? error.detail : response.statusText;
    const code = typeof error.code === "string" ? (error.code as ErrorCode) : (`HTTP_${response.status}` as const);
    super(`${response.status} ${code}: ${detail}`);
    const retryAfter = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
    const fields: Omit<TasksApiError, keyof Error> = {
      status: response.status,
      code,
      detail,
      field: typeof error.field === "string" ? error.field : null,
      errors: Array.isArray(error.errors) ? error.errors : [],
      current: isObject(error.current) ? (error.current as Task) : null,
      retryAfter: Number.isNaN(retryAfter) ? null : retryAfter,
      response,
    };
    for (const [name, value] of Object.entries(fields)) Object.defineProperty(this, name, { value });
    Object.defineProperty(this, "name", { value: "TasksApiError" });
  }

  [Symbol.for("nodejs.util.inspect.custom")](): string {
    const frames = (this.stack ?? "").split("\n").slice(1);
    const caller = frames.find((frame) => !frame.includes(HERE) && !frame.includes("(node:internal/"));
    return `${this.name}: ${this.message}${caller === undefined ? "" : `\n${caller}`}`;
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** The data of a call, or its error thrown as a TasksApiError. */
export async function unwrap<T>(
  call: Promise<{ data?: T; error?: unknown; response: Response }>,
): Promise<T> {
  const { data, error, response } = await call;
  if (!response.ok) throw new TasksApiError(response, error);
  return data as T;
}

/** The `ETag` of a response that carries one task: its version in quotes, `"3"`. */
export function etag(response: Response): string | null {
  return response.headers.get("ETag");
}

/** The `If-Match` value for a task as it was read, or for an ETag. */
export function ifMatch(task: Pick<Task, "version"> | string): string {
  return typeof task === "string" ? task : `"${task.version}"`;
}

/** The URL of `Link: <…>; rel="next"`, or null on the last page. */
export function nextLink(response: Response): string | null {
  const link = response.headers.get("Link") ?? "";
  return /<([^>]*)>\s*;\s*rel="?next"?/.exec(link)?.[1] ?? null;
}

/**
 * The user's tasks matching `query`, a page (at most `query.limit` tasks) at a time, following
 * each page's `Link` until the last one.
 */
export async function* pages(
  client: TasksClient,
  userId: string,
  query: TaskQuery = {},
): AsyncGenerator<Task[], void, undefined> {
  let cursor = query.cursor;
  for (;;) {
    const { data, error, response } = await client.GET("/api/{user_id}/tasks", {
      params: { path: { user_id: userId }, query: { ...query, cursor } },
    });
    if (data === undefined) throw new TasksApiError(response, error);
    yield data;
    const next = nextLink(response);
    if (next === null) return;
    cursor = new URL(next, "http://localhost").searchParams.get("cursor") ?? undefined;
    if (cursor === undefined) return;
  }
}
