"""The one route matcher outside the router's own: which routes a request's path matches,
whatever the method. The access line names the first one's template (for a request no route
took); a 405's `Allow` lists the methods of the most specific documented ones."""

from collections.abc import Iterator, Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from backend.metrics import UNMATCHED

_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def matching(routes: Sequence[BaseRoute], scope: Scope) -> Iterator[BaseRoute]:
    """The routes whose path matches the request's, in the router's order. A path with a
    trailing slash is matched as NoTrailingSlash serves it. The app's routes are its own (the
    routers' routes are added to it, never included: see main.py), so there is no nesting."""
    path: str = scope.get("path", "")
    if len(path) > 1 and path.endswith("/"):
        scope = {**scope, "path": path[:-1]}
    for route in routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            yield route


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The path template of the route a request went to (`/api/{user_id}/tasks/{task_id}`),
    never the raw path (it holds user ids); `<unmatched>` for a path no route has."""
    for route in matching(routes, scope):
        return str(getattr(route, "path", UNMATCHED))
    return UNMATCHED


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> list[str]:
    """Every method of the resource (RFC 9110): of the routes whose path matches, the most
    specific ones (fewest parameters: `…/changes` is not a task whose id is "changes"), and only
    those the API documents."""
    found: list[tuple[int, set[str]]] = []
    for route in matching(routes, scope):
        if getattr(route, "include_in_schema", True):
            path = str(getattr(route, "path", ""))
            found.append((path.count("{"), set(getattr(route, "methods", None) or ())))
    fewest = min((parameters for parameters, _ in found), default=0)
    methods = {m for parameters, names in found if parameters == fewest for m in names}
    order = list(_METHOD_ORDER)
    return sorted(methods, key=lambda m: order.index(m) if m in order else len(order))
