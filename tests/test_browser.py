"""The user's journey in a real browser: headless Chromium (Debian's, installed by `make
test-services`) driven by Playwright, on the example page of examples/browser.

Three origins on loopback: the page (examples/browser/serve.py's `page_server`), a real Better
Auth (interop/better-auth, jwt plugin, trusting the page's origin) and the service
(`taskapi serve`, verifying Better Auth's tokens by its JWKS). So what only a browser does is
exercised for real: CORS preflights and the exposed headers (`Link`, `X-Sync-Token`), Better
Auth's cookie sent cross-origin with `credentials: "include"`, and the event stream read with
fetch. Better Auth's JWTs live TOKEN_SECONDS here and the service allows no leeway, so every
stream ends with its token during the journey, and the page reconnects with a fresh token and
`Last-Event-ID`.

The journey signs up, opens a second tab whose live list follows the first one's changes,
adds, is refused a blank title (the API's detail beside the field), pages with "Load more",
toggles, filters, deletes, gets a 412 for a stale edit, waits for a stream to end with its
token and resume, signs out and in again. Then the same page and Better Auth
meet a service whose CORS_ORIGINS does not name the page's origin, and the browser must refuse.

Evidence in test-output/browser/<test>/: a screenshot of each open tab after each step, the
tabs' console (console.log); a failure names its step and its screenshots.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Request,
    Response,
    expect,
    sync_playwright,
)
from playwright.sync_api import Error as PlaywrightError

from examples.browser.serve import page_server
from tests.fixtures.better_auth import BetterAuth, running_better_auth
from tests.fixtures.processes import free_port
from tests.fixtures.servers import taskapi_serve
from tests.fixtures.typescript import ROOT, run, tools

pytestmark = pytest.mark.live

EXAMPLE = ROOT / "examples" / "browser"
EVIDENCE = ROOT / "test-output" / "browser"
CHROMIUM = "/usr/bin/chromium"
# The flags that work on these machines: no sandbox as root, and no calls to Google's services
# (the network is closed; each would fail, some many times at start).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000  # for anything the page does; a busy 2-core machine runs the suite
TOKEN_SECONDS = 12
PAGE_SIZE = 3
PASSWORD = "correct-horse-battery-staple"


# --- The browser, the page, Better Auth ---------------------------------------------------------


def _chromium() -> str:
    path = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if path is None:
        problem = "Chromium is not installed: `make test-services` installs Debian's"
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    return path


@pytest.fixture(scope="module")
def bundle() -> Iterator["subprocess.Popen[str]"]:
    """examples/browser/dist/app.js built (esbuild), and the example's type check (tsc, about
    15 s) running meanwhile: `test_the_example_type_checks` reads its result."""
    node, npm = tools()
    if not (EXAMPLE / "node_modules" / "esbuild").is_dir():
        problem = f"{EXAMPLE / 'node_modules'} is missing: run `make example-deps`"
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    run(npm, "run", "--silent", "build", cwd=EXAMPLE)
    tsc = EXAMPLE / "node_modules" / "typescript" / "bin" / "tsc"
    check = subprocess.Popen(
        [node, str(tsc), "--noEmit", "-p", "tsconfig.json"],
        cwd=EXAMPLE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield check
    finally:
        if check.poll() is None:
            check.kill()
        check.communicate()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    executable = _chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        expect.set_options(timeout=TIMEOUT_MS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Site:
    """The page's origin and its config.json (which API it calls), and the Better Auth it uses."""

    origin: str
    config: dict[str, Any]
    better_auth: BetterAuth


