"""The browser tag in a real browser: delivery of decisions into placements.

A real `intently serve` (with edge rules) and Debian's chromium (tests/web_support.py).
The shop's pages come from http://shop.test (Playwright serves them); the tag and the
API from the server on 127.0.0.1, across origins, as on a customer's site. Slowness and
failures of the server are made with Playwright's routing, never by changing the product.

Every test fails on an uncaught error in the page (the `browser_page` fixture).
Events are read back from the server with `GET /v1/profiles/{id}/export`; exposures and
rewards from the decision log (decisions.db, which can be read while the server runs).

Helpers here are shared with tests/test_web_tag_events.py.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from intently.act.decisions import DecisionLogReader
from intently.act.templates import DEFAULT_TEMPLATES, compile_template
from web_support import ARTIFACTS, SHOP, BrowserPage, LiveServer, route_page, start_server

EDGE_YAML = """
edge:
  - placement: home_hero
    offer: edge-summer
    description: summer campaign visitors see the summer banner at once
    when: {campaign: [summer-sale]}
"""
OFFERS = [
    {"id": "hero-run", "kind": "banner", "title": "Run faster",
     "fields": {"url": "http://shop.test/run", "text": "New running shoes", "cta": "Shop now",
                "image": "/img/run.svg"}},
    {"id": "edge-summer", "kind": "banner", "title": "Summer edge offer",
     "fields": {"url": "/summer", "text": "Shown without a round trip", "cta": "See"}},
    {"id": "exit10", "kind": "discount", "title": "Wait! 10% off",
     "fields": {"code": "STAY10", "text": "Finish your order today", "url": "/cart",
                "cta": "Use it"}},
    {"id": "xss", "kind": "message", "title": "<script>window.__pwned = 1</script>",
     "fields": {"text": '<img src="x" onerror="window.__pwned = 2">'}},
]  # fmt: skip
ITEMS = [
    {"id": f"p{i}", "title": f"Trail shoe {i}", "price": 50 + i + 0.9, "category": ["running"],
     "url": f"/p/{i}", "image": f"/img/p{i}.svg"}
    for i in range(8)
]  # fmt: skip
PLACEMENTS = {
    "home_hero": {"kind": "offers", "offer_kinds": ["banner"], "offers": ["hero-run"],
                  "policy": {"name": "linucb"}},
    "exit_intent_offer": {"kind": "offers", "offer_kinds": ["discount"], "offers": ["exit10"],
                          "policy": {"name": "beta-thompson"}, "reward": "conversion"},
    "xss_box": {"kind": "offers", "offer_kinds": ["message"], "offers": ["xss"],
                "policy": {"name": "epsilon-greedy"}},
    "grid": {"kind": "items", "recommender": "catalog", "count": 4, "policy": {"name": "slate"}},
}  # fmt: skip
# Generous: the machine running the suite may be busy; the default (300 ms) is tested
# on its own, with a server slowed on purpose.
SLOW_OK = "data-timeout='3000'"


def call(server: LiveServer, method: str, path: str, body: Any = None) -> Any:
    """An admin request (secret key); the answer's JSON."""
    request = urllib.request.Request(
        server.url + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={
            "Authorization": f"Bearer {server.secret_key}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def prepare(server: LiveServer) -> LiveServer:
    """The catalog and placements the tests decide from, and a first decide (warm)."""
    call(server, "POST", "/v1/catalog/offers", {"offers": OFFERS})
    call(server, "POST", "/v1/catalog/items", {"items": ITEMS})
    for placement, spec in PLACEMENTS.items():
        call(server, "PUT", f"/v1/placements/{placement}", spec)
    server.post("/v1/context", {"placements": [{"id": "home_hero"}], "anonymousId": "warm-up"})
    return server


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("tag")
    edge = folder / "edge.yaml"
    edge.write_text(EDGE_YAML)
    server = start_server(folder / "data", env={"INTENTLY_EDGE_FILE": str(edge)})
    try:
        yield prepare(server)
    finally:
        server.stop()


def page_html(server: LiveServer, body: str, attributes: str = SLOW_OK, head: str = "") -> str:
    """A shop page with the tag in its head (as tag_html, with any attributes)."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Shop</title>"
        f"<script src='{server.url}/sdk/intently.js' data-write-key='{server.write_key}' "
        f"{attributes}></script>{head}</head><body>{body}</body></html>"
    )


# Records what the tag reports in the page (render / fallback events), from the start.
RECORDER = """
window.__intently = [];
for (const kind of ['render', 'fallback']) {
  document.addEventListener('intently:' + kind, (e) => window.__intently.push(
    {kind, placement: e.detail.placement, reason: e.detail.reason || null}));
}
"""


def open_page(bp: BrowserPage, server: LiveServer, body: str, *, path: str = "/",
              attributes: str = SLOW_OK, head: str = "") -> str:  # fmt: skip
    bp.page.add_init_script(RECORDER)
    url = route_page(bp.page, path, page_html(server, body, attributes, head))
    bp.page.goto(url)
    return url


def settled(bp: BrowserPage, count: int = 1, seconds: float = 10) -> list[dict[str, Any]]:
    """The tag's render/fallback reports, once there are `count` of them."""
    bp.page.wait_for_function(f"window.__intently && window.__intently.length >= {count}",
                              timeout=seconds * 1000)  # fmt: skip
    reports: list[dict[str, Any]] = bp.page.evaluate("window.__intently")
    return reports


def requests_to(bp: BrowserPage, server: LiveServer) -> list[tuple[str, str, str | None]]:
    """Every request the page makes to the engine, as (method, path, body), from now on."""
    seen: list[tuple[str, str, str | None]] = []

    def record(request: Any) -> None:
        if request.url.startswith(server.url):
            seen.append((request.method, request.url[len(server.url) :], request.post_data))

    bp.page.on("request", record)
    return seen


def wait_for(
    check: Callable[[], Any], seconds: float = 10, what: str = "", page: Any = None
) -> Any:
    """`check()`'s answer once it is true. With `page`, the wait goes through Playwright,
    which runs the page's route handlers only while it is called."""
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        if page is None:
            time.sleep(0.1)
        else:
            page.wait_for_timeout(100)


def events_of(server: LiveServer, visitor: str) -> list[dict[str, Any]]:
    """The visitor's events in the server's log (as sent, after enrichment)."""
    try:
        export = call(server, "GET", f"/v1/profiles/{visitor}/export")
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return []
        raise
    return [row["event"] for row in export["events"]]


def received(server: LiveServer, visitor: str, *names: str, seconds: float = 10,
             page: Any = None) -> list[Any]:  # fmt: skip
    """The visitor's events, once every named one ("Scroll Depth", or "page") arrived."""

    def check() -> list[dict[str, Any]] | None:
        events = events_of(server, visitor)
        kinds = {e.get("event") or e["type"] for e in events}
        return events if set(names) <= kinds else None

    return wait_for(check, seconds, f"events {names} of {visitor}", page)  # type: ignore[no-any-return]


def default_visible(bp: BrowserPage, selector: str) -> bool:
    return bool(bp.page.evaluate(
        """(s) => { const el = document.querySelector(s); if (!el) return false;
        const r = el.getBoundingClientRect();
        return getComputedStyle(el).visibility === 'visible' && r.width > 0 && r.height > 0; }""",
        selector,
    ))  # fmt: skip


HERO = "<div data-intently-placement='home_hero'><p id='default'>Default hero</p></div>"


# -- rendering ------------------------------------------------------------------------------


def test_a_placement_renders_its_decision_with_no_flash_of_default_content(
    browser_page: BrowserPage, shop: LiveServer
) -> None:
    page = browser_page.page
    # Samples, from the first moment, whether the default content could be seen: each
    # animation frame and each DOM change.
    page.add_init_script("""
      window.__seen = [];
      const sample = () => {
        const el = document.getElementById('default');
        if (!el || !el.isConnected) return window.__seen.push(null);
        const r = el.getBoundingClientRect();
        window.__seen.push(getComputedStyle(el).visibility === 'visible' && r.width > 0 &&
          r.bottom > 0 && r.top < innerHeight);
      };
      const frame = () => { sample(); requestAnimationFrame(frame); };
      requestAnimationFrame(frame);
      new MutationObserver(sample)
        .observe(document, {subtree: true, childList: true, attributes: true});
    """)  # fmt: skip
    # The decide is held back a little, to see (and photograph) the page while waiting.
    held: list[Any] = []
    page.route(f"{shop.url}/v1/context", lambda route: held.append(route))
    body = "<h1 id='title'>Welcome to the shop</h1>" + HERO + "<p id='rest'>More content</p>"
    open_page(browser_page, shop, body)
    wait_for(lambda: held, what="the /v1/context request", page=page)
    assert default_visible(browser_page, "#title"), "the page is blank while deciding"
    assert default_visible(browser_page, "#rest")
    assert not default_visible(browser_page, "#default")
    browser_page.screenshot("tag-while-deciding")
    held[0].continue_()
    reports = settled(browser_page)
    assert reports == [{"kind": "render", "placement": "home_hero", "reason": None}]
    seen = page.evaluate("window.__seen")
    assert True not in seen, "the default content was visible before the decision"
    assert False in seen, "the sampler never saw the hidden default content"
    hero = page.locator("[data-intently-placement=home_hero]")
    assert hero.locator(".intently-title").inner_text() == "Run faster"
    assert hero.locator("a").get_attribute("href") == "http://shop.test/run"
    assert hero.locator("a").get_attribute("data-intently-decision")
    decisions = page.evaluate("intently.decisions()")
    assert [d["placement"] for d in decisions] == ["home_hero"]
    assert page.evaluate("intently._timing.rendered > intently._timing.start")
    browser_page.screenshot("tag-rendered")


def test_the_default_content_shows_on_timeout_and_a_late_decision_is_not_rendered(
    browser_page: BrowserPage, shop: LiveServer
) -> None:
    page = browser_page.page
    held: list[Any] = []
    page.route(f"{shop.url}/v1/context", lambda route: held.append(route))
    open_page(browser_page, shop, HERO, attributes="")  # the default timeout, 300 ms
    reports = settled(browser_page)
    assert reports == [{"kind": "fallback", "placement": "home_hero", "reason": "timeout"}]
    assert default_visible(browser_page, "#default")
    # The server answers after all: the answer is read (its events were stored) but the
    # placement keeps its default content, with no flash of another.
    with page.expect_response(f"{shop.url}/v1/context") as answer:
        held[0].continue_()
    assert answer.value.status == 200
    page.wait_for_timeout(300)
    assert default_visible(browser_page, "#default")
    assert page.locator("[data-intently-decision]").count() == 0
    assert page.evaluate("intently.decisions()") == []
    # The page view rode with the late decide, and reached the server.
    received(shop, page.evaluate("intently.anonymousId()"), "page")


def test_an_item_widget_renders_each_item(browser_page: BrowserPage, shop: LiveServer) -> None:
    page = browser_page.page
    open_page(browser_page, shop, "<div data-intently-placement='grid' data-intently-count='3'>"
              "<p id='default'>Popular shoes</p></div>")  # fmt: skip
    assert settled(browser_page)[0]["kind"] == "render"
    items = page.locator("[data-intently-item]")
    assert items.count() == 3
    ids = [items.nth(i).get_attribute("data-intently-item") for i in range(3)]
    assert set(ids) <= {item["id"] for item in ITEMS}
    first = items.first
    assert first.locator(".intently-price").inner_text().endswith(".90")
    assert str(first.get_attribute("href")).startswith("/p/")


def test_values_with_markup_are_shown_as_text_and_never_run(
    browser_page: BrowserPage, shop: LiveServer
) -> None:
    page = browser_page.page
    open_page(browser_page, shop, "<div data-intently-placement='xss_box'>Default note</div>")
    assert settled(browser_page)[0]["kind"] == "render"
    box = page.locator("[data-intently-placement=xss_box]")
    assert box.locator(".intently-title").inner_text() == OFFERS[3]["title"]
    assert box.locator(".intently-body").inner_text() == OFFERS[3]["fields"]["text"]  # type: ignore[index]
    assert box.locator("script, img").count() == 0
    page.wait_for_timeout(200)
    assert page.evaluate("window.__pwned") is None


def test_edge_rules_render_the_first_page_without_a_round_trip(
    browser_page: BrowserPage, shop: LiveServer
) -> None:
    page = browser_page.page
    requests = requests_to(browser_page, shop)
    body = HERO + "<div data-intently-placement='grid'>Popular</div>"
    open_page(browser_page, shop, body, path="/?utm_campaign=summer-sale")
    reports = settled(browser_page, 2)
    hero = page.locator("[data-intently-placement=home_hero]")
    assert hero.locator(".intently-title").inner_text() == "Summer edge offer"
    assert reports[0] == {"kind": "render", "placement": "home_hero", "reason": None}
    shown = page.evaluate("intently.decisions()")
    assert shown[0]["edge"] is True
    # The one decide of the page asked only for what the rule did not show.
    decides = [json.loads(body or "{}") for method, path, body in requests if path == "/v1/context"]
    assert [[p["id"] for p in d["placements"]] for d in decides] == [["grid"]]
    # The next page of the session is decided by the server.
    page.add_init_script(RECORDER)
    page.goto(route_page(page, "/next?utm_campaign=summer-sale", page_html(shop, HERO)))
    settled(browser_page)
    assert hero.locator(".intently-title").inner_text() == "Run faster"


def test_refresh_decides_a_new_view(browser_page: BrowserPage, shop: LiveServer) -> None:
    page = browser_page.page
    open_page(browser_page, shop, "<main id='app'>Loading</main>")
    # A single-page app shows a new view, then asks for its placements.
    page.evaluate("""document.getElementById('app').innerHTML =
        "<div data-intently-placement='home_hero'><p id='default'>Default</p></div>";
        intently.refresh()""")
    assert settled(browser_page)[0]["kind"] == "render"
    assert page.locator(".intently-title").inner_text() == "Run faster"


# -- exposure and clicks -------------------------------------------------------------------


def decision_log(server: LiveServer) -> tuple[dict[str, int], dict[str, float]]:
    reader = DecisionLogReader(server.data_dir / "decisions.db")
    try:
        return reader.exposures(), reader.rewards()
    finally:
        reader.close()


def test_exposure_and_clicks_reach_the_server(browser_page: BrowserPage, shop: LiveServer) -> None:
    page = browser_page.page
    # The shop's page keeps the visitor here (the tag sends clicks by beacon either way).
    head = "<script>document.addEventListener('click', (e) => e.preventDefault())</script>"
    body = HERO + "<div data-intently-placement='grid'>Popular</div>"
    open_page(browser_page, shop, body, head=head)
    settled(browser_page, 2)
    visitor = page.evaluate("intently.anonymousId()")
    shown = {d["placement"]: d["decision_id"] for d in page.evaluate("intently.decisions()")}
    # Both are in view: each is reported viewed once, after a second.
    wait_for(lambda: all(decision_log(shop)[0].get(d) for d in shown.values()), 15,
             "the exposures in the decision log")  # fmt: skip
    page.locator("[data-intently-placement=home_hero] a").click()
    item = page.locator("[data-intently-item]").first
    item_id = item.get_attribute("data-intently-item")
    item.click()
    events = received(shop, visitor, "Decision Viewed", "Promotion Clicked", "Product Clicked")
    viewed = [e["properties"] for e in events if e.get("event") == "Decision Viewed"]
    assert sorted(v["placement"] for v in viewed) == ["grid", "home_hero"]  # once each
    promotion = next(e["properties"] for e in events if e.get("event") == "Promotion Clicked")
    assert promotion == {"promotion_id": "hero-run", "decision_id": shown["home_hero"],
                         "placement": "home_hero"}  # fmt: skip
    product = next(e["properties"] for e in events if e.get("event") == "Product Clicked")
    assert product == {"product_id": item_id, "decision_id": shown["grid"], "placement": "grid"}
    # The click is the hero's reward.
    wait_for(lambda: decision_log(shop)[1].get(shown["home_hero"]), 10, "the hero's reward")


def test_exposure_needs_half_the_placement_in_view(
    browser_page: BrowserPage, shop: LiveServer
) -> None:
    page = browser_page.page
    body = "<div style='height:3000px'>Long page</div>" + HERO
    open_page(browser_page, shop, body)
    settled(browser_page)
    page.wait_for_timeout(1500)
    visitor = page.evaluate("intently.anonymousId()")
    page.evaluate("intently.flush()")
    page.wait_for_timeout(1500)
    assert "Decision Viewed" not in {e.get("event") for e in events_of(shop, visitor)}
    page.locator("#default, [data-intently-placement=home_hero]").first.scroll_into_view_if_needed()
    received(shop, visitor, "Decision Viewed")


# -- exit intent ---------------------------------------------------------------------------


def test_exit_intent_shows_the_retention_offer_as_a_dialog(
    browser_page: BrowserPage, shop: LiveServer
) -> None:
    page = browser_page.page
    requests = requests_to(browser_page, shop)
    body = ("<h1>Your cart</h1><div data-intently-placement='exit_intent_offer' "
            "data-intently-trigger='exit-intent'>Default stay offer</div>")  # fmt: skip
    open_page(browser_page, shop, body)
    page.wait_for_timeout(300)
    assert page.get_by_role("dialog").count() == 0
    assert not page.get_by_text("Default stay offer").is_visible()
    page.mouse.move(600, 400)
    page.mouse.move(600, -20, steps=5)  # out through the top of the window
    dialog = page.get_by_role("dialog")
    dialog.wait_for(timeout=10_000)
    assert "Wait! 10% off" in dialog.inner_text()
    assert "STAY10" in dialog.inner_text()
    browser_page.screenshot("tag-exit-intent")
    # Exit intent is decided in its own /v1/context call, which carries the event.
    decides = [json.loads(b or "{}") for m, p, b in requests if p == "/v1/context"]
    exits = [d for d in decides if d["placements"] == [{"id": "exit_intent_offer"}]]
    assert len(exits) == 1
    assert [e["event"] for e in exits[0]["events"] if e["type"] == "track"] == ["Exit Intent"]
    page.keyboard.press("Escape")
    assert dialog.count() == 0
    # Once per page.
    page.mouse.move(600, 400)
    page.mouse.move(600, -20, steps=5)
    page.wait_for_timeout(300)
    assert page.get_by_role("dialog").count() == 0
    events = received(shop, page.evaluate("intently.anonymousId()"), "Exit Intent")
    assert [e["properties"] for e in events if e.get("event") == "Exit Intent"] == [
        {"trigger": "pointer"}
    ]


@pytest.mark.parametrize("trigger", ["scroll-up", "back"])
def test_exit_intent_on_a_phone(chromium: Any, shop: LiveServer, trigger: str) -> None:
    """On a touch screen there is no pointer to leave the page: a fast scroll back up, or
    going back through the page's history, is the exit intent."""
    context = chromium.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        body = ("<div style='height:5000px'>A long cart</div>"
                "<div data-intently-placement='exit_intent_offer' "
                "data-intently-trigger='exit-intent'>Default stay offer</div>")  # fmt: skip
        page.goto(route_page(page, "/cart", page_html(shop, body)))
        page.wait_for_function("window.intently")
        if trigger == "scroll-up":
            page.evaluate("window.scrollTo(0, 3000)")
            page.wait_for_timeout(400)
            # A scroll up of `pixels` in `steps`, `pause` ms apart (a finger's gesture).
            gesture = """async ([pixels, steps, pause]) => {
                for (let i = 1; i <= steps; i++) {
                    window.scrollTo(0, 3000 - (pixels * i) / steps);
                    await new Promise((done) => setTimeout(done, pause));
                }
            }"""
            page.evaluate(gesture, [300, 10, 150])  # slowly, reading: nothing
            page.wait_for_timeout(400)
            assert page.get_by_role("dialog").count() == 0
            page.evaluate("window.scrollTo(0, 3000)")
            page.wait_for_timeout(400)
            page.evaluate(gesture, [1200, 8, 20])  # a flick back to the top
        else:
            page.evaluate("history.pushState({}, '', '#details')")
            page.wait_for_timeout(100)
            assert page.get_by_role("dialog").count() == 0
            page.evaluate("history.back()")
        dialog = page.get_by_role("dialog")
        dialog.wait_for(timeout=10_000)
        assert "STAY10" in dialog.inner_text()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"tag-exit-intent-phone-{trigger}.png"))
        events = received(shop, page.evaluate("intently.anonymousId()"), "Exit Intent")
        assert [e["properties"] for e in events if e.get("event") == "Exit Intent"] == [
            {"trigger": trigger}
        ]
    finally:
        context.close()
    assert not errors


