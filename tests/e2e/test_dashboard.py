"""The web dashboard in a real headless Chromium: Debian's `chromium`, driven by Playwright.

Every test saves screenshots under a pytest tmp dir (its path is printed; a failure adds
`failure.png` there and names the dir in the error). With AGENTRUNS_UPDATE_SCREENSHOTS=1 the
flow test also refreshes docs/img/run-page.png for the README.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentruns.testing.process import ServerProcess
from agentruns.testing.server import FakeServer, start_in_thread
from e2e.conftest import Api
from e2e.test_bad_input import other_project_key

CHROMIUM = Path(os.environ.get("AGENTRUNS_CHROMIUM", "/usr/bin/chromium"))
REQUIRE_BROWSER = os.environ.get("AGENTRUNS_REQUIRE_BROWSER") == "1"
# What Debian's chromium needs to run headless as root in a container, and to stay off the
# network (no updates, no sync, no QUIC probes).
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
README_SHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "run-page.png"
LOOKUP = {
    "type": "function",
    "name": "lookup",
    "description": "Look a word up in the caller's dictionary.",
    "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
}
FIRST_TEXT = "Let me look that word up in your dictionary first."
FINAL_TEXT = "A cat is a small feline, says your dictionary."

try:
    from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
except ImportError as exc:  # pragma: no cover - the dev extra installs it
    if REQUIRE_BROWSER:
        raise
    pytest.skip(f"the playwright package is not installed ({exc})", allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"no Chromium at {CHROMIUM} (`apt-get install chromium`; .ci/run does it)"
        if REQUIRE_BROWSER:
            pytest.fail(f"AGENTRUNS_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=LAUNCH_ARGS, timeout=30_000
        )
        yield chromium
        chromium.close()


class Shots:
    """Screenshots of one test, and the console errors of its pages (a CSP slip shows here)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.errors: list[str] = []
        self.pages: list[Page] = []

    def page(self, browser: Browser, **context: Any) -> Page:
        page = browser.new_context(**context).new_page()
        page.set_default_timeout(10_000)
        page.on("pageerror", lambda error: self.errors.append(f"{page.url}: {error}"))
        page.on("console", lambda message: self._console(page, message))
        self.pages.append(page)
        return page

    def _console(self, page: Page, message: ConsoleMessage) -> None:
        # The API's expected 4xx answers are logged as failed loads: not errors of the page.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(f"{page.url}: {message.text}")

    def take(self, page: Page, name: str) -> Path:
        path = self.directory / f"{len(list(self.directory.iterdir())):02d}-{name}.png"
        page.screenshot(path=path, full_page=True)
        return path

    @contextlib.contextmanager
    def on_failure(self) -> Iterator[None]:
        try:
            yield
        except BaseException as exc:
            for number, page in enumerate(self.pages):
                with contextlib.suppress(Exception):
                    page.screenshot(path=self.directory / f"failure-{number}.png", full_page=True)
            exc.add_note(f"dashboard screenshots: {self.directory}")
            raise
        assert not self.errors, self.errors


@pytest.fixture
def shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shots]:
    directory = tmp_path_factory.mktemp("dashboard-shots")
    print(f"dashboard screenshots: {directory}")
    found = Shots(directory)
    yield found
    for page in found.pages:
        page.context.close()


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 200 and counts what it got."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        self.app = Starlette(routes=[Route("/hooks", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.bodies.append(body)
        return Response(status_code=200)


def sign_in(page: Page, base: str, key: str, path: str = "/") -> None:
    page.goto(base + path)
    expect(page).to_have_url(re.compile(r"/signin\?next="))
    page.get_by_label("API key").fill(key)
    page.get_by_label("API key").press("Enter")  # the keyboard is enough
    expect(page).to_have_url(base + path)


