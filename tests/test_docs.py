"""The repository documents itself: docs/api.md lists every error code the service can answer
with, docs/operations.md and .env.example every setting, and the documents state the code's
retention periods and body limit, so none can fall behind the code unnoticed; the README stays a
five-minute read, and no document points outside the repository or to a file that is not
there."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from backend.config import Settings
from backend.errors import AppError
from backend.models.sync import KEY_HOURS, TOMBSTONE_DAYS
from backend.web.middleware import MAX_BODY_BYTES

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


def test_every_setting_is_in_the_configuration_reference() -> None:
    reference = (ROOT / "docs" / "operations.md").read_text()
    for name in Settings.model_fields:
        assert f"| `{name.upper()}`" in reference or f", `{name.upper()}`" in reference, name


def test_the_readme_is_a_five_minute_read() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


DOCUMENTS = ["README.md", *(f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_documents_point_only_to_files_in_the_repository(document: str) -> None:
    source = ROOT / document
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(#[^)\s]*)?\)", source.read_text()):
        assert not target.startswith(("http://", "https://")), (document, target)
        path = (source.parent / target).resolve() if target else source
        assert path.is_relative_to(ROOT), (document, target)
        assert path.exists(), (document, target)
        if anchor and path.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", path.read_text(), re.MULTILINE)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor[1:] in slugs, (document, target, anchor)


def test_the_documents_state_the_periods_and_the_body_limit_of_the_code() -> None:
    # The code's own prose interpolates them (errors' details, the OpenAPI document); the
    # documents are checked instead: every "N hours" is how long an idempotency key is kept,
    # every "N days" how long a deletion is remembered, every body "over N MiB" the limit.
    limit = MAX_BODY_BYTES // 2**20
    for document in DOCUMENTS:
        text = (ROOT / document).read_text()
        assert set(re.findall(r"(\d+) hours", text)) <= {str(KEY_HOURS)}, document
        assert set(re.findall(r"(\d+) days", text)) <= {str(TOMBSTONE_DAYS)}, document
        assert set(re.findall(r"(?:over|limited to) (\d+) MiB", text)) <= {str(limit)}, document
    reference = (ROOT / "docs" / "api.md").read_text()
    for said in (f"{KEY_HOURS} hours", f"{TOMBSTONE_DAYS} days", f"over {limit} MiB"):
        assert said in reference, said


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


def _example_value(default: object) -> str:
    """A default as .env.example writes it: empty when there is none (or it is worked out)."""
    if default is None or isinstance(default, list):
        return ""
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def test_the_env_example_lists_every_setting_with_its_default() -> None:
    # It lacked 7 settings and gave a wrong default for the pool.
    lines = (ROOT / ".env.example").read_text().splitlines()
    shown = [re.fullmatch(r"# ([A-Z_]+)=(.*)", line) for line in lines]
    examples = {match[1]: match[2] for match in shown if match}
    assert len(examples) == len([match for match in shown if match]), "a variable twice"
    fields = Settings.model_fields
    assert set(examples) == {name.upper() for name in fields}
    for name, field in fields.items():
        default = field.get_default(call_default_factory=True)
        assert examples[name.upper()] == _example_value(default), name


def test_a_bare_make_lists_the_targets_and_runs_nothing() -> None:
    # It ran the test suite (and apt-get).
    result = subprocess.run(
        ["make", "--no-print-directory", "--just-print"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    commands = [line for line in result.stdout.splitlines() if not line.startswith("echo ")]
    assert commands == []  # the default goal only prints
    listed = subprocess.run(
        ["make", "--no-print-directory"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert [line.split()[1] for line in listed.stdout.splitlines()] == [
        "run",
        "test",
        "test-fast",
        "lint",
        "format",
        "openapi",
        "bench",
        "install",
        "example",
    ]
