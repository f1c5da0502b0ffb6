"""The repository documents itself: docs/api.md lists every error code the service can answer
with, and the README every setting, so neither can fall behind the code unnoticed."""

import json
import re
from pathlib import Path

from backend.config import Settings
from backend.errors import AppError

ROOT = Path(__file__).resolve().parent.parent


def _family(cls: type[AppError]) -> list[type[AppError]]:
    return [cls, *(member for sub in cls.__subclasses__() for member in _family(sub))]


def test_every_error_code_is_in_the_api_reference() -> None:
    reference = (ROOT / "docs" / "api.md").read_text()
    rows = re.findall(r"^\| (\d{3}) \| `([A-Z_]+)` \|", reference, re.MULTILINE)
    documented_codes = {code: int(status) for status, code in rows}
    for error in _family(AppError):
        if "code" not in vars(error):
            continue  # a branch of the tree (AuthError), never raised itself
        assert documented_codes.get(error.code) == error.status_code, error.__name__


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`{name.upper()}`" in readme, name


def test_the_readme_points_only_inside_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if not target.startswith(("http://", "https://")):
            path = (ROOT / target).resolve()
            assert path.is_relative_to(ROOT), target
            assert path.exists(), target


def test_every_operation_is_in_the_api_reference() -> None:
    reference = (ROOT / "docs" / "api.md").read_text()
    rows = set(re.findall(r"^\| ([A-Z]+) \| `(\w+)` \| `([^`?]+)", reference, re.MULTILINE))
    document = json.loads((ROOT / "openapi.json").read_text())
    operations = {
        (method.upper(), operation["operationId"], path)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }
    assert rows == operations