def test_the_exit_dialog_closes_with_its_button(
    browser_page: BrowserPage, shop: LiveServer
) -> None:
    page = browser_page.page
    page.route(f"{shop.url}/v1/context", lambda route: route.abort())
    body = ("<div data-intently-placement='exit_intent_offer' data-intently-trigger='exit-intent'>"
            "<p>Default stay offer</p></div>")  # fmt: skip
    open_page(browser_page, shop, body)
    page.mouse.move(600, 400)
    page.mouse.move(600, -20, steps=5)
    dialog = page.get_by_role("dialog")
    dialog.wait_for(timeout=10_000)
    assert "Default stay offer" in dialog.inner_text()  # the server failed: the default
    page.get_by_role("button", name="Close").click()
    assert dialog.count() == 0


# -- bad input -----------------------------------------------------------------------------


def _fulfil(body: str, status: int = 200) -> Callable[[Any], None]:
    def answer(route: Any) -> None:
        route.fulfill(status=status, content_type="application/json",
                      headers={"Access-Control-Allow-Origin": SHOP}, body=body)  # fmt: skip

    return answer


def _decision(**fields: Any) -> str:
    item = {"id": "hero-run", "propensity": 1, "reasons": [], "title": "T"}
    decision = {"placement": "home_hero", "decision_id": "d1", "items": [item],
                "policy": {"name": "x", "version": "1"}, "reasons": [], "personalized": True,
                "template": "<b>{{title}}</b>"}  # fmt: skip
    decision.update(fields)
    return json.dumps({"decisions": [decision], "accepted": 1, "duplicates": 0, "rejected": []})


