import { type Client } from "openapi-fetch";
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
export declare function createTasksClient({ baseUrl, token, fetch }: TasksClientOptions): TasksClient;
/**
 * An error answer of the API (or of something in front of it), as an exception. Its message is
 * `<status> <code>: <detail>`. Printed by Node it stays short: console.log shows that line and
 * the caller's frame, an uncaught one its stack, never the Response or the task of a 412 (its
 * fields are not enumerable; read them by name).
 */
export declare class TasksApiError extends Error {
    readonly status: number;
    /** The stable UPPER_SNAKE code (`TASK_NOT_FOUND`…); `HTTP_<status>` if the body had none
     * (an answer from something in front of the API, or a 304). */
    readonly code: ErrorCode | `HTTP_${number}`;
    readonly detail: string;
    /** The offending field of a 422 (`title`, `due_at`, `cursor`…). */
    readonly field: string | null;
    /** Every problem of a 422, when there are several. */
    readonly errors: {
        field: string;
        message: string;
    }[];
    /** A 412's task as it is now: show it, merge, then send again with its version. */
    readonly current: Task | null;
    /** Seconds to wait before trying again (429 and 503). */
    readonly retryAfter: number | null;
    readonly response: Response;
    constructor(response: Response, body: unknown);
}
/** The data of a call, or its error thrown as a TasksApiError. */
export declare function unwrap<T>(call: Promise<{
    data?: T;
    error?: unknown;
    response: Response;
}>): Promise<T>;
/** The `ETag` of a response that carries one task: its version in quotes, `"3"`. */
export declare function etag(response: Response): string | null;
/** The `If-Match` value for a task as it was read, or for an ETag. */
export declare function ifMatch(task: Pick<Task, "version"> | string): string;
/** The URL of `Link: <…>; rel="next"`, or null on the last page. */
export declare function nextLink(response: Response): string | null;
/**
 * The user's tasks matching `query`, a page (at most `query.limit` tasks) at a time, following
 * each page's `Link` until the last one.
 */
export declare function pages(client: TasksClient, userId: string, query?: TaskQuery): AsyncGenerator<Task[], void, undefined>;
