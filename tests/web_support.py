"""Browser tests: a real `intently` server process and Debian's chromium driven by Playwright.

Pages under test are served to the browser by Playwright (`route_page`) from a made-up
shop origin, http://shop.test, while the tag and the API come from the real server on
127.0.0.1: the tag works across origins, as it does on a customer's site.

Screenshots go to `test-artifacts/` (INTENTLY_TEST_ARTIFACTS overrides).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from support import SECRET_KEY, WRITE_KEY, free_port, wait_ready

CHROMIUM = os.environ.get("INTENTLY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
    # The shop (http://shop.test) calls the engine on 127.0.0.1: without this, Chromium's
    # Local Network Access checks block a public, insecure origin from loopback.
    "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests,"
    "PrivateNetworkAccessRespectPreflightResults",
]  # fmt: skip
SHOP = "http://shop.test"
_DEFAULT_ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ARTIFACTS = Path(os.environ.get("INTENTLY_TEST_ARTIFACTS", _DEFAULT_ARTIFACTS))


def chromium_or_skip() -> str:
    """The browser's path; a missing browser skips the test, or fails it in CI
    (INTENTLY_REQUIRE_SERVICES=1), where `make test` has installed it."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    message = f"browser tests need chromium at {CHROMIUM} (`make test` installs it with apt)"
    if os.environ.get("INTENTLY_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class LiveServer:
    """`intently serve` (or `intently demo`) as its own process on a free port."""

    data_dir: Path
    port: int
    process: subprocess.Popen[str]
    write_key: str = WRITE_KEY
    secret_key: str = SECRET_KEY
    output: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, key: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {key or self.secret_key}"}
        request = urllib.request.Request(self.url + path, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, body: Any, key: str | None = None) -> Any:
        headers = {
            "Authorization": f"Bearer {key or self.write_key}",
            "Content-Type": "application/json",
        }
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=30)
        return out


def start_server(
    data_dir: Path, *args: str, command: str = "serve", env: dict[str, str] | None = None
) -> LiveServer:
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("INTENTLY_")}
    environment.update(
        {"INTENTLY_WRITE_KEY": WRITE_KEY, "INTENTLY_SECRET_KEY": SECRET_KEY, **(env or {})}
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "intently", command, "--port", str(port), "--data-dir",
         str(data_dir), "--cors-origin", SHOP, *args],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_ready(port, process, seconds=60)
    except AssertionError:
        out = process.communicate(timeout=10)[0] if process.poll() is not None else ""
        raise AssertionError(f"server did not start:\n{out}") from None
    return LiveServer(data_dir, port, process)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("live") / "data")
    yield server
    server.stop()


# Per module, not per session: Playwright's sync API runs an event loop in this thread
# while it is open, and an async test after it (anyio) could not start its own.
@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@dataclass
class BrowserPage:
    """A page in a fresh browser context, with the uncaught errors it raised."""

    page: Any
    context: Any
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def browser_page(chromium: Any, request: pytest.FixtureRequest) -> Iterator[BrowserPage]:
    """A page whose uncaught errors fail the test; a screenshot is kept either way."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    found = BrowserPage(page, context)
    page.on("pageerror", lambda error: found.errors.append(str(error)))
    page.on(
        "console",
        lambda message: found.console.append(f"{message.type}: {message.text}"),
    )
    yield found
    # A page the test closed has no screenshot; the test's own result stands.
    with contextlib.suppress(Exception):
        found.screenshot(request.node.name)
    context.close()
    assert not found.errors, f"uncaught errors in the page: {found.errors}"


def route_page(page: Any, path: str, html: str) -> str:
    """Serve `html` at http://shop.test{path} to this page (the shop's own origin)."""
    url = SHOP + path

    def fulfil(route: Any) -> None:
        route.fulfill(status=200, content_type="text/html; charset=utf-8", body=html)

    page.route(url, fulfil)
    return url


def tag_html(
    server: LiveServer, body: str, *, attributes: str = "", head: str = "",
    before: Callable[[], str] | None = None,
) -> str:  # fmt: skip
    """A shop page with the tag in its head, as a customer installs it."""
    extra = before() if before else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Shop</title>"
        f"{extra}<script src='{server.url}/sdk/intently.js' data-write-key='{server.write_key}'"
        f" data-endpoint='{server.url}' {attributes}></script>{head}</head>"
        f"<body>{body}</body></html>"
    )
