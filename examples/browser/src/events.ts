// The event stream (`GET /api/{user_id}/tasks/events`) read with fetch: the browser's
// EventSource cannot send the Authorization header. Each connection gets the token getter's
// current token; after any break (the server ends a stream when its token expires, a network
// error, a restart) it reconnects after the server's `retry:` delay with `Last-Event-ID`, so
// no change is missed.
import type { TokenGetter } from "tasks-api-client";

export interface StreamEvent {
  event: string; // "changed", "deleted", "reminder"
  data: string; // JSON
  id: string | null; // the sync token after this change
}

export interface FollowOptions {
  url: string;
  token: TokenGetter;
  /** Where to start: the `X-Sync-Token` of the list on screen (null: from now). */
  lastEventId: string | null;
  onEvent: (event: StreamEvent) => void;
  /** "open" when a stream is connected, "waiting" between two, "ended" when there is no token
   * to send (signed out): it does not try again. */
  onState: (state: "open" | "waiting" | "ended", reason: string) => void;
  signal: AbortSignal;
}

export async function follow(options: FollowOptions): Promise<void> {
  const { url, token, onEvent, onState, signal } = options;
  let lastEventId = options.lastEventId;
  let retryMs = 3000;
  let refresh = false;
  while (!signal.aborted) {
    let reason = "the stream ended";
    try {
      const bearer = await token({ refresh });
      if (!bearer) return onState("ended", "signed out");
      const headers: Record<string, string> = { Accept: "text/event-stream", Authorization: `Bearer ${bearer}` };
      if (lastEventId !== null) headers["Last-Event-ID"] = lastEventId;
      const response = await fetch(url, { headers, signal, cache: "no-store" });
      refresh = response.status === 401;
      if (!response.ok || response.body === null) {
        await response.body?.cancel();
        throw new Error(`the stream was refused (${response.status})`);
      }
      onState("open", "connected");
      for await (const field of fields(response.body)) {
        if (field === null) continue; // an event with no data, or a comment such as a heartbeat
        if (field.retry !== undefined) retryMs = field.retry;
        if (field.id !== null) lastEventId = field.id;
        if (field.event !== undefined) onEvent({ event: field.event, data: field.data, id: field.id });
      }
    } catch (error) {
      reason = error instanceof Error ? error.message : String(error);
    }
    if (signal.aborted) return;
    onState("waiting", reason);
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, retryMs);
      signal.addEventListener("abort", () => (clearTimeout(timer), resolve(undefined)), { once: true });
    });
  }
}

interface Parsed {
  event?: string;
  data: string;
  id: string | null;
  retry?: number;
}

/** The stream's events as the SSE format defines them: lines of `field: value`, an event ended by
 * a blank line; `:` lines are comments. */
async function* fields(body: ReadableStream<Uint8Array>): AsyncGenerator<Parsed | null> {
  const reader = body.getReader(); // fetch's signal aborts it too
  const decoder = new TextDecoder();
  let buffer = "";
  let current: Parsed = { data: "", id: null };
  let data: string[] = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop() ?? "";
      for (const line of lines) {
        if (line === "") {
          const complete = data.length > 0 || current.id !== null || current.retry !== undefined;
          yield complete ? { ...current, data: data.join("\n") } : null;
          current = { data: "", id: null };
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const name = colon === -1 ? line : line.slice(0, colon);
        const value = colon === -1 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (name === "event") current.event = value;
        else if (name === "data") data.push(value);
        else if (name === "id") current.id = value;
        else if (name === "retry" && /^\d+$/.test(value)) current.retry = Number(value);
      }
    }
  } finally {
    reader.releaseLock();
  }
}
