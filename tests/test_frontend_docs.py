"""docs/frontend.md cannot rot: every code block in it is a file of a Next.js app (its title), and
each is checked here.

- `dotenv` blocks titled `api/.env` load into `Settings`; `.env.local` holds every variable the
  app's code reads, with the same secret and origin as the API's.
- `ts` and `tsx` blocks are written where their titles say, type-checked together (the
  TypeScript client from clients/typescript, the app's packages from tests/frontend_docs's
  package.json — better-auth, jose, react, client-only —, Next.js's `@/` paths), then the `ts`
  ones are run by a driver against a real Better Auth server (jwt plugin, EdDSA) and the API
  served with the guide's settings: sign up, tasks through the jwt plugin's token and through
  the shared-secret route, field errors, paging, an optimistic edit and its 412, sync. The page
  (`tsx`) is compiled, not rendered.
- The app's environment variables have one name everywhere: the guide's, in every document.
At run time `@/lib/auth` (Better Auth's server instance, which needs the app's database) is
replaced by a stand-in asking the real Better Auth server for the session, and a same-origin
`fetch("/api/token")` is answered by the route's GET, as Next.js would.
"""

import os
import re
from pathlib import Path
from typing import Any

import pytest

from backend.config import Settings
from tests.fixtures.better_auth import running_better_auth
from tests.fixtures.servers import taskapi_serve
from tests.fixtures.typescript import CLIENT, ROOT, run, tools, tsc

pytestmark = pytest.mark.live  # it starts processes: servers of its own

GUIDE = ROOT / "docs" / "frontend.md"
DRIVERS = Path(__file__).parent / "frontend_docs"  # and the app's package.json
BLOCK = re.compile(r'^```(\w+) title="([^"]+)"\n(.*?)^```$', re.MULTILINE | re.DOTALL)
APP_ORIGIN = "http://localhost:3000"  # as the guide writes it; replaced by the real servers'
API_ORIGIN = "http://localhost:8000"


def blocks(*languages: str) -> list[tuple[str, str]]:
    return [(t, body) for lang, t, body in BLOCK.findall(GUIDE.read_text()) if lang in languages]


def dotenv(text: str) -> dict[str, str]:
    lines = (line for line in text.splitlines() if line and not line.startswith("#"))
    return {name: value for name, _, value in (line.partition("=") for line in lines)}


def app_env() -> dict[str, str]:
    [text] = [text for title, text in blocks("dotenv") if title == ".env.local"]
    return dotenv(text)


def api_envs() -> list[dict[str, str]]:
    return [dotenv(text) for title, text in blocks("dotenv") if title == "api/.env"]


def test_every_block_is_a_checked_file() -> None:
    text = GUIDE.read_text()
    fences = re.findall(r"^```(.*)$", text, re.MULTILINE)
    openings = [fence for fence in fences if fence]
    assert len(openings) == len(BLOCK.findall(text)), "a block without a title is not checked"
    languages = {lang for lang, _, _ in BLOCK.findall(text)}
    assert languages == {"ts", "tsx", "dotenv"}
    titles = [title for title, _ in blocks("ts", "tsx")]
    assert len(titles) == len(set(titles))
    assert not re.search(r"\]\(https?://", text), "the guide links only inside the repository"
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        assert (GUIDE.parent / target).resolve().exists(), target


def load_settings(values: dict[str, str], folder: Path) -> Settings:
    """Settings from an .env file holding `values` (and the environment, as in production)."""
    env_file = folder / ".env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    options: dict[str, Any] = {"_env_file": env_file, "data_dir": folder}
    return Settings(**options)