def test_sign_in_create_agent_watch_answer_and_see_webhook(
    server: ServerProcess, api: Api, fake_model: FakeServer, browser: Browser, shots: Shots
) -> None:
    base = server.url
    assert server.api_key
    receiver = Receiver()
    with start_in_thread(receiver.app) as hooks, shots.on_failure():
        page = shots.page(browser, viewport={"width": 1100, "height": 800})
        page.goto(base + "/")
        expect(page).to_have_url(re.compile(r"/signin"))
        page.get_by_label("API key").fill("ar_not_a_key")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#key-error")).to_contain_text("not valid")
        sign_in(page, base, server.api_key)
        expect(page.get_by_text("No runs yet.")).to_be_visible()
        shots.take(page, "runs-empty")

        # Create an agent; the server's 422 shows next to the field it is about.
        page.get_by_role("link", name="Agents", exact=True).click()
        expect(page.get_by_text("No agents yet.")).to_be_visible()
        page.get_by_role("link", name="New agent").click()
        page.locator("#f-name").fill("dictionary")
        page.locator("#f-model").fill("nope:some-model")
        page.locator("#f-prompt").fill("Define {{word}}")
        page.locator("#f-tools").fill(json.dumps([LOOKUP]))
        page.locator("#f-callback_url").fill(f"{hooks.root_url}/hooks")
        page.get_by_role("button", name="Save").click()
        expect(page.locator("#e-model")).to_contain_text("model")
        expect(page.locator("#f-model")).to_be_focused()
        shots.take(page, "agent-422")
        page.locator("#f-model").fill("")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("heading", name="dictionary")).to_be_visible()
        [agent] = api.ok("GET", "/v1/agents")
        expect(page).to_have_url(f"{base}/agents/{agent['id']}")

        # Start a run from the agent's page: one field per template var.
        fake_model.script(
            {
                "text": FIRST_TEXT,
                "token_delay_s": 0.12,
                "tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"word": "cat"}}],
            },
            {"text": FINAL_TEXT, "token_delay_s": 0.05},
        )
        page.get_by_label("{{word}}").fill("cat")
        page.get_by_role("button", name="Start run").click()
        expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]+$"))
        run_id = page.url.rsplit("/", 1)[1]

        # Tokens appear one by one: part of the message is on screen before the rest.
        page.wait_for_function(
            """([full]) => {
                const text = document.querySelector('.entry.assistant .text')?.textContent ?? '';
                return text.length > 0 && text.length < full.length;
            }""",
            arg=[FIRST_TEXT],
        )
        shots.take(page, "streaming")
        expect(page.locator(".entry.assistant").first).to_have_text(re.compile(FIRST_TEXT))

        # The client-side call waits for an answer in its form.
        expect(page.locator("[data-status]")).to_have_text("awaiting tool calls")
        form = page.locator("form[data-call=c1]")
        expect(form).to_contain_text('"word": "cat"')
        shots.take(page, "awaiting")
        form.get_by_label("Output of lookup").fill("a small feline")
        form.get_by_role("button", name="Send output").click()

        expect(page.locator("[data-status]")).to_have_text("completed", timeout=15_000)
        expect(page.locator(".entry.assistant").last).to_contain_text(FINAL_TEXT)
        expect(page.locator(".entry.tool")).to_contain_text("a small feline")
        expect(page.locator("[data-pending-section]")).to_be_hidden()

        # Both webhooks (paused, completed) are listed with their delivered attempt.
        deliveries = page.locator("tr[data-delivery]")
        expect(deliveries).to_have_count(2, timeout=15_000)
        completed = deliveries.filter(has_text="run.completed")
        expect(completed.locator(".status")).to_have_text("delivered", timeout=15_000)
        expect(completed).to_contain_text("HTTP 200")
        assert len(receiver.bodies) == 2
        page.locator("[data-deliveries]").scroll_into_view_if_needed()
        shot = shots.take(page, "run-page")
        page.screenshot(path=shots.directory / "run-page-viewport.png")
        if os.environ.get("AGENTRUNS_UPDATE_SCREENSHOTS") == "1":
            page.set_viewport_size({"width": 900, "height": 900})
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=README_SHOT)
        assert shot.stat().st_size > 0

        # The list shows it without a reload, completed, with its tokens.
        page.get_by_role("link", name="Runs", exact=True).click()
        row = page.locator(f"tr[data-run='{run_id}']")
        expect(row.locator(".status")).to_have_text("completed")
        expect(row).to_contain_text("dictionary")
        run = api.ok("GET", f"/v1/agent-runs/{run_id}")
        usage = run["usage"]
        expect(row).to_contain_text(f"{usage['input_tokens']} / {usage['output_tokens']}")


