"""The TypeScript client (clients/typescript): generated from the committed openapi.json, built,
installable into a frontend, and right against the live service on each database.

Its own tests are node's test runner over tsc's output (Node 20 cannot run TypeScript); the
compile also checks test/types.check.ts, whose lines marked @ts-expect-error prove that the
generated types refuse what the server refuses. Without node, npm or the client's node_modules
(`make client`, which `make test` runs) the module is skipped, or fails when CI is set.
"""

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from tests.fixtures.servers import LiveServer
from tests.fixtures.typescript import CLIENT, NPM_CACHE, run, tools, tsc
from tests.helpers import SECRET

pytestmark = pytest.mark.live  # it starts processes: servers of its own


def files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def compiled_tests() -> Path:
    """The client's tests (and its sources) compiled once for the module, into build/."""
    tsc("-p", "test/tsconfig.json")
    return CLIENT / "build" / "test"


def test_schema_is_what_openapi_typescript_makes_of_openapi_json() -> None:
    # The package's own `generate` script, with its options, writing to stdout instead.
    node, _ = tools()
    script = json.loads((CLIENT / "package.json").read_text())["scripts"]["generate"]
    command, *args = shlex.split(script)
    assert command == "openapi-typescript"
    output = args.index("--output")
    del args[output : output + 2]
    generator = CLIENT / "node_modules" / "openapi-typescript" / "bin" / "cli.js"
    generated = run(node, str(generator), *args, cwd=CLIENT)
    assert generated == (CLIENT / "src" / "schema.ts").read_text(), (
        "clients/typescript/src/schema.ts is stale: run `npm run generate` in clients/typescript"
    )


def test_dist_is_what_tsc_makes_of_src(tmp_path: Path) -> None:
    tsc("-p", "tsconfig.json", "--outDir", str(tmp_path))
    assert files(tmp_path) == files(CLIENT / "dist"), (
        "clients/typescript/dist is stale: run `npm run build` in clients/typescript"
    )


def test_the_types_refuse_what_the_server_refuses(compiled_tests: Path) -> None:
    # The compile of the fixture failed had any line marked @ts-expect-error compiled.
    assert (compiled_tests / "types.check.js").is_file()
    assert "@ts-expect-error" in (CLIENT / "test" / "types.check.ts").read_text()


def test_the_client_against_the_live_service(compiled_tests: Path, live_server: LiveServer) -> None:
    node, _ = tools()
    output = run(
        node,
        "--test",
        "--test-reporter=tap",
        str(compiled_tests / "client.test.js"),
        env={"TASKS_API_URL": live_server.base_url, "TASKS_API_SECRET": SECRET},
    )
    counts = dict(re.findall(r"^# (pass|fail|skipped|todo|cancelled) (\d+)$", output, re.MULTILINE))
    assert counts["fail"] == counts["cancelled"] == counts["skipped"] == counts["todo"] == "0", (
        output
    )
    assert int(counts["pass"]) >= 10, output


def readme_example() -> str:
    """The TypeScript block of the client's README (its *Use* section)."""
    blocks = re.findall(
        r'^```ts title="tasks.ts"\n(.*?)^```$', (CLIENT / "README.md").read_text(), re.M | re.S
    )
    assert len(blocks) == 1, "the README shows one example, the one compiled here"
    return str(blocks[0])


@pytest.mark.parametrize("how", ["packed", "copied", "linked"])
def test_a_frontend_installs_it(tmp_path: Path, how: str) -> None:
    """As the README says: from a tarball of `npm pack` (a frontend in its own repository), or
    `npm install <repo>/clients/typescript` copied (--install-links) or linked (npm's default
    for a folder, which resolves the client's own dependencies from its node_modules). The app
    imports the compiled JS and type-checks against its declarations, with no build step of its
    own, under each moduleResolution a frontend may have, and the README's example compiles.
    The packages come from the npm cache `make client` filled; only registry metadata it lacks
    is fetched (`npm ci` keeps none when the npmrc says omit-lockfile-registry-resolved, as this
    machine's does)."""
    node, npm = tools()
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "app", "private": true, "type": "module"}\n')
    quiet = ["--no-audit", "--no-fund", "--loglevel=error", f"--cache={NPM_CACHE}"]
    if how == "packed":
        vendor = app / "vendor"
        vendor.mkdir()
        run(npm, "pack", "--pack-destination", str(vendor), *quiet)
        [tarball] = vendor.iterdir()
        source = f"./vendor/{tarball.name}"
    else:
        source = str(CLIENT)
    links = [f"--install-links={str(how == 'copied').lower()}"] if how != "packed" else []
    run(npm, "install", "--prefer-offline", *quiet, *links, source, cwd=app)
    installed = app / "node_modules" / "tasks-api-client"
    assert installed.is_symlink() is (how == "linked")
    if how != "linked":
        assert not (installed / "src").exists()  # only dist/ and package.json are shipped
    if how == "packed":  # what `npm ci` installs from the app's own repository later
        lock = json.loads((app / "package-lock.json").read_text())
        assert lock["packages"]["node_modules/tasks-api-client"]["resolved"] == f"file:{source[2:]}"
        shutil.rmtree(app / "node_modules")
        run(npm, "ci", "--prefer-offline", *quiet, cwd=app)

    (app / "tasks.ts").write_text(readme_example())
    (app / "more.ts").write_text(
        'import { createTasksClient, TasksApiError, type Task } from "tasks-api-client";\n'
        'const client = createTasksClient({ baseUrl: "http://127.0.0.1:9", token: () => null });\n'
        "export async function titles(userId: string): Promise<string[]> {\n"
        '  const { data } = await client.GET("/api/{user_id}/tasks", {\n'
        "    params: { path: { user_id: userId } },\n"
        "  });\n"
        "  return (data ?? []).map((task: Task) => task.title);\n"
        "}\n"
        "// @ts-expect-error: the declarations travel with the package\n"
        'export const wrong: Task = { title: "no id" };\n'
        "// @ts-expect-error: and so do the API's paths (openapi-fetch's types resolve too)\n"
        'void client.GET("/api/tasks");\n'
        "export { TasksApiError };\n"
    )
    # The compiler options of a new Next.js app (bundler resolution), node's own, and an older
    # project's (`node`: top-level `types`, no `exports`).
    common = ["--strict", "--noEmit", "--skipLibCheck", "--target", "ES2022", "--lib", "ES2022,DOM"]
    for module, resolution in [("esnext", "bundler"), ("nodenext", "nodenext"), ("esnext", "node")]:
        tsc(
            *common,
            "--module",
            module,
            "--moduleResolution",
            resolution,
            "tasks.ts",
            "more.ts",
            cwd=app,
        )

    (app / "main.mjs").write_text(
        'import { createTasksClient, ifMatch, TasksApiError } from "tasks-api-client";\n'
        'const client = createTasksClient({ baseUrl: "http://127.0.0.1:9", token: () => null });\n'
        "console.log(typeof client.GET, ifMatch({ version: 3 }), TasksApiError.name);\n"
    )
    assert run(node, "main.mjs", cwd=app) == 'function "3" TasksApiError\n'