BAD_ANSWERS: dict[str, tuple[Callable[[Any], None], str]] = {
    "blocked": (lambda route: route.abort(), "error"),
    "server error": (_fulfil('{"type":"about:blank","status":500}', 500), "error"),
    "not found": (_fulfil('{"status":404}', 404), "error"),
    "junk": (_fulfil("<html>this is not json"), "error"),
    "not a list": (_fulfil('{"decisions": "nope"}'), "missing"),
    "null": (_fulfil("null"), "missing"),
    "degraded": (_fulfil(_decision(degraded="deadline")), "degraded"),
    "no items": (_fulfil(_decision(items=[])), "malformed"),
    "wrong items": (_fulfil(_decision(items=[1, "x", None])), "malformed"),
    "id not text": (_fulfil(_decision(decision_id=5)), "malformed"),
    "no template": (_fulfil(_decision(template=None)), "malformed"),
    "other placement": (_fulfil(_decision(placement="elsewhere")), "missing"),
}


@pytest.mark.parametrize("case", list(BAD_ANSWERS))
def test_a_failing_server_leaves_the_default_content(
    browser_page: BrowserPage, shop: LiveServer, case: str
) -> None:
    answer, reason = BAD_ANSWERS[case]
    browser_page.page.route(f"{shop.url}/v1/context", answer)
    open_page(browser_page, shop, HERO)
    assert settled(browser_page) == [
        {"kind": "fallback", "placement": "home_hero", "reason": reason}
    ]
    assert default_visible(browser_page, "#default")
    assert browser_page.page.evaluate("intently._errors") == []


