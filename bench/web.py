"""Browser tag benchmark: size, and the time from the tag's first line to a rendered
placement, in Debian's chromium on localhost.

A real `intently serve` (one banner offer, the starter `home_hero`), chromium driven by
Playwright; the shop's page comes from http://shop.test (served by Playwright), the tag
and the API from 127.0.0.1, as in the browser tests. Each load is a fresh browser
context (no cache, no cookies: a first visit).

Measured, in one run:
- tag: from the tag's first line (`intently._timing.start`, performance.now) to the
  placement rendered (`_timing.rendered`), over --loads page loads; also how many fell
  back to the default content (default timeout, 300 ms);
- ceiling: a page whose inline script in <head> notes the time and, at
  DOMContentLoaded, puts static content into the placement (no network): the least any
  tag waiting for the parsed page can take;
- the /v1/context round trip alone, timed from the page with fetch (same body, same
  text/plain request as the tag's);
- long tasks (PerformanceObserver 'longtask', buffered, over every load): the longest on
  the tag's pages and, for comparison, on the ceiling's pages (no tag: what the browser
  itself takes to start a page on this machine);
- size of the tag: source, minified (rjsmin, as served), gzipped as served.

    python bench/web.py [--loads 30] [--json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TAG = ROOT / "src" / "intently" / "web" / "static" / "intently.js"
WRITE_KEY, SECRET_KEY = "wk_bench_web", "sk_bench_web"
SHOP = "http://shop.test"
CHROMIUM = os.environ.get("INTENTLY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
    "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests,"
    "PrivateNetworkAccessRespectPreflightResults",
]  # fmt: skip
LONG_TASKS = """
window.__long = [];
try {
  new PerformanceObserver((list) => list.getEntries()
    .forEach((e) => window.__long.push(e.duration))).observe({type: 'longtask', buffered: true});
} catch (e) {}
"""
CEILING = """<!doctype html><html><head><meta charset='utf-8'><title>Ceiling</title>
<script>
window.__t0 = performance.now();
document.addEventListener('DOMContentLoaded', () => {
  const el = document.querySelector('[data-placement]');
  const a = document.createElement('a');
  a.href = '/run'; a.textContent = 'Run faster';
  el.replaceChildren(a);
  window.__t1 = performance.now();
});
</script></head><body><h1>Shop</h1><div data-placement>Default</div></body></html>"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("INTENTLY_")}
        env.update(INTENTLY_WRITE_KEY=WRITE_KEY, INTENTLY_SECRET_KEY=SECRET_KEY)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "intently", "serve", "--port", str(self.port),
             "--data-dir", str(data_dir), "--cors-origin", SHOP, "--log-level", "warning"],
            env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the server did not start within 60 s")

    def call(self, path: str, body: Any, key: str = SECRET_KEY) -> Any:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def sizes(server: Server) -> dict[str, int]:
    plain = urllib.request.urlopen(server.url + "/sdk/intently.js", timeout=10).read()
    request = urllib.request.Request(
        server.url + "/sdk/intently.js", headers={"Accept-Encoding": "gzip"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        served = response.read()
        assert response.headers.get("Content-Encoding") == "gzip"
    assert gzip.decompress(served) == plain
    return {"source": TAG.stat().st_size, "minified": len(plain), "gzipped": len(served)}


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p95": p95, "max": ordered[-1], "n": len(ordered)}


def measure(server: Server, loads: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    tag_page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Shop</title>"
        f"<script src='{server.url}/sdk/intently.js' data-write-key='{WRITE_KEY}'></script>"
        "</head><body><h1>Shop</h1><div data-intently-placement='home_hero'>Default</div>"
        "</body></html>"
    )
    rendered: list[float] = []
    fallbacks = 0
    ceiling: list[float] = []
    round_trips: list[float] = []
    longest = {"tag": 0.0, "ceiling": 0.0}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

        def fresh(html: str) -> tuple[Any, Any]:
            context = browser.new_context()
            page = context.new_page()
            page.add_init_script(LONG_TASKS)
            page.route(SHOP + "/", lambda route: route.fulfill(
                status=200, content_type="text/html", body=html))  # fmt: skip
            page.goto(SHOP + "/")
            return context, page

        for index in range(loads + 2):  # the first two warm the browser and the server
            context, page = fresh(tag_page)
            page.wait_for_function(
                "window.intently && document.querySelector('[data-intently-ready]')"
            )
            timing = page.evaluate("intently._timing")
            page.wait_for_timeout(100)
            if index >= 2:
                longest["tag"] = max([longest["tag"], *page.evaluate("window.__long")])
                if "rendered" in timing:
                    rendered.append(timing["rendered"] - timing["start"])
                else:
                    fallbacks += 1
            context.close()
            context, page = fresh(CEILING)
            page.wait_for_function("window.__t1")
            if index >= 2:
                ceiling.append(page.evaluate("window.__t1 - window.__t0"))
                longest["ceiling"] = max([longest["ceiling"], *page.evaluate("window.__long")])
            context.close()
        # The round trip alone, from a page of the shop's origin.
        context, page = fresh(tag_page)
        page.wait_for_function("document.querySelector('[data-intently-ready]')")
        round_trips = page.evaluate(
            """async ([url, key, n]) => {
              const out = [];
              for (let i = 0; i < n; i++) {
                const body = JSON.stringify({placements: [{id: 'home_hero'}], writeKey: key,
                  anonymousId: 'bench-' + i, templates: true, context: {page: {path: '/'}}});
                const t = performance.now();
                const r = await fetch(url + '/v1/context', {method: 'POST', body,
                  headers: {'Content-Type': 'text/plain'}});
                await r.json();
                out.push(performance.now() - t);
              }
              return out;
            }""",
            [server.url, WRITE_KEY, loads],
        )
        context.close()
        browser.close()
    return {
        "tag_ms": summary(rendered) if rendered else None,
        "fallbacks": fallbacks,
        "ceiling_ms": summary(ceiling),
        "round_trip_ms": summary(round_trips),
        "longest_task_ms": longest,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        server = Server(Path(directory) / "data")
        try:
            fields = {"url": "/run", "text": "New running shoes", "cta": "Shop now"}
            offer = {"id": "hero-run", "kind": "banner", "title": "Run faster", "fields": fields}
            server.call("/v1/catalog/offers", {"offers": [offer]})
            result = {"size_bytes": sizes(server), **measure(server, options.loads)}
        finally:
            server.stop()
    if options.json:
        print(json.dumps(result, indent=2))
        return
    size = result["size_bytes"]
    print(f"tag size: source {size['source']:,} B, minified {size['minified']:,} B, "
          f"gzipped as served {size['gzipped']:,} B (budget 8,192 B)")  # fmt: skip

    def row(name: str, found: dict[str, float] | None) -> None:
        if found is None:
            print(f"{name:<44} (none)")
            return
        print(f"{name:<44} p50 {found['p50']:7.1f}  p95 {found['p95']:7.1f}  "
              f"max {found['max']:7.1f}  (n={found['n']:.0f})")  # fmt: skip

    print(f"{'ms, chromium on localhost, fresh context each load':<44}")
    row("tag: script start -> placement rendered", result["tag_ms"])
    print(f"{'  fell back to default content (300 ms)':<44} {result['fallbacks']}")
    row("ceiling: inline script, static render", result["ceiling_ms"])
    row("/v1/context round trip alone (fetch)", result["round_trip_ms"])
    longest = result["longest_task_ms"]
    print(f"{'longest task over 50 ms (0: none), tag page':<44} {longest['tag']:.0f} ms; "
          f"the ceiling's page (no tag): {longest['ceiling']:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