@pytest.fixture(scope="module")
def site(bundle: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The page on a port it keeps for the module, and Better Auth trusting its origin."""
    config: dict[str, Any] = {"pageSize": PAGE_SIZE}
    with page_server(0, config) as origin:
        folder = tmp_path_factory.mktemp("better-auth")
        env = {"JWT_EXPIRES": f"{TOKEN_SECONDS}s", "TRUSTED_ORIGINS": origin}
        with running_better_auth(folder, "EdDSA", **env) as better_auth:
            config["betterAuthUrl"] = better_auth.origin
            yield Site(origin, config, better_auth)


# --- Evidence -----------------------------------------------------------------------------------


@dataclass
class Evidence:
    """Screenshots of every open tab after each step, and the tabs' console, in `folder`."""

    folder: Path
    tabs: dict[str, Page] = field(default_factory=dict)
    steps: int = 0
    console: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    log: TextIO | None = None

    def watch(self, name: str, page: Page) -> Page:
        self.tabs[name] = page
        page.on("console", lambda message: self.write(name, f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: self.page_error(name, error))
        return page

    def page_error(self, tab: str, error: PlaywrightError) -> None:
        self.page_errors.append(f"[{tab}] {error}")
        self.write(tab, f"uncaught: {error}")

    def write(self, tab: str, line: str) -> None:
        self.console.append(line)
        if self.log is not None:
            self.log.write(f"{time.strftime('%H:%M:%S')} [{tab}] {line}\n")
            self.log.flush()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.steps += 1
        slug = f"{self.steps:02d}-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}"
        self.write("test", f"--- step {self.steps}: {name}")
        try:
            yield
        except (AssertionError, PlaywrightError) as error:
            failure = str(error)
        else:
            self.screenshots(slug)
            return
        shots = self.screenshots(f"{slug}-FAILED")
        message = (
            f"step {self.steps} ({name}) failed: {failure}\n"
            f"screenshots: {', '.join(shots) or 'none'}\n"
            f"console: {self.folder.relative_to(ROOT) / 'console.log'}"
        )
        raise pytest.fail.Exception(message, pytrace=False) from None  # the message says it all

    def screenshots(self, slug: str) -> list[str]:
        taken = []
        for tab, page in self.tabs.items():
            path = self.folder / f"{slug}-{tab}.png"
            with suppress(PlaywrightError):  # a tab that closed or crashed: the others still
                page.screenshot(path=path, full_page=True)
                taken.append(str(path.relative_to(ROOT)))
        return taken


@pytest.fixture
def evidence(request: pytest.FixtureRequest) -> Iterator[Evidence]:
    folder = EVIDENCE / request.node.name.removeprefix("test_")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with (folder / "console.log").open("w") as log:
        yield Evidence(folder, log=log)


@contextmanager
def browser_context(chromium: Browser) -> Iterator[BrowserContext]:
    """A fresh profile: no cookies, like a new visitor; its tabs share Better Auth's session."""
    context = chromium.new_context(viewport={"width": 1000, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context
    finally:
        context.close()


def until(
    condition: Callable[[], bool],
    what: str,
    seconds: float = TIMEOUT_MS / 1000,
    tab: Page | None = None,
) -> None:
    """Waits (bounded) for a condition; for one on what the browser reports through Playwright's
    events, give the tab: its waits are when those events are delivered."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds:.0f} s: {what}"
        if tab is None:
            time.sleep(0.1)
        else:
            tab.wait_for_timeout(100)


# --- What a user does on the page ---------------------------------------------------------------


def sign_up(tab: Page, email: str) -> None:
    tab.locator("#auth-form input[name=name]").fill("Browser User")
    tab.locator("#auth-form input[name=email]").fill(email)
    tab.locator("#auth-form input[name=password]").fill(PASSWORD)
    tab.locator("#auth-form button[name=sign-up]").click()


def front(tab: Page) -> Page:
    """The tab the user acts in is in front (a background tab gets no animation frames, and
    Playwright's clicks wait for some); the other one follows in the background."""
    tab.bring_to_front()
    return tab


def add(tab: Page, title: str) -> None:
    tab.locator("#add-form input[name=title]").fill(title)
    tab.locator("#add-form button[type=submit]").click()


def task(tab: Page, title: str) -> Any:
    """The list item whose title is exactly `title`."""
    return tab.locator("#tasks li").filter(has=tab.get_by_text(title, exact=True))


def titles(tab: Page, *expected: str) -> None:
    expect(tab.locator("#tasks li .title")).to_have_text(list(expected))


def load_everything(tab: Page, *expected: str) -> None:
    """The first page (PAGE_SIZE tasks), then "Load more" until the list is `expected`."""
    titles(tab, *expected[:PAGE_SIZE])
    more = tab.locator("#more")
    while tab.locator("#tasks li").count() < len(expected):
        expect(more).to_be_visible()
        shown = tab.locator("#tasks li").count()
        more.click()
        expect(tab.locator("#tasks li")).not_to_have_count(shown)
    titles(tab, *expected)
    expect(more).to_be_hidden()


def live(tab: Page) -> None:
    expect(tab.locator("#live")).to_have_attribute("data-state", "open")


# --- The tests ----------------------------------------------------------------------------------


def test_the_journey(chromium: Browser, site: Site, evidence: Evidence, tmp_path: Path) -> None:
    settings = {
        "BETTER_AUTH_URL": site.better_auth.origin,
        "CORS_ORIGINS": site.origin,
        "JWT_LEEWAY_SECONDS": "0",  # streams end when their token does
    }
    database = f"sqlite:///{tmp_path / 'tasks.db'}"
    with (
        taskapi_serve(database, tmp_path, settings=settings) as api,
        browser_context(chromium) as context,
    ):
        site.config["tasksApiUrl"] = api.base_url
        streams: list[Request] = []  # every connection of a tab to the event stream
        answers: list[tuple[str, int]] = []

        def seen(response: Response) -> None:
            answers.append((response.request.method, response.status))

        context.on("request", lambda r: streams.append(r) if "/tasks/events" in r.url else None)
        context.on("response", seen)
        email = f"journey-{time.time_ns()}@example.com"

        a = evidence.watch("tabA", context.new_page())
        with evidence.step("the page asks to sign in"):
            a.goto(site.origin)
            expect(a.locator("#signed-out")).to_be_visible()

        with evidence.step("sign up with Better Auth: an empty list, live"):
            sign_up(a, email)
            expect(a.locator("#who")).to_have_text(email)
            expect(a.locator("#empty")).to_be_visible()
            live(a)

        b = evidence.watch("tabB", context.new_page())
        with evidence.step("a second tab is signed in, and live"):
            b.goto(site.origin)
            expect(b.locator("#who")).to_have_text(email)
            expect(b.locator("#empty")).to_be_visible()
            live(b)

        with evidence.step("add five tasks: the second tab shows them without a reload"):
            front(a)
            for n in range(1, 6):
                add(a, f"task {n}")
                expect(a.locator("#tasks li")).to_have_count(n)
            titles(a, "task 5", "task 4", "task 3", "task 2", "task 1")
            titles(b, "task 5", "task 4", "task 3", "task 2", "task 1")

        with evidence.step("a blank title: the API's 422 detail beside the title field"):
            add(a, "   ")
            expect(a.locator("#add-form .field-error[data-field=title]")).to_contain_text(
                "must not be empty"
            )
            expect(a.locator("#tasks li")).to_have_count(5)
            expect(a.locator("#error")).to_be_empty()

        with evidence.step("a reload shows the first page; Load more follows Link"):
            a.reload()
            live(a)
            load_everything(a, "task 5", "task 4", "task 3", "task 2", "task 1")

        with evidence.step("toggle a task: done in both tabs"):
            task(a, "task 2").locator(".toggle").check()
            expect(task(a, "task 2")).to_have_class(re.compile(r"\bcompleted\b"))
            expect(task(b, "task 2")).to_have_class(re.compile(r"\bcompleted\b"))

        with evidence.step("filter: pending, completed, all"):
            a.locator("#filter").select_option("pending")
            titles(a, "task 5", "task 4", "task 3")
            a.locator("#more").click()
            titles(a, "task 5", "task 4", "task 3", "task 1")
            a.locator("#filter").select_option("completed")
            titles(a, "task 2")
            a.locator("#filter").select_option("all")
            load_everything(a, "task 5", "task 4", "task 3", "task 2", "task 1")

        with evidence.step("add and delete in the first tab: the second follows"):
            add(a, "from tab A")
            titles(b, "from tab A", "task 5", "task 4", "task 3", "task 2", "task 1")
            task(a, "task 4").locator(".delete").click()
            titles(a, "from tab A", "task 5", "task 3", "task 2", "task 1")
            titles(b, "from tab A", "task 5", "task 3", "task 2", "task 1")

        with evidence.step("a stale edit: 412, and the task as it is now"):
            task(front(b), "task 1").locator(".edit").click()  # B begins from version 1
            task(front(a), "task 1").locator(".edit").click()
            task(a, "task 1").locator(".edit-form input[name=title]").fill("task 1, from A")
            task(a, "task 1").locator(".edit-form button[type=submit]").click()
            titles(a, "from tab A", "task 5", "task 3", "task 2", "task 1, from A")
            edited_in_b = task(front(b), "task 1, from A")  # its form is still open
            edited_in_b.locator(".edit-form input[name=title]").fill("task 1, from B")
            edited_in_b.locator(".edit-form button[type=submit]").click()
            expect(edited_in_b.locator(".conflict")).to_contain_text(
                "changed elsewhere and is now “task 1, from A”"
            )
            assert ("PATCH", 412) in answers

        with evidence.step("saving again replaces the task as it is now"):
            edited_in_b.locator(".edit-form button[type=submit]").click()
            titles(b, "from tab A", "task 5", "task 3", "task 2", "task 1, from B")
            titles(a, "from tab A", "task 5", "task 3", "task 2", "task 1, from B")

        with evidence.step("the stream ends with its token, and reconnects with Last-Event-ID"):
            # The second tab's first stream ends TOKEN_SECONDS after its token was made.
            expect(b.locator("#live")).to_have_attribute(
                "data-connections", re.compile(r"^([2-9]|\d\d+)$"), timeout=4 * TIMEOUT_MS
            )
            live(b)
            resumed = [r for r in streams if r.headers.get("last-event-id")]
            assert resumed, [r.headers for r in streams]
            first = {
                r.headers["authorization"] for r in streams if not r.headers.get("last-event-id")
            }
            assert any(r.headers["authorization"] not in first for r in resumed), "a fresh token"
            add(front(a), "after a reconnect")
            titles(
                b, "after a reconnect", "from tab A", "task 5", "task 3", "task 2", "task 1, from B"
            )

        with evidence.step("sign out"):
            a.locator("#sign-out").click()
            expect(a.locator("#signed-out")).to_be_visible()
            expect(a.locator("#live")).to_have_attribute("data-state", "off")

        with evidence.step("sign in again: the same tasks"):
            a.locator("#auth-form input[name=email]").fill(email)
            a.locator("#auth-form input[name=password]").fill(PASSWORD)
            a.locator("#auth-form button[name=sign-in]").click()
            expect(a.locator("#who")).to_have_text(email)
            titles(a, "after a reconnect", "from tab A", "task 5")
            live(a)
    assert evidence.page_errors == []


def test_a_page_whose_origin_is_not_allowed_is_refused(
    chromium: Browser, site: Site, evidence: Evidence, tmp_path: Path
) -> None:
    # The classic slip: the page is opened as 127.0.0.1, CORS_ORIGINS names localhost.
    port = site.origin.rsplit(":", 1)[1]
    settings = {
        "BETTER_AUTH_URL": site.better_auth.origin,
        "CORS_ORIGINS": f"http://localhost:{port}",
    }
    database = f"sqlite:///{tmp_path / 'tasks.db'}"
    with (
        taskapi_serve(database, tmp_path, settings=settings) as api,
        browser_context(chromium) as context,
    ):
        site.config["tasksApiUrl"] = api.base_url
        tab = evidence.watch("tab", context.new_page())
        with evidence.step("sign up: Better Auth answers, the API is refused by the browser"):
            tab.goto(site.origin)
            sign_up(tab, f"refused-{time.time_ns()}@example.com")
            expect(tab.locator("#signed-in")).to_be_visible()  # Better Auth's part worked
            expect(tab.locator("#error")).to_have_text(
                "The tasks cannot be reached. Check your connection."
            )
            until(
                lambda: any("blocked by CORS policy" in line for line in evidence.console),
                "the browser's CORS error in the console",
                tab=tab,
            )
            expect(tab.locator("#tasks li")).to_have_count(0)
            log = api.log.read_text()
            assert f'refused a preflight from the origin "{site.origin}"' in log, log


def test_the_example_type_checks(bundle: "subprocess.Popen[str]") -> None:
    output, _ = bundle.communicate(timeout=300)
    assert bundle.returncode == 0, output


def test_the_example_serves_with_one_command(bundle: object, tmp_path: Path) -> None:
    """What `make example` runs: the three servers on their origins, stopped by a signal."""
    ports = {name: free_port() for name in ("page", "auth", "api")}
    command = [sys.executable, str(EXAMPLE / "serve.py")]
    command += [f"--{name}-port={port}" for name, port in ports.items()]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    page = f"http://127.0.0.1:{ports['page']}"
    try:
        until(
            lambda: "The example is served" in log.read_text() or process.poll() is not None,
            "start",
            90,
        )
        assert process.poll() is None, log.read_text()
        with httpx.Client(timeout=30) as http:
            config = http.get(f"{page}/config.json").json()
            assert config == {
                "tasksApiUrl": f"http://127.0.0.1:{ports['api']}",
                "betterAuthUrl": f"http://127.0.0.1:{ports['auth']}",
                "pageSize": 20,
            }
            assert http.get(f"{page}/app.js").status_code == 200
            for url in (
                config["tasksApiUrl"] + "/api/someone/tasks",
                config["betterAuthUrl"] + "/api/auth/token",
            ):
                preflight = http.options(
                    url,
                    headers={
                        "Origin": page,
                        "Access-Control-Request-Method": "GET",
                        "Access-Control-Request-Headers": "authorization",
                    },
                )
                assert preflight.headers.get("access-control-allow-origin") == page, preflight
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert process.returncode == 0, log.read_text()
    for port in ports.values():
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
