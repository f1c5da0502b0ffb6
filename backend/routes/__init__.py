"""The handlers, by resource. ROUTES is every route of the app, in the order the router tries
them (and the document lists their paths): a fixed segment before a parameter in the same
place, so `…/tasks/changes` is never taken for a task whose id is "changes"."""

from starlette.routing import BaseRoute

from backend.routes import health, sync, tasks

ROUTES: list[BaseRoute] = [
    *tasks.collection.routes,  # /api/{user_id}/tasks
    *sync.router.routes,  # /api/{user_id}/tasks/changes, …/events
    *tasks.router.routes,  # /api/{user_id}/tasks/{task_id}, …/complete
    *health.router.routes,  # /health, /ready, /metrics
]
