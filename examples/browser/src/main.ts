// The page: sign up or in with Better Auth, then the user's tasks through the Tasks API's typed
// client — a filtered list paged through `Link`, add, edit with `If-Match`, toggle, delete — kept
// live by the event stream. Plain DOM, no framework; served with config.json by serve.py.
import { createTasksClient, ifMatch, nextLink, TasksApiError, unwrap } from "tasks-api-client";
import type { Task, TaskQuery, TasksClient, TokenGetter } from "tasks-api-client";
import { apiToken, makeAuthClient } from "./auth";
import { follow, type StreamEvent } from "./events";

interface Config {
  tasksApiUrl: string; // the Tasks API, e.g. http://127.0.0.1:8000
  betterAuthUrl: string; // Better Auth's base URL, e.g. http://127.0.0.1:3000
  pageSize: number; // tasks a page of the list
}

const config = (await (await fetch("config.json", { cache: "no-store" })).json()) as Config;
const auth = makeAuthClient(config.betterAuthUrl);
const token: TokenGetter = apiToken(auth);
const api: TasksClient = createTasksClient({ baseUrl: config.tasksApiUrl, token });

// --- State: the user, the tasks known (by id), the next page's cursor, the open stream --------
let userId = "";
const tasks = new Map<number, Task>();
let cursor: string | null = null;
let live: AbortController | null = null;
let connections = 0;
/** The task as it was when its edit began: the version its `If-Match` sends. */
const editing = new Map<number, Task>();

// --- The page's elements ------------------------------------------------------------------------
function element<T extends HTMLElement>(selector: string, root: ParentNode = document): T {
  const found = root.querySelector<T>(selector);
  if (found === null) throw new Error(`the page has no ${selector}`);
  return found;
}

const errorLine = element<HTMLParagraphElement>("#error");
const signedOutSection = element<HTMLElement>("#signed-out");
const signedInSection = element<HTMLElement>("#signed-in");
const authForm = element<HTMLFormElement>("#auth-form");
const addForm = element<HTMLFormElement>("#add-form");
const filterSelect = element<HTMLSelectElement>("#filter");
const liveLine = element<HTMLSpanElement>("#live");
const list = element<HTMLUListElement>("#tasks");
const emptyLine = element<HTMLParagraphElement>("#empty");
const moreButton = element<HTMLButtonElement>("#more");
const template = element<HTMLTemplateElement>("#task-template");
const items = new Map<number, HTMLLIElement>();

// --- Errors -------------------------------------------------------------------------------------
/** One line for the user, by the error's code. */
function errorMessage(error: unknown): string {
  if (!(error instanceof TasksApiError)) return "The tasks cannot be reached. Check your connection.";
  switch (error.code) {
    case "AUTH_REQUIRED":
    case "TOKEN_EXPIRED":
    case "TOKEN_INVALID":
      return "Your session has ended. Please sign in again.";
    case "TASK_NOT_FOUND":
      return "This task no longer exists.";
    case "RATE_LIMITED":
    case "SERVICE_UNAVAILABLE":
      return `Too busy right now. Try again in ${error.retryAfter ?? 5} seconds.`;
    default:
      return error.detail;
  }
}

function showError(error: unknown): void {
  console.error(error);
  errorLine.textContent = errorMessage(error);
}

/** A 422's `detail` beside the field it names (or each of its `errors`); false for another error. */
function showFieldErrors(form: HTMLFormElement, error: unknown): boolean {
  for (const span of form.querySelectorAll(".field-error")) span.textContent = "";
  if (!(error instanceof TasksApiError) || error.status !== 422) return false;
  const problems = error.errors.length > 1 ? error.errors : [{ field: error.field ?? "", message: error.detail }];
  for (const { field, message } of problems) {
    const span =
      form.querySelector(`.field-error[data-field="${CSS.escape(field)}"]`) ??
      element('.field-error[data-field=""]', form);
    span.textContent = message;
  }
  return true;
}

// --- The list -----------------------------------------------------------------------------------
function query(): TaskQuery {
  return { status: filterSelect.value as TaskQuery["status"], limit: config.pageSize };
}

function shown(task: Task): boolean {
  const status = filterSelect.value;
  return status === "all" || task.completed === (status === "completed");
}

/** Keeps the newest version of each task: a stream event may come before or after an answer. */
function put(task: Task): void {
  const known = tasks.get(task.id);
  if (known === undefined || known.version <= task.version) tasks.set(task.id, task);
}