def test_a_page_without_placements_sends_its_events(
    browser_page: BrowserPage, shop: LiveServer
) -> None:
    page = browser_page.page
    requests = requests_to(browser_page, shop)
    open_page(browser_page, shop, "<h1>About us</h1>")
    visitor = page.evaluate("intently.anonymousId()")
    received(shop, visitor, "page")
    page.wait_for_timeout(100)  # Playwright reports the requests while it is called
    assert not [p for m, p, b in requests if p == "/v1/context"]
    assert ("POST", "/v1/events") in [(m, p) for m, p, b in requests]


def test_the_tag_loaded_twice_runs_once(browser_page: BrowserPage, shop: LiveServer) -> None:
    page = browser_page.page
    requests = requests_to(browser_page, shop)
    tag = (
        f"<script src='{shop.url}/sdk/intently.js' data-write-key='{shop.write_key}' "
        f"{SLOW_OK}></script>"
    )
    open_page(browser_page, shop, HERO, head=tag)
    settled(browser_page)
    page.wait_for_timeout(1500)
    assert page.evaluate("window.__intently.length") == 1
    assert len([p for m, p, b in requests if p == "/v1/context"]) == 1
    visitor = page.evaluate("intently.anonymousId()")
    page.goto("about:blank")
    events = received(shop, visitor, "page")
    assert len([e for e in events if e["type"] == "page"]) == 1