def test_the_api_settings_load(tmp_path: Path) -> None:
    jwks, shared = api_envs()
    settings = load_settings(jwks, tmp_path)
    assert settings.jwks_url == f"{APP_ORIGIN}/api/auth/jwks"
    assert settings.better_auth_origin == APP_ORIGIN
    assert settings.cors_origins == [APP_ORIGIN]
    settings = load_settings(shared, tmp_path)
    secret = shared["BETTER_AUTH_SECRET"]
    assert settings.hs256_secret == secret.encode()
    assert settings.cors_origins == [APP_ORIGIN]

    app = app_env()
    assert app["BETTER_AUTH_SECRET"] == secret
    assert app["NEXT_PUBLIC_APP_URL"] == APP_ORIGIN == jwks["BETTER_AUTH_URL"]
    assert app["NEXT_PUBLIC_TASKS_API_URL"] == API_ORIGIN
    code = "".join(body for _, body in blocks("ts", "tsx"))
    assert set(re.findall(r"process\.env\.(\w+)", code)) <= set(app)


def test_the_readme_leaves_the_frontend_code_to_the_guide() -> None:
    # One copy of the app's code, the one checked here: the README shows none of its own.
    readme = (ROOT / "README.md").read_text()
    assert not re.findall(r"^```(?:ts|tsx|js|jsx|typescript|javascript)\b", readme, re.MULTILINE)
    assert "(docs/frontend.md)" in readme


def test_the_app_variables_have_one_name_everywhere() -> None:
    documents = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    documents += [ROOT / "clients" / "typescript" / "README.md"]
    for document in documents:
        for name in re.findall(r"\bNEXT_PUBLIC_\w+", document.read_text()):
            assert name in app_env(), f"{document.relative_to(ROOT)}: {name} is not the guide's"


def test_the_guide_compiles_and_runs(tmp_path: Path) -> None:
    node, _ = tools()
    if not (DRIVERS / "node_modules" / "react").is_dir():
        problem = f"{DRIVERS / 'node_modules'} is missing: run `make guide-deps`"
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    app = tmp_path / "app"
    for title, body in blocks("ts", "tsx"):
        (app / title).parent.mkdir(parents=True, exist_ok=True)
        (app / title).write_text(body)
    (app / "driver").mkdir()
    for driver in DRIVERS.glob("*.ts"):
        (app / "driver" / driver.name).write_text(driver.read_text())
    (app / "package.json").write_text('{"type": "module"}\n')
    (app / "node_modules").symlink_to(DRIVERS / "node_modules")  # the app's packages
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "tasks-api-client").symlink_to(CLIENT)  # as npm links it
    (app / "tsconfig.json").write_text(
        f"""{{
  "compilerOptions": {{
    "target": "ES2022", "lib": ["dom", "dom.iterable", "es2022"], "strict": true,
    "module": "esnext", "moduleResolution": "bundler", "skipLibCheck": true, "jsx": "react-jsx",
    "paths": {{"@/*": ["./*"]}}, "rootDir": ".", "outDir": "build",
    "types": ["node"], "typeRoots": ["{CLIENT / "node_modules" / "@types"}"]
  }},
  "include": ["**/*.ts", "**/*.tsx"], "exclude": ["build", "node_modules"]
}}
"""
    )
    tsc("-p", "tsconfig.json", cwd=app)

    jwks, shared = api_envs()
    secret = shared["BETTER_AUTH_SECRET"]
    with running_better_auth(tmp_path, "EdDSA", secret=secret) as better_auth:
        api_env = {**jwks, **shared}
        api_env = {k: v.replace(APP_ORIGIN, better_auth.origin) for k, v in api_env.items()}
        database = f"sqlite:///{tmp_path / 'tasks.db'}"
        with taskapi_serve(database, tmp_path, settings=api_env) as served:
            env = {
                **app_env(),
                "NEXT_PUBLIC_APP_URL": better_auth.origin,
                "NEXT_PUBLIC_TASKS_API_URL": served.base_url,
            }
            output = run(
                node,
                "--import",
                "./build/driver/hooks.js",
                "build/driver/main.js",
                cwd=app,
                env=env,
            )
    assert output.strip().endswith("the guide works"), output