function forget(id: number): void {
  tasks.delete(id);
  editing.delete(id);
  items.get(id)?.remove();
  items.delete(id);
}

/** The first page of the list for the filter; its `X-Sync-Token` (where a stream starts). */
async function loadFirstPage(): Promise<string | null> {
  const { data, error, response } = await api.GET("/api/{user_id}/tasks", {
    params: { path: { user_id: userId }, query: query() },
  });
  if (data === undefined) throw new TasksApiError(response, error);
  tasks.clear();
  data.forEach(put);
  cursor = cursorOf(response);
  render();
  return response.headers.get("X-Sync-Token");
}

async function loadMore(): Promise<void> {
  if (cursor === null) return;
  const { data, error, response } = await api.GET("/api/{user_id}/tasks", {
    params: { path: { user_id: userId }, query: { ...query(), cursor } },
  });
  if (data === undefined) throw new TasksApiError(response, error);
  data.forEach(put);
  cursor = cursorOf(response);
  render();
}

/** The cursor of the next page, from `Link: <…?cursor=…>; rel="next"` (null on the last page). */
function cursorOf(response: Response): string | null {
  const next = nextLink(response);
  return next === null ? null : new URL(next, config.tasksApiUrl).searchParams.get("cursor");
}

function render(): void {
  const visible = [...tasks.values()]
    .filter(shown)
    .sort((a, b) => Date.parse(b.created_at) - Date.parse(a.created_at) || b.id - a.id);
  const keep = new Set(visible.map((task) => task.id));
  for (const [id, item] of items) if (!keep.has(id)) item.remove();
  for (const task of visible) list.append(update(items.get(task.id) ?? create(task), task));
  emptyLine.hidden = visible.length > 0;
  moreButton.hidden = cursor === null;
}

function create(task: Task): HTMLLIElement {
  const item = (template.content.cloneNode(true) as DocumentFragment).firstElementChild as HTMLLIElement;
  item.dataset.id = String(task.id);
  const id = task.id;
  element<HTMLInputElement>(".toggle", item).addEventListener("change", (event) => {
    void setCompleted(id, (event.target as HTMLInputElement).checked);
  });
  element(".edit", item).addEventListener("click", () => openEdit(id));
  element(".delete", item).addEventListener("click", () => void remove(id));
  const form = element<HTMLFormElement>(".edit-form", item);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void save(id, form);
  });
  element(".cancel", item).addEventListener("click", () => closeEdit(id));
  items.set(id, item);
  return item;
}

function update(item: HTMLLIElement, task: Task): HTMLLIElement {
  item.dataset.version = String(task.version);
  item.classList.toggle("completed", task.completed);
  element<HTMLInputElement>(".toggle", item).checked = task.completed;
  element(".title", item).textContent = task.title;
  element(".priority", item).textContent = task.priority;
  return item;
}

// --- Writes -------------------------------------------------------------------------------------
async function add(): Promise<void> {
  errorLine.textContent = "";
  const values = new FormData(addForm);
  const fields = { title: String(values.get("title")), priority: String(values.get("priority")) as Task["priority"] };
  try {
    const task = await unwrap(api.POST("/api/{user_id}/tasks", { params: { path: { user_id: userId } }, body: fields }));
    showFieldErrors(addForm, null);
    addForm.reset();
    put(task);
    render();
  } catch (error) {
    if (!showFieldErrors(addForm, error)) showError(error);
  }
}

async function setCompleted(id: number, completed: boolean): Promise<void> {
  errorLine.textContent = "";
  try {
    // Sets the state the user sees, rather than toggling whatever it has become meanwhile.
    const path = { user_id: userId, task_id: id };
    put(await unwrap(api.PATCH("/api/{user_id}/tasks/{task_id}/complete", { params: { path }, body: { completed } })));
  } catch (error) {
    showError(error);
  }
  render();
}

function openEdit(id: number): void {
  const task = tasks.get(id);
  const item = items.get(id);
  if (task === undefined || item === undefined) return;
  editing.set(id, task);
  const form = element<HTMLFormElement>(".edit-form", item);
  element<HTMLInputElement>("input[name=title]", form).value = task.title;
  element(".conflict", item).textContent = "";
  form.hidden = false;
}

