"""The browser tag in a real browser: the events it captures and how it sends them,
consent, Global Privacy Control, and storage that is not there.

The server, pages and helpers are those of tests/test_web_tag.py.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from test_web_tag import (
    HERO,
    events_of,
    open_page,
    page_html,
    prepare,
    received,
    requests_to,
    settled,
    wait_for,
)
from web_support import SHOP, BrowserPage, LiveServer, route_page, start_server


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("tag-events") / "data")
    try:
        yield prepare(server)
    finally:
        server.stop()


PRODUCT = {"product_id": "p1", "name": "Trail shoe 1", "price": 51.9, "category": "running"}
PRODUCT_PAGE = (
    f"<div data-intently-product='{json.dumps(PRODUCT)}'><h1>Trail shoe 1</h1>"
    "<button id='add' data-intently-add-to-cart>Add to cart</button></div>"
    "<a id='more' href='#more'>More shoes</a> <button id='like'>Like</button>"
    "<div id='stuck' style='width:200px;height:50px'>Price details</div>"
    "<div style='height:4000px'>Reviews</div><a id='cart' href='/cart'>Cart</a>"
)
CART_PAGE = (
    '<div data-intently-cart=\'[{"product_id":"p1","quantity":1,"price":51.9}]\'>Cart</div>'
    "<form action='/search'><input type='search' name='q'><button>Search</button></form>"
)
ORDER = {"order_id": "o-1", "revenue": 51.9, "products": [{"product_id": "p1", "quantity": 1}]}


def test_each_kind_of_event_is_captured_and_received(
    browser_page: BrowserPage, shop: LiveServer
) -> None:
    page = browser_page.page
    route_page(page, "/cart", page_html(shop, CART_PAGE))
    results = page_html(shop, "<div data-intently-search='trail shoes'>Results</div>")
    page.route(f"{SHOP}/search?**", lambda route: route.fulfill(
        status=200, content_type="text/html", body=results))  # fmt: skip
    route_page(
        page,
        "/order",
        page_html(shop, f"<div data-intently-order='{json.dumps(ORDER)}'>Thanks</div>"),
    )
    open_page(browser_page, shop, PRODUCT_PAGE, path="/product/p1")
    page.wait_for_function("window.intently")
    visitor = page.evaluate("intently.anonymousId()")
    page.click("#more")
    page.click("#like")
    page.click("#add")
    box = page.locator("#stuck").bounding_box()
    assert box is not None
    for _ in range(3):  # a rage click
        page.mouse.click(box["x"] + 10, box["y"] + 10)
    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    page.wait_for_timeout(200)
    page.evaluate("window.scrollTo(0, 0)")
    page.mouse.move(600, 400)
    page.mouse.move(600, -20, steps=5)
    page.evaluate("intently.identify('user-1', {plan: 'gold'})")
    page.evaluate("intently.track('Wishlist Opened', {source: 'test'})")
    page.wait_for_timeout(300)
    page.click("#cart")  # leaving: time on the page, then everything by beacon
    page.wait_for_url(f"{SHOP}/cart")
    page.fill("input[type=search]", "trail shoes")
    page.click("form button")
    page.wait_for_url(f"{SHOP}/search?**")
    page.goto(f"{SHOP}/order")
    page.reload()  # the same order again: not a second one
    page.goto("about:blank")
    kinds = ["page", "identify", "Element Clicked", "Product Viewed", "Product Added",
             "Rage Click", "Scroll Depth", "Exit Intent", "Time On Page", "Wishlist Opened",
             "Cart Viewed", "Products Searched", "Order Completed"]  # fmt: skip
    received(shop, visitor, *kinds, seconds=15)

    def pages_of(events: list[dict[str, Any]]) -> list[str]:
        return sorted(
            e["context"]["page"]["url"].removeprefix(SHOP) for e in events if e["type"] == "page"
        )

    # The last page's events travel by beacon as the page goes: they may come last.
    events = wait_for(
        lambda: (found if len(pages_of(found := events_of(shop, visitor))) >= 5 else None),
        15, "the five page views", page,
    )  # fmt: skip
    count = Counter(e.get("event") or e["type"] for e in events)
    # product, cart, search results, order, order again
    assert pages_of(events) == [
        "/cart", "/order", "/order", "/product/p1", "/search?q=trail+shoes"
    ]  # fmt: skip
    assert count["Products Searched"] == 1  # the form, not again on the results page
    assert count["Order Completed"] == 1
    assert count["Product Viewed"] == 1
    assert count["Exit Intent"] == 1
    depths = [e["properties"]["depth"] for e in events if e.get("event") == "Scroll Depth"]
    assert depths == [25, 50, 75, 100]
    clicked = [e["properties"] for e in events if e.get("event") == "Element Clicked"]
    more = next(c for c in clicked if c["target"].endswith("a#more"))
    assert more["text"] == "More shoes"
    assert more["href"] == f"{SHOP}/product/p1#more"
    assert any(c["target"] == "button#like" for c in clicked)
    added = next(e["properties"] for e in events if e.get("event") == "Product Added")
    assert added == {**PRODUCT, "quantity": 1}
    searched = next(e["properties"] for e in events if e.get("event") == "Products Searched")
    assert searched == {"query": "trail shoes"}
    seconds = [e["properties"]["seconds"] for e in events if e.get("event") == "Time On Page"]
    assert seconds
    assert all(s > 0 for s in seconds)
    # Ids: one anonymous id across pages, the user id once identified; each event its
    # own messageId; the send time, for the server's clock correction.
    assert {e["anonymousId"] for e in events} == {visitor}
    later = [e for e in events if e["context"]["page"]["path"] != "/product/p1"]
    assert later
    assert all(e.get("userId") == "user-1" for e in later)
    assert next(e for e in events if e["type"] == "identify")["traits"] == {"plan": "gold"}
    assert len({e["messageId"] for e in events}) == len(events)
    assert all(e.get("sentAt") for e in events)
    assert events[0]["context"]["library"]["name"] == "intently.js"


def test_alias_and_reset(browser_page: BrowserPage, shop: LiveServer) -> None:
    page = browser_page.page
    open_page(browser_page, shop, "<p>Account</p>")
    first = page.evaluate("intently.anonymousId()")
    page.evaluate("intently.alias('member-7')")
    page.evaluate("intently.reset()")
    second = page.evaluate("intently.anonymousId()")
    assert second != first
    page.evaluate("intently.track('After Reset'); intently.flush()")
    aliased = received(shop, first, "alias")
    alias = next(e for e in aliased if e["type"] == "alias")
    assert alias["previousId"] == first
    assert alias["userId"] == "member-7"
    after = received(shop, second, "After Reset")
    assert all("userId" not in e for e in after)


def test_failed_sends_are_kept_and_retried_without_duplicates(
    browser_page: BrowserPage, shop: LiveServer
) -> None:
    page = browser_page.page
    failures: list[int] = []

    def flaky(route: Any) -> None:
        if len(failures) < 2:
            failures.append(1)
            route.fulfill(status=503, body="busy", headers={"Access-Control-Allow-Origin": SHOP})
        else:
            route.continue_()

    page.route(f"{shop.url}/v1/events", flaky)
    open_page(browser_page, shop, "<p>No placements here</p>")
    visitor = page.evaluate("intently.anonymousId()")
    page.evaluate("for (let i = 0; i < 5; i++) intently.track('Tick', {i})")
    # While the server fails, the queue is kept in localStorage.
    wait_for(lambda: failures, what="a failed send", page=page)
    stored = page.evaluate("JSON.parse(localStorage.getItem('intently_q') || '[]').length")
    assert stored >= 5
    wait_for(lambda: len(failures) == 2, 10, "two failed sends", page=page)
    page.wait_for_timeout(2000)  # the backoff: 1-2 s, then 2-4 s
    events = received(shop, visitor, "Tick", "page", seconds=20, page=page)
    ticks = sorted(e["properties"]["i"] for e in events if e.get("event") == "Tick")
    assert ticks == [0, 1, 2, 3, 4]
    assert len(failures) == 2
    wait_for(lambda: page.evaluate("localStorage.getItem('intently_q')") == "[]", what="the queue",
             page=page)  # fmt: skip


def test_the_queue_is_bounded(browser_page: BrowserPage, shop: LiveServer) -> None:
    page = browser_page.page
    page.route(f"{shop.url}/v1/**", lambda route: route.abort())
    open_page(browser_page, shop, "<p>Offline</p>")
    page.evaluate("for (let i = 0; i < 150; i++) intently.track('Tick', {i})")
    stored = page.evaluate("JSON.parse(localStorage.getItem('intently_q'))")
    assert len(stored) == 100
    assert stored[-1]["properties"] == {"i": 149}  # the oldest were dropped


# -- consent -------------------------------------------------------------------------------


def _stored_keys(page: Any) -> list[str]:
    return page.evaluate(
        "Object.keys(localStorage).filter((k) => k.startsWith('intently'))"
        ".concat(document.cookie ? document.cookie.split('; ') : [])"
    )


def test_nothing_is_sent_or_stored_before_consent(
    browser_page: BrowserPage, shop: LiveServer
) -> None:
    page = browser_page.page
    requests = requests_to(browser_page, shop)
    open_page(browser_page, shop, HERO + PRODUCT_PAGE, attributes="data-consent='required'")
    assert settled(browser_page) == [
        {"kind": "fallback", "placement": "home_hero", "reason": "consent"}
    ]
    page.click("#like")
    page.evaluate("window.scrollTo(0, 2000)")
    page.evaluate("intently.track('Before Consent')")
    page.wait_for_timeout(1500)
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    page.wait_for_timeout(200)
    assert [p for m, p, b in requests if m == "POST"] == []
    assert _stored_keys(page) == []
    assert page.evaluate("intently.consent.status()")["sending"] is False
    page.evaluate("intently.consent.grant(['analytics', 'personalization'])")
    visitor = page.evaluate("intently.anonymousId()")
    events = received(shop, visitor, "page", "Before Consent", "Element Clicked", "Consent Updated")
    latest = next(e for e in events if e.get("event") == "Consent Updated")
    assert latest["context"]["consent"]["categoryPreferences"] == {
        "analytics": True,
        "personalization": True,
        "marketing": False,
    }
    assert any(k.startswith("intently_aid") for k in _stored_keys(page))
    # The server now holds the visitor's consent.
    profile = shop.get(f"/v1/profiles/{visitor}")
    assert profile["consent"]["marketing"] is False


def test_revoking_consent_stops_sending(browser_page: BrowserPage, shop: LiveServer) -> None:
    page = browser_page.page
    open_page(browser_page, shop, "<p>Hello</p>")
    visitor = page.evaluate("intently.anonymousId()")
    received(shop, visitor, "page")
    requests = requests_to(browser_page, shop)
    page.evaluate("intently.consent.revoke()")
    page.wait_for_timeout(100)
    assert [p for m, p, b in requests if m == "POST"] == ["/v1/events"]  # the refusal itself
    page.evaluate("intently.track('After Revoke'); intently.flush()")
    page.wait_for_timeout(1500)
    assert len([p for m, p, b in requests if m == "POST"]) == 1
    events = received(shop, visitor, "Consent Updated")
    assert "After Revoke" not in {e.get("event") for e in events}
    assert shop.get(f"/v1/profiles/{visitor}")["consent"] == {
        "analytics": False,
        "personalization": False,
        "marketing": False,
    }


GPC = "Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true});"


def test_global_privacy_control_waits_for_the_site_and_never_grants_marketing(
    browser_page: BrowserPage, shop: LiveServer
) -> None:
    page = browser_page.page
    page.add_init_script(GPC)
    requests = requests_to(browser_page, shop)
    open_page(browser_page, shop, HERO)
    assert settled(browser_page)[0]["reason"] == "consent"
    page.wait_for_timeout(1200)
    assert [p for m, p, b in requests if m == "POST"] == []
    assert page.evaluate("intently.consent.status()")["gpc"] is True
    page.evaluate("intently.consent.grant()")  # the site's banner was accepted
    visitor = page.evaluate("intently.anonymousId()")
    events = received(shop, visitor, "page", "Consent Updated")
    assert all(e["context"]["consent"]["categoryPreferences"]["marketing"] is False for e in events)


# -- storage unavailable --------------------------------------------------------------------

NO_STORAGE = """
Object.defineProperty(window, 'localStorage', {
  get() { throw new DOMException('no', 'SecurityError'); },
});
Object.defineProperty(Document.prototype, 'cookie', {
  get() { throw new DOMException('no', 'SecurityError'); },
  set(v) { throw new DOMException('no', 'SecurityError'); },
});
"""


def test_the_tag_works_without_storage(browser_page: BrowserPage, shop: LiveServer) -> None:
    page = browser_page.page
    page.add_init_script(NO_STORAGE)
    open_page(browser_page, shop, HERO + "<a id='go' href='#go'>Go</a>")
    assert settled(browser_page)[0]["kind"] == "render"
    page.click("#go")
    visitor = page.evaluate("intently.anonymousId()")
    page.evaluate("intently.flush()")
    received(shop, visitor, "page", "Element Clicked")
    assert page.evaluate("intently._errors") == []


def test_the_anonymous_id_survives_either_store_being_cleared(
    browser_page: BrowserPage, shop: LiveServer
) -> None:
    page = browser_page.page
    url = open_page(browser_page, shop, "<p>Hi</p>")
    visitor = page.evaluate("intently.anonymousId()")
    page.evaluate("localStorage.clear()")
    page.goto(url)
    assert page.evaluate("intently.anonymousId()") == visitor
    browser_page.context.clear_cookies()
    page.goto(url)
    assert page.evaluate("intently.anonymousId()") == visitor
    assert events_of(shop, visitor) is not None
