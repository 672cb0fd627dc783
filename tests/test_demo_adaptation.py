"""The demo shop without a browser: its seed, its pages, and how its decisions adapt to
one visitor within one session (what the browser test then sees on the screen)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from statistics import mean
from typing import Any

import httpx
import pytest

from intently import Engine, ManualClock
from intently.web.demo.catalog import CATEGORIES, PER_CATEGORY, products
from intently.web.demo.search import search
from intently.web.demo.seed import PLACEMENTS, SEGMENTS, seed
from support import SECRET_KEY, client_for, make_settings

# Decisions have a deadline: see conftest.no_collection_pauses.
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_collection_pauses")]

RUNNING_SHOES = ["running-02", "running-07", "running-11", "running-16"]


@pytest.fixture
def shop_engine(tmp_path: Path, clock: ManualClock) -> Iterator[Engine]:
    engine = Engine(make_settings(tmp_path / "data", demo=True, holdout_share=0.0), clock=clock)
    yield engine
    engine.close()


@pytest.fixture
async def shop(shop_engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    await seed(shop_engine)
    async with client_for(shop_engine) as client:
        yield client


def viewed(visitor: str, product_id: str) -> dict[str, Any]:
    """A "Product Viewed" as the tag sends it from a product page."""
    item = next(item for item in products() if item.id == product_id)
    return {
        "type": "track", "event": "Product Viewed", "anonymousId": visitor,
        "properties": {"product_id": item.id, "name": item.title, "price": item.price,
                       "category": item.leaf_category, "brand": item.brand},
    }  # fmt: skip


async def context(
    client: httpx.AsyncClient, visitor: str, placements: list[dict[str, Any]],
    events: list[dict[str, Any]] | None = None, **page: Any,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    body = {"anonymousId": visitor, "placements": placements, "events": events or [],
            "context": page, "templates": True}  # fmt: skip
    answer = await client.post("/v1/context", json=body)
    assert answer.status_code == 200, answer.text
    assert not answer.json()["rejected"], answer.json()["rejected"]
    return {d["placement"]: d for d in answer.json()["decisions"]}


def category(item_id: str) -> str:
    return item_id.rsplit("-", 1)[0]


def shoe_results() -> list[str]:
    return [item.id for item in search(products(), "shoe")]


async def home(client: httpx.AsyncClient, visitor: str) -> dict[str, dict[str, Any]]:
    asked = [{"id": "home_hero"}, {"id": "home_recs", "count": 8},
             {"id": "search_results", "items": shoe_results()}]  # fmt: skip
    return await context(client, visitor, asked)


async def test_the_seed_loads_the_shop_once_and_is_idempotent(shop_engine: Engine) -> None:
    loaded = await seed(shop_engine)
    assert loaded > 1000  # past visitors' events, through the pipeline
    assert len(shop_engine.catalog) == len(CATEGORIES) * PER_CATEGORY == 200
    for placement_id in PLACEMENTS:
        assert shop_engine.placements.get(placement_id) is not None
    for name in SEGMENTS:
        assert shop_engine.segments.get(name) is not None
    assert shop_engine.learner.popularity  # "popular" is not empty
    versions = {p.id: p.version for p in shop_engine.placements}
    last_seq = shop_engine.log.last_seq
    assert await seed(shop_engine) == 0  # a restart: nothing loaded twice
    assert shop_engine.log.last_seq == last_seq
    assert {p.id: p.version for p in shop_engine.placements} == versions
    # Past buyers are members of the segments their history puts them in.
    assert shop_engine.membership is not None


async def test_the_history_survives_a_restart_without_being_loaded_again(
    tmp_path: Path, clock: ManualClock
) -> None:
    settings = make_settings(tmp_path / "data", demo=True)
    engine = Engine(settings, clock=clock)
    try:
        assert await seed(engine) > 0
        last_seq = engine.log.last_seq
    finally:
        engine.close()
    engine = Engine(settings, clock=clock)
    try:
        assert await seed(engine) == 0
        assert engine.log.last_seq == last_seq
        assert engine.learner.popularity  # the recommenders learned it again from the log
    finally:
        engine.close()


@pytest.mark.parametrize(
    "path",
    ["/demo", "/demo/", "/demo/c/running", "/demo/p/running-01", "/demo/search?q=shoe",
     "/demo/search?q=", "/demo/search?q=%3Cscript%3E", "/demo/cart"],
)  # fmt: skip
async def test_the_pages_render_with_the_tag_and_their_placements(
    shop: httpx.AsyncClient, path: str
) -> None:
    answer = await shop.get(path)
    assert answer.status_code == 200, answer.text
    page = answer.text
    assert '<script src="/sdk/intently.js" data-write-key="wk_test_write">' in page
    assert "<script>" not in page.lower().replace("<script src", "")  # the query is escaped
    assert "data-why-toggle" in page


async def test_placements_hold_default_content_in_their_template_markup(
    shop: httpx.AsyncClient,
) -> None:
    page = (await shop.get("/demo")).text
    assert 'data-intently-placement="home_hero"' in page
    assert 'class="hero-title">Gear up for the season<' in page
    assert page.count('class="card"') == 8
    product = (await shop.get("/demo/p/running-01")).text
    assert 'data-intently-placement="pdp_recs"' in product
    assert "data-intently-product=" in product
    assert "data-intently-add-to-cart" in product
    results = (await shop.get("/demo/search?q=shoe")).text
    ids = re.search(r'data-intently-items="([^"]+)"', results)
    assert ids is not None
    assert ids.group(1).split(",") == shoe_results()[: len(ids.group(1).split(","))]


async def test_unknown_pages_and_images_answer_404(shop: httpx.AsyncClient) -> None:
    for path in ("/demo/p/nope", "/demo/c/nope", "/demo/order/o-12345678",
                 "/demo/img/p/nope.svg", "/demo/img/hero/nope.svg"):  # fmt: skip
        assert (await shop.get(path)).status_code == 404, path
    image = await shop.get("/demo/img/p/running-01.svg")
    assert image.headers["content-type"] == "image/svg+xml"
    assert image.text.startswith("<svg")


async def test_serve_alone_has_no_shop(client: httpx.AsyncClient) -> None:
    assert (await client.get("/demo")).status_code == 404
    assert (await client.get("/demo/static/demo.js")).status_code == 404


async def test_the_cart_cookie_checkout_and_confirmation(shop: httpx.AsyncClient) -> None:
    shop.cookies.set("demo_cart", "running-01:2|nope:1|tennis-03:x|yoga-02:1", path="/demo")
    cart = await shop.get("/demo/cart")
    assert "data-intently-cart=" in cart.text
    assert 'data-intently-placement="exit_intent_offer"' in cart.text
    assert 'data-intently-trigger="exit-intent"' in cart.text
    assert "nope" not in cart.text
    assert "tennis-03" not in cart.text
    placed = await shop.post("/demo/checkout")
    assert placed.status_code == 303
    location = placed.headers["location"]
    assert re.fullmatch(r"/demo/order/o-[0-9a-f]{8}", location)
    confirmation = await shop.get(location)
    assert confirmation.status_code == 200
    assert "data-intently-order=" in confirmation.text
    assert 'data-intently-placement="confirmation_offer"' in confirmation.text
    assert "running-01" in confirmation.text
    # The order emptied the cart (its cookie deleted); with no cart, checkout sends back to it.
    cookies = placed.headers.get_list("set-cookie")
    assert any(c.startswith("demo_cart=") and "Max-Age=0" in c for c in cookies), cookies
    shop.cookies.clear()
    assert (await shop.post("/demo/checkout")).headers["location"] == "/demo/cart"


async def test_browsing_running_shoes_changes_hero_recommendations_and_search_order(
    shop: httpx.AsyncClient,
) -> None:
    fresh = await home(shop, "fresh-visitor")
    assert fresh["home_hero"]["items"][0]["id"] in {"hero-season", "hero-members"}
    fresh_running = sum(category(i["id"]) == "running" for i in fresh["home_recs"]["items"])
    fresh_order = [i["id"] for i in fresh["search_results"]["items"]]
    for product_id in RUNNING_SHOES:  # product pages: the tag's events with its decide
        decided = await context(
            shop, "runner", [{"id": "pdp_recs"}], [viewed("runner", product_id)],
            product_id=product_id,
        )  # fmt: skip
        assert decided["pdp_recs"]["items"]
    after = await home(shop, "runner")
    hero = after["home_hero"]
    assert hero["items"][0]["id"] == "hero-running"
    assert hero["items"][0]["title"] == "New season running shoes"
    assert any("interest" in reason for reason in hero["reasons"])
    recs = [category(i["id"]) for i in after["home_recs"]["items"]]
    assert recs.count("running") >= 5 > fresh_running, (recs, fresh_running)
    order = [i["id"] for i in after["search_results"]["items"]]
    assert sorted(order) == sorted(fresh_order) == sorted(shoe_results())

    def running_rank(ranked: list[str]) -> float:
        return mean(i for i, item in enumerate(ranked) if category(item) == "running")

    assert running_rank(order) < running_rank(fresh_order) - 3
    assert [category(i) for i in order[:8]].count("running") >= 4


async def test_exit_intent_at_the_cart_decides_a_retention_offer(
    shop: httpx.AsyncClient, shop_engine: Engine
) -> None:
    added = viewed("hesitant", "running-05") | {"event": "Product Added"}
    cart = [{"product_id": "running-05", "quantity": 1, "price": 129.99}]
    await context(shop, "hesitant", [{"id": "cart_recs"}], [added], cart=cart)
    exit_event = {"type": "track", "event": "Exit Intent", "anonymousId": "hesitant",
                  "properties": {"trigger": "pointer"}}  # fmt: skip
    offer = (await context(shop, "hesitant", [{"id": "exit_intent_offer"}], [exit_event],
                           cart=cart))["exit_intent_offer"]  # fmt: skip
    assert offer["degraded"] is None
    assert offer["items"][0]["id"] in {"exit-cart-10", "exit-free-shipping", "exit-help"}
    assert "offer-title" in offer["template"]
    async with client_for(shop_engine, SECRET_KEY) as admin:
        profile = (await admin.get("/v1/profiles/hesitant")).json()
    assert "cart_abandoners" in profile["segments"]["current"], profile


async def test_an_order_shows_a_transaction_moment_offer(shop: httpx.AsyncClient) -> None:
    order = {"order_id": "o-0000beef", "revenue": 89.99, "products": [
        {"product_id": "yoga-03", "quantity": 1, "price": 89.99, "category": "yoga"}]}  # fmt: skip
    completed = {"type": "track", "event": "Order Completed", "anonymousId": "buyer",
                 "properties": order}  # fmt: skip
    decided = await context(shop, "buyer", [{"id": "confirmation_offer"}], [completed],
                            order=order)  # fmt: skip
    offer = decided["confirmation_offer"]
    assert offer["degraded"] is None
    assert offer["items"][0]["id"] in {"confirm-referral", "confirm-complete-look"}
    assert offer["items"][0]["kind"] == "cta"


def test_the_demo_command_takes_the_options_of_serve() -> None:
    from click.testing import CliRunner

    from intently.cli import main

    def options(command: str) -> list[str]:
        found = main.get_command(None, command)  # type: ignore[arg-type]
        assert found is not None
        return sorted(o for p in found.params for o in p.opts)

    assert options("demo") == options("serve")
    shown = CliRunner().invoke(main, ["demo", "--help"])
    assert shown.exit_code == 0
    assert "/demo" in shown.output
