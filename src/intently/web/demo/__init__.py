"""The demo shop at `/demo`, served by the engine itself when started with `intently
demo` (Settings.demo; `intently serve` does not serve it).

A small sports shop (about 200 products, web/demo/catalog.py) whose pages carry the
browser tag and placements: the home hero and recommendations, category pages and
search results ranked for the visitor, product and cart recommendations, an exit-intent
offer on the cart and checkout, an offer on the order confirmation page, and a "why am
I seeing this?" panel (web/static/demo/demo.js) listing each decision's reasons. What
the engine needs for it (catalog, offers, placements, segments, past visitors) is loaded
by web/demo/seed.py when `intently demo` starts.

The cart is a cookie (web/demo/cart.py): pages are rendered on the server with the
cart in them, as the tag's `data-intently-cart` wants it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

if TYPE_CHECKING:
    from intently.engine import Engine

STATIC = Path(__file__).resolve().parents[1] / "static" / "demo"


def routes(engine: Engine) -> list[BaseRoute]:
    if not engine.settings.demo:
        return []
    from intently.web.demo.pages import Shop

    shop = Shop(engine)

    def page(path: str, endpoint: object, methods: tuple[str, ...] = ("GET",)) -> Route:
        return Route(path, endpoint, methods=list(methods), include_in_schema=False)  # type: ignore[arg-type]

    return [
        page("/demo", shop.home),
        page("/demo/", shop.home),
        page("/demo/c/{category}", shop.category),
        page("/demo/p/{product_id}", shop.product),
        page("/demo/search", shop.search),
        page("/demo/cart", shop.cart),
        page("/demo/checkout", shop.checkout),
        page("/demo/checkout", shop.place_order, ("POST",)),
        page("/demo/order/{order_id}", shop.order),
        page("/demo/img/p/{product_id}.svg", shop.product_image),
        page("/demo/img/hero/{name}.svg", shop.banner_image),
        Mount("/demo/static", StaticFiles(directory=STATIC), name="demo-static"),
    ]