# -- the template contract: the tag renders as act/templates.py does ------------------------

OFFER = {"id": "o1", "kind": "banner", "title": "Big <sale> & \"more\"",
         "fields": {"url": "https://shop.test/sale?a=1&b=2", "text": "50% off\u2028today",
                    "cta": "Go", "image": "javascript:alert(1)", "n": 89, "price": 89.9,
                    "tie": 0.125, "neg": -2.675, "flag": True, "list": [1], "nested": {"a": "b"},
                    "a-b": "dash"}}  # fmt: skip
ITEM_DECISION = {
    "placement": "grid", "decision_id": "dec-2",
    "items": [{"id": "p1", "title": "Shoe <b>1</b>", "url": "/p/1", "image": "data:x", "price": 89},
              {"id": "p2", "title": "Shoe 2", "url": "relative/p2", "price": 12.5},
              {"id": "p3", "title": "Shoe 3", "url": " /p/3 ", "price": 0.125}],
}  # fmt: skip
TEMPLATE_CASES: list[tuple[str, dict[str, Any]]] = [
    *((source, {"placement": "home_hero", "decision_id": "dec-1", "items": [OFFER]})
      for name, source in DEFAULT_TEMPLATES.items() if name != "items"),
    (DEFAULT_TEMPLATES["items"], ITEM_DECISION),
    ("<ul class='list'><li data-each><a href='{{url}}'>{{ title }}</a> {{price}} "
     "{{decision_id}}</li></ul><p>{{title}} first</p>", ITEM_DECISION),
    ("<p title='{{fields.n}} / {{fields.price}} / {{fields.tie}} / {{fields.neg}}'>"
     "{{fields.flag}}|{{fields.list}}|{{fields.nested}}|{{fields.nested.a}}|{{fields.a-b}}|"
     "{{fields.missing}}|{{constructor}}|{{fields.__proto__}}</p>",
     {"placement": "p", "decision_id": "d", "items": [OFFER]}),
    ("Text first &amp; <em>then</em> {{placement}}<br><img src='{{fields.url}}' alt='{{title}}'>"
     "<a href='javascript:{{title}}'>x</a><a href='{{fields.missing}}'>y</a>",
     {"placement": "home_hero", "decision_id": "d3", "items": [OFFER]}),
    ("<div><span>{{title}}</span></div>", {"placement": "p", "decision_id": "d4", "items": []}),
]  # fmt: skip

NORMALIZE = """(html) => { const t = document.createElement('template'); t.innerHTML = html;
  const d = document.createElement('div'); d.appendChild(t.content); return d.innerHTML; }"""


def test_the_tag_renders_templates_as_the_server_does(
    browser_page: BrowserPage, shop: LiveServer
) -> None:
    page = browser_page.page
    open_page(browser_page, shop, "<p>templates</p>")
    for source, decision in TEMPLATE_CASES:
        expected = compile_template(source).render(decision)
        from_python = page.evaluate(NORMALIZE, expected)
        from_tag = page.evaluate("([s, d]) => intently._render(s, d)", [source, decision])
        assert from_tag == from_python, source
    assert page.evaluate("window.__pwned") is None