def test_pages_show_only_the_keys_project(
    server: ServerProcess, api: Api, browser: Browser, shots: Shots
) -> None:
    base = server.url
    assert server.api_key
    agent = api.agent(name="secret-agent-a", prompt="the launch codes")
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
    api.wait(run["id"])
    other_key = other_project_key(server)

    with shots.on_failure():
        other = shots.page(browser)
        sign_in(other, base, other_key)
        expect(other.get_by_text("No runs yet.")).to_be_visible()
        other.goto(base + "/agents")
        expect(other.get_by_text("No agents yet.")).to_be_visible()
        for path, says in [
            (f"/runs/{run['id']}", "no such run"),
            (f"/agents/{agent['id']}", "no such agent"),
            (f"/agents/{agent['id']}/edit", "no such agent"),
            (f"/?agent_id={agent['id']}", "No run matches"),
        ]:
            other.goto(base + path)
            expect(other.get_by_text(re.compile(says))).to_be_visible()
            content = other.content()
            assert "secret-agent-a" not in content and "launch codes" not in content, path
        shots.take(other, "other-project")

        # The owner sees them, and a new run shows up live on a phone-sized screen.
        owner = shots.page(browser, viewport={"width": 390, "height": 800})
        sign_in(owner, base, server.api_key)
        expect(owner.locator(f"tr[data-run='{run['id']}']")).to_contain_text("secret-agent-a")
        fresh = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
        row = owner.locator(f"tr[data-run='{fresh['id']}']")
        expect(row.locator(".status")).to_have_text("completed", timeout=15_000)
        assert owner.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        shots.take(owner, "runs-narrow")


def test_edit_agent_publish_and_continue_run(
    server: ServerProcess, api: Api, browser: Browser, shots: Shots
) -> None:
    base = server.url
    assert server.api_key
    agent = api.agent(name="greeter", prompt="Greet {{name}}", vars={"name": "friend"})
    with shots.on_failure():
        page = shots.page(browser)
        sign_in(page, base, server.api_key, f"/agents/{agent['id']}/edit")
        page.locator("#f-tools").fill("[{not json")
        page.get_by_role("button", name="Save").click()
        expect(page.locator("#e-tools")).to_contain_text("not valid JSON")
        page.locator("#f-tools").fill("[]")
        page.locator("#f-prompt").fill("Say hello to {{name}}")
        page.get_by_role("button", name="Save").click()
        expect(page.locator("[data-versions]")).to_have_value("2")
        page.get_by_role("button", name="Publish version 2").click()
        expect(page.locator("[data-published-badge]")).to_have_text("published: version 2")
        page.locator("[data-versions]").select_option("1")
        expect(page.locator("[data-spec]")).to_contain_text("Greet {{name}}")
        assert api.ok("GET", f"/v1/agents/{agent['id']}")["published_version"] == 2
        shots.take(page, "agent-versions")

        # Production runs the published version; the default var fills the form.
        expect(page.get_by_label("{{name}}")).to_have_value("friend")
        page.get_by_label("Environment").select_option("production")
        page.get_by_role("button", name="Start run").click()
        expect(page.locator("[data-status]")).to_have_text("completed", timeout=15_000)
        expect(page.locator("[data-facts]")).to_contain_text("v2")
        page.get_by_label("Continue with a message").fill("And in French?")
        page.get_by_role("button", name="Continue").click()
        expect(page.locator(".entry.divider")).to_contain_text("you: And in French?")
        expect(page.locator(".entry.assistant")).to_have_count(2, timeout=15_000)
        expect(page.locator("[data-status]")).to_have_text("completed", timeout=15_000)
        shots.take(page, "continued")
