"""The dashboard in a real browser against a real server: it refuses a wrong key, loads
with the secret one, its numbers move as events and decisions arrive, its charts are
drawn, and the profile inspector finds a person, shows their events and decisions,
exports and erases them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from web_support import BrowserPage, LiveServer

pytestmark = pytest.mark.timeout(120)

BANNERS = [
    {"id": f"b{i}", "kind": "banner", "title": f"Banner {i}", "fields": {"headline": f"H{i}"}}
    for i in range(3)
]


def product_viewed(visitor: str, product: str) -> dict[str, Any]:
    return {"type": "track", "event": "Product Viewed", "anonymousId": visitor,
            "properties": {"product_id": product, "category": "running", "price": 80}}  # fmt: skip


def open_dashboard(browser: BrowserPage, server: LiveServer, key: str) -> Any:
    page = browser.page
    page.goto(server.url + "/admin")
    page.fill("#key", key)
    page.click("#sign-in-form button[type=submit]")
    return page


def tile(page: Any, name: str) -> str:
    return str(page.text_content(f"#tile-{name} .value")).strip()


def wait_tile_change(page: Any, name: str, before: str) -> str:
    page.wait_for_function(
        "([id, before]) => document.querySelector(id).textContent.trim() !== before",
        arg=[f"#tile-{name} .value", before],
        timeout=15_000,
    )
    return tile(page, name)


def test_a_wrong_key_is_refused(live_server: LiveServer, browser_page: BrowserPage) -> None:
    page = open_dashboard(browser_page, live_server, "sk_not_the_key")
    page.wait_for_selector("#sign-in-error:not([hidden])")
    assert "Wrong key" in str(page.text_content("#sign-in-error"))
    assert page.is_hidden("#dashboard")
    # The write key is a real key, but not the one that reads the dashboard.
    page.fill("#key", live_server.write_key)
    page.click("#sign-in-form button[type=submit]")
    page.wait_for_function(
        "document.querySelector('#sign-in-error').textContent.includes('not the secret key')"
    )
    assert page.is_hidden("#dashboard")
    browser_page.screenshot("admin-wrong-key")


def test_the_dashboard_moves_as_events_and_decisions_arrive(
    live_server: LiveServer, browser_page: BrowserPage
) -> None:
    live_server.post("/v1/catalog/offers", {"offers": BANNERS}, key=live_server.secret_key)
    page = open_dashboard(browser_page, live_server, live_server.secret_key)
    page.wait_for_selector("#dashboard:not([hidden])")
    page.wait_for_function("document.querySelector('#tile-events .value').textContent !== '–'")
    # The charts are Plotly's SVG.
    page.wait_for_selector("#chart-rates .main-svg", timeout=15_000)
    page.wait_for_selector("#chart-latency .main-svg")
    page.wait_for_selector("#chart-sessions .main-svg")
    events_before = tile(page, "events")
    sessions_before = tile(page, "sessions")

    live_server.post(
        "/v1/events", {"batch": [product_viewed(f"live{i % 4}", f"p{i}") for i in range(40)]}
    )
    events_after = wait_tile_change(page, "events", events_before)
    assert float(events_after) > float(events_before)
    assert int(wait_tile_change(page, "sessions", sessions_before)) >= 4

    decisions_before = tile(page, "decisions")
    for i in range(10):
        live_server.post(
            "/v1/decide", {"anonymousId": f"live{i % 4}", "placements": [{"id": "home_hero"}]}
        )
    assert float(wait_tile_change(page, "decisions", decisions_before)) > 0
    page.wait_for_function("document.querySelector('#tile-p50 .value').textContent !== '–'")
    # The placements table counts them; the chart has drawn a line.
    page.wait_for_function(
        "(() => { const row = document.querySelector('#placements tr[data-placement=home_hero]');"
        " return row && Number(row.children[2].textContent.replace(/\\D/g, '')) >= 10; })()",
        timeout=15_000,
    )
    assert page.locator("#chart-rates .scatterlayer .trace").count() >= 2
    assert page.locator("#placements tr[data-placement=pdp_recs]").count() == 1
    # The key is kept for the tab: a reload stays signed in.
    page.reload()
    page.wait_for_selector("#dashboard:not([hidden])")
    page.wait_for_selector("#chart-rates .main-svg", timeout=15_000)
    browser_page.screenshot("admin-dashboard")


def test_experiments_are_listed_with_their_lift_chart(
    live_server: LiveServer, browser_page: BrowserPage
) -> None:
    live_server.post("/v1/catalog/offers", {"offers": BANNERS}, key=live_server.secret_key)
    experiment = {
        "name": "Hero test", "status": "running", "placements": ["home_hero"],
        "variants": [{"id": "control", "weight": 0.5},
                     {"id": "default", "weight": 0.5, "default_content": True}],
    }  # fmt: skip
    _put(live_server, "/v1/experiments/hero-test", experiment)
    for i in range(30):
        live_server.post(
            "/v1/context",
            {"anonymousId": f"exp{i}", "placements": [{"id": "home_hero"}],
             "events": [product_viewed(f"exp{i}", "p1")]},
        )  # fmt: skip
    page = open_dashboard(browser_page, live_server, live_server.secret_key)
    page.wait_for_selector("#experiments .experiment[data-experiment=hero-test]", timeout=15_000)
    text = str(page.text_content("#experiments"))
    assert "Hero test" in text
    assert "Exposed visitors" in text
    page.wait_for_selector("#experiments .main-svg, #experiments p.muted")
    browser_page.screenshot("admin-experiments")


def test_the_profile_inspector_finds_exports_and_deletes_a_person(
    live_server: LiveServer, browser_page: BrowserPage, tmp_path: Path
) -> None:
    live_server.post("/v1/catalog/offers", {"offers": BANNERS}, key=live_server.secret_key)
    visitor = "inspect-me"
    live_server.post("/v1/events", {"batch": [product_viewed(visitor, f"p{i}") for i in range(3)]})
    answer = live_server.post(
        "/v1/decide", {"anonymousId": visitor, "placements": [{"id": "home_hero"}]}
    )
    decision_id = answer["decisions"][0]["decision_id"]
    page = open_dashboard(browser_page, live_server, live_server.secret_key)
    page.wait_for_selector("#dashboard:not([hidden])")

    page.fill("#profile-id", "nobody-at-all")
    page.click("#profile-form button[type=submit]")
    page.wait_for_selector("#profile-error:not([hidden])")
    assert "No profile" in str(page.text_content("#profile-error"))

    page.fill("#profile-id", visitor)
    page.click("#profile-form button[type=submit]")
    page.wait_for_selector("#profile:not([hidden])")
    assert page.locator("#profile-events li").count() == 3
    assert "Product Viewed" in str(page.text_content("#profile-events"))
    assert page.locator(f"#profile-decisions li[data-decision='{decision_id}']").count() == 1
    assert "home_hero" in str(page.text_content("#profile-decisions"))
    assert visitor in str(page.text_content("#profile-identity"))
    assert "personalization" in str(page.text_content("#profile-identity"))
    assert "recent_products" in str(page.text_content("#profile-session"))
    browser_page.screenshot("admin-profile")

    with page.expect_download() as download:
        page.click("#profile-export")
    saved = tmp_path / "export.json"
    download.value.save_as(saved)
    exported = json.loads(saved.read_text())
    assert len(exported["events"]) == 3

    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#profile-delete")
    page.wait_for_selector("#profile-error[data-erased]")
    assert "3 events" in str(page.text_content("#profile-error"))
    assert page.is_hidden("#profile")
    page.click("#profile-form button[type=submit]")  # the same id again
    page.wait_for_function(
        "document.querySelector('#profile-error').textContent.includes('No profile')"
    )


def _put(server: LiveServer, path: str, body: Any) -> Any:
    import urllib.request

    request = urllib.request.Request(
        server.url + path, data=json.dumps(body).encode(), method="PUT",
        headers={"Authorization": f"Bearer {server.secret_key}",
                 "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_plotly_comes_from_the_engine_with_a_long_cache(live_server: LiveServer) -> None:
    import urllib.request

    with urllib.request.urlopen(live_server.url + "/admin", timeout=10) as response:
        page = response.read().decode()
    assert "cdn" not in page.lower()
    start = page.index("/admin/static/plotly.min.js")
    url = page[start : page.index('"', start)]
    request = urllib.request.Request(live_server.url + url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert "immutable" in response.headers["Cache-Control"]
        assert response.headers["Content-Encoding"] == "gzip"
        body = response.read()
    import gzip

    assert b"plotly" in gzip.decompress(body)[:2000].lower()
