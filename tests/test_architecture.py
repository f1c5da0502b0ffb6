"""The import directions of docs/architecture.md hold: each room of backend/ imports only the
rooms its row names, and none of the libraries its row refuses. The table is read from the
document, so the map and the rule cannot drift apart."""

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKEND = ROOT / "backend"
ROW = re.compile(r"^\| `backend\.(\w+)` \|(.*)\|$", re.MULTILINE)


def _rules() -> dict[str, tuple[set[str], set[str]]]:
    """room -> (the rooms of the app it may import, the libraries it may not)."""
    text = (ROOT / "docs" / "architecture.md").read_text()

    def names(cell: str) -> set[str]:
        return {name.strip() for name in cell.split(",") if name.strip() not in ("", "—")}

    rules = {}
    for room, cells in ROW.findall(text):
        _, allowed, refused = cells.split("|")
        rules[room] = (names(allowed), names(refused))
    return rules


def _room(path: Path) -> str:
    parts = path.relative_to(BACKEND).with_suffix("").parts
    return parts[0]


def _imports() -> dict[str, set[tuple[str, str]]]:
    """room -> every (imported name, where) of its modules, TYPE_CHECKING blocks included."""
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in BACKEND.rglob("*.py"):
        where = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "backend":  # `from backend import db`
                    names = [f"backend.{alias.name}" for alias in node.names]
                else:
                    names = [node.module]
            else:
                continue
            found[_room(path)].update((name, where) for name in names)
    return found


def test_the_table_names_every_room_of_the_backend() -> None:
    rooms = {_room(path) for path in BACKEND.rglob("*.py") if path.name != "__init__.py"}
    rules = _rules()
    assert rooms - {"__init__"} == set(rules), "a room is missing from docs/architecture.md"
    for allowed, _ in rules.values():
        assert allowed <= set(rules), allowed


def _violations(
    rules: dict[str, tuple[set[str], set[str]]], imports: dict[str, set[tuple[str, str]]]
) -> list[str]:
    wrong = []
    for room, names in imports.items():
        allowed, refused = rules[room]
        for name, where in sorted(names):
            top = name.split(".")[0]
            if top == "backend":
                target = name.split(".")[1]
                if target != room and target not in allowed:
                    wrong.append(f"{where}: {room} imports backend.{target}")
            elif top in refused:
                wrong.append(f"{where}: {room} imports {top}")
    return wrong


def test_every_import_goes_where_the_map_allows() -> None:
    assert _violations(_rules(), _imports()) == []


def test_the_issue_s_directions_are_in_the_map_and_enforced() -> None:
    # Models and config import nothing of the app; services never import routes or web (nor
    # FastAPI); routes never import the db package.
    rules = _rules()
    assert rules["models"][0] == set()
    assert rules["config"][0] == set()
    assert not {"routes", "web", "main"} & rules["services"][0]
    assert {"fastapi", "starlette"} <= rules["services"][1]
    assert "db" not in rules["routes"][0]
    imports = {
        "services": {("backend.web.state", "services/x.py"), ("fastapi", "services/y.py")},
        "routes": {("backend.db", "routes/z.py"), ("backend.services.tasks", "routes/z.py")},
        "models": {("backend.config", "models/m.py")},
    }
    assert _violations(rules, imports) == [
        "services/x.py: services imports backend.web",
        "services/y.py: services imports fastapi",
        "routes/z.py: routes imports backend.db",
        "models/m.py: models imports backend.config",
    ]