function closeEdit(id: number): void {
  editing.delete(id);
  const item = items.get(id);
  if (item === undefined) return;
  element<HTMLFormElement>(".edit-form", item).hidden = true;
  element(".conflict", item).textContent = "";
}

/** The edit, sent with the version it began from: a 412 means another tab or device changed the
 * task meanwhile, and nothing was written. Shows the task as it is now; saving again replaces it. */
async function save(id: number, form: HTMLFormElement): Promise<void> {
  errorLine.textContent = "";
  const base = editing.get(id);
  const item = items.get(id);
  if (base === undefined || item === undefined) return;
  const title = element<HTMLInputElement>("input[name=title]", form).value;
  const path = { user_id: userId, task_id: id };
  try {
    const saved = await unwrap(
      api.PATCH("/api/{user_id}/tasks/{task_id}", {
        params: { path, header: { "If-Match": ifMatch(base) } },
        body: { title },
      }),
    );
    showFieldErrors(form, null);
    put(saved);
    closeEdit(id);
  } catch (error) {
    if (error instanceof TasksApiError && error.status === 412 && error.current) {
      put(error.current);
      editing.set(id, error.current);
      element(".conflict", item).textContent =
        `Not saved: this task was changed elsewhere and is now “${error.current.title}”. ` +
        "Save again to replace it.";
    } else if (!showFieldErrors(form, error)) {
      showError(error);
    }
  }
  render();
}

async function remove(id: number): Promise<void> {
  errorLine.textContent = "";
  try {
    await unwrap(api.DELETE("/api/{user_id}/tasks/{task_id}", { params: { path: { user_id: userId, task_id: id } } }));
  } catch (error) {
    if (!(error instanceof TasksApiError && error.code === "TASK_NOT_FOUND")) return showError(error);
  }
  forget(id);
  render();
}

// --- Live: the event stream ---------------------------------------------------------------------
function onEvent({ event, data }: StreamEvent): void {
  if (event === "changed" || event === "reminder") put(JSON.parse(data) as Task);
  if (event === "deleted") forget((JSON.parse(data) as { id: number }).id);
  render();
}

function startLive(since: string | null): void {
  live?.abort();
  live = new AbortController();
  void follow({
    url: `${config.tasksApiUrl}/api/${encodeURIComponent(userId)}/tasks/events`,
    token,
    lastEventId: since,
    onEvent,
    onState(state, reason) {
      if (state === "open") connections += 1;
      liveLine.dataset.state = state;
      liveLine.dataset.connections = String(connections);
      liveLine.textContent = { open: "live", waiting: `live: reconnecting (${reason})`, ended: "live: off" }[state];
      if (state === "ended") errorLine.textContent = "Your session has ended. Please sign in again.";
    },
    signal: live.signal,
  });
}

// --- Signing in and out -------------------------------------------------------------------------
async function signedIn(user: { id: string; email: string }): Promise<void> {
  userId = user.id;
  element("#who").textContent = user.email;
  signedOutSection.hidden = true;
  signedInSection.hidden = false;
  try {
    startLive(await loadFirstPage());
  } catch (error) {
    showError(error);
  }
}

function signedOut(): void {
  live?.abort();
  live = null;
  liveLine.dataset.state = "off";
  liveLine.textContent = "live: off";
  userId = "";
  tasks.clear();
  for (const id of [...items.keys()]) forget(id);
  signedInSection.hidden = true;
  signedOutSection.hidden = false;
}

authForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorLine.textContent = "";
  const values = new FormData(authForm);
  const email = String(values.get("email"));
  const password = String(values.get("password"));
  const name = String(values.get("name")) || email;
  const signUp = (event.submitter as HTMLButtonElement | null)?.name === "sign-up";
  const { data, error } = signUp
    ? await auth.signUp.email({ email, password, name })
    : await auth.signIn.email({ email, password });
  if (error) errorLine.textContent = error.message ?? error.statusText;
  else await signedIn(data.user);
});

element("#sign-out").addEventListener("click", async () => {
  await auth.signOut();
  signedOut();
});

addForm.addEventListener("submit", (event) => {
  event.preventDefault();
  void add();
});

filterSelect.addEventListener("change", () => {
  loadFirstPage().catch(showError);
});

moreButton.addEventListener("click", () => {
  loadMore().catch(showError);
});

const { data: session } = await auth.getSession();
if (session) await signedIn(session.user);
else signedOut();
