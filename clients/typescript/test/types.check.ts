// Compiled (never run) by `npm test`: the generated types refuse what the server refuses. tsc
// fails if a line marked as expecting an error compiles.
import type { Task, TaskCreate, TasksApiError, TasksClient, TaskUpdate } from "../src/index.js";

export function refusedByTheTypes(client: TasksClient, task: Task): void {
  const path = { user_id: task.user_id, task_id: task.id };

  // @ts-expect-error: a title is required on create
  const untitled: TaskCreate = { description: "no title" };
  // @ts-expect-error: an unknown priority
  const critical: TaskCreate = { title: "x", priority: "critical" };
  // @ts-expect-error: completed is a boolean, never null
  const unknown: TaskUpdate = { completed: null };
  // @ts-expect-error: the title is never null
  const nulled: TaskUpdate = { title: null };
  // @ts-expect-error: tags are never null (send [] to clear)
  const untagged: TaskUpdate = { tags: null };
  // @ts-expect-error: an unknown recurrence frequency
  const hourly: TaskCreate = { title: "x", due_at: "2026-12-01T09:00:00Z", recurrence: { frequency: "hourly" } };
  void [untitled, critical, unknown, nulled, untagged, hourly];

  // @ts-expect-error: create needs a body
  void client.POST("/api/{user_id}/tasks", { params: { path: { user_id: task.user_id } } });
  // @ts-expect-error: PUT needs the title
  void client.PUT("/api/{user_id}/tasks/{task_id}", { params: { path }, body: { completed: true } });
  // @ts-expect-error: {"completed": null} is 422
  void client.PATCH("/api/{user_id}/tasks/{task_id}/complete", { params: { path }, body: { completed: null } });
  void client.GET("/api/{user_id}/tasks", {
    // @ts-expect-error: an unknown status filter
    params: { path: { user_id: task.user_id }, query: { status: "done" } },
  });
  void client.GET("/api/{user_id}/tasks", {
    // @ts-expect-error: an unknown sort key
    params: { path: { user_id: task.user_id }, query: { sort: "-priority,title" } },
  });
  // @ts-expect-error: the task id is a number
  void client.GET("/api/{user_id}/tasks/{task_id}", { params: { path: { user_id: "u", task_id: "1" } } });
  // @ts-expect-error: no such route
  void client.GET("/api/{user_id}/todos", { params: { path: { user_id: "u" } } });

  // What the server accepts passes: a priority as frontends spell it, a recurrence without its
  // interval (1).
  const shouted: TaskCreate = { title: "x", priority: "URGENT" };
  const read: Task["priority"] = "urgent";
  void [shouted, read];
  const weekly: TaskCreate = { title: "x", due_at: "2026-12-01T09:00:00Z", recurrence: { frequency: "weekly" } };
  void weekly;
  void client.PATCH("/api/{user_id}/tasks/{task_id}/complete", { params: { path } });
  void client.PUT("/api/{user_id}/tasks/{task_id}", {
    params: { path, header: { "If-Match": `"${task.version}"` } },
    body: { title: task.title, description: null, due_at: null, recurrence: null },
  });
}

export function errorCodesAreTyped(error: TasksApiError): boolean {
  // @ts-expect-error: no such code (TASK_NOT_FOUND is)
  return error.code === "TASK_MISSING" || error.code === "TASK_NOT_FOUND" || error.code === "HTTP_502";
}
