"""The demo shop's pages: server-rendered HTML (Jinja2, autoescaped) with the browser tag
in the head and placements holding their default content.

Every placement's default content is what the shop would show without intently (popular
products, the generic banner, results in relevance order), in the same markup as the
placement's template (web/demo/seed.py), so the tag's decision replaces it seamlessly.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from intently.catalog.items import Item
from intently.web.demo import cart as carts
from intently.web.demo.catalog import BY_ID, CATEGORIES, category_of, offers
from intently.web.demo.images import banner_svg, product_svg
from intently.web.demo.search import search

if TYPE_CHECKING:
    from intently.engine import Engine

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
SVG_CACHE = "public, max-age=86400"
# A shop's own "bestsellers": the default content of the home page's recommendations.
FEATURED = ("running-03", "hiking-05", "jackets-02", "tennis-04", "yoga-01", "cycling-07",
            "trail-02", "swimwear-06")  # fmt: skip


class Shop:
    """The pages, bound to one engine (its catalog and its write key)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["money"] = money
        self.offers = {offer.id: offer for offer in offers()}

    # -- helpers ------------------------------------------------------------------------------

    def _page(self, request: Request, name: str, status: int = 200, **values: Any) -> Response:
        lines = carts.parse_lines(request.cookies.get(carts.CART_COOKIE), self.engine.catalog)
        html = self.env.get_template(f"demo/{name}").render(
            {
                "write_key": self.engine.keys.write_key,
                "categories": CATEGORIES,
                "cart_count": sum(line.quantity for line in lines),
                "query": "",
                **values,
            }
        )
        return HTMLResponse(html, status_code=status)

    def _items(self, ids: list[str] | tuple[str, ...]) -> list[Item]:
        found = [self.engine.catalog.get(item_id) for item_id in ids]
        return [item for item in found if item is not None and item.available]

    def _not_found(self, request: Request, what: str) -> Response:
        return self._page(request, "notfound.html", status=404, title="Not found", what=what)

    # -- pages --------------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return self._page(
            request, "home.html", title="Home", hero=self.offers["hero-season"],
            featured=self._items(FEATURED),
        )  # fmt: skip

    async def category(self, request: Request) -> Response:
        category = BY_ID.get(request.path_params["category"])
        if category is None:
            return self._not_found(request, "this category")
        ids = list(self.engine.catalog.in_category(category.id))
        items = sorted(self._items(ids), key=lambda item: item.title or item.id)
        return self._page(
            request, "category.html", title=category.name, category=category, items=items,
            item_ids=",".join(item.id for item in items),
        )  # fmt: skip

    async def product(self, request: Request) -> Response:
        item = self.engine.catalog.get(request.path_params["product_id"])
        if item is None:
            return self._not_found(request, "this product")
        category = category_of(item)
        similar = [
            other for other in self._items(list(self.engine.catalog.in_category(
                item.leaf_category or "")))
            if other.id != item.id
        ][:4]  # fmt: skip
        product = {
            "product_id": item.id, "name": item.title, "price": item.price,
            "category": item.leaf_category, "brand": item.brand, "url": str(request.url),
        }  # fmt: skip
        return self._page(
            request, "product.html", title=item.title or item.id, item=item, category=category,
            similar=similar, product_json=json.dumps(product),
        )  # fmt: skip

    async def search(self, request: Request) -> Response:
        query = request.query_params.get("q", "")[:100].strip()
        results = search(self.engine.catalog, query) if query else []
        return self._page(
            request, "search.html", title=f"Search: {query}" if query else "Search",
            query=query, results=results, item_ids=",".join(item.id for item in results),
        )  # fmt: skip

    async def cart(self, request: Request) -> Response:
        lines = carts.parse_lines(request.cookies.get(carts.CART_COOKIE), self.engine.catalog)
        return self._page(
            request, "cart.html", title="Your cart", lines=lines,
            subtotal=carts.subtotal(lines),
            cart_json=json.dumps([line.as_event() for line in lines]),
        )  # fmt: skip

    async def checkout(self, request: Request) -> Response:
        lines = carts.parse_lines(request.cookies.get(carts.CART_COOKIE), self.engine.catalog)
        if not lines:
            return RedirectResponse("/demo/cart", status_code=303)
        return self._page(
            request, "checkout.html", title="Checkout", lines=lines,
            subtotal=carts.subtotal(lines),
            cart_json=json.dumps([line.as_event() for line in lines]),
        )  # fmt: skip

    async def place_order(self, request: Request) -> Response:
        """The order is placed from the cart cookie (the form's fields are for show)."""
        lines = carts.parse_lines(request.cookies.get(carts.CART_COOKIE), self.engine.catalog)
        if not lines:
            return RedirectResponse("/demo/cart", status_code=303)
        order_id = "o-" + secrets.token_hex(4)
        answer = RedirectResponse(f"/demo/order/{order_id}", status_code=303)
        answer.set_cookie(
            carts.ORDER_COOKIE, f"{order_id}|{carts.encode_lines(lines)}", path="/demo",
            samesite="lax", httponly=True,
        )  # fmt: skip
        answer.delete_cookie(carts.CART_COOKIE, path="/demo")
        return answer

    async def order(self, request: Request) -> Response:
        found = carts.parse_order(request.cookies.get(carts.ORDER_COOKIE), self.engine.catalog)
        if found is None or found[0] != request.path_params["order_id"]:
            return self._not_found(request, "this order")
        order_id, lines = found
        revenue = carts.subtotal(lines)
        order = {
            "order_id": order_id, "revenue": revenue, "currency": "USD",
            "products": [line.as_event() for line in lines],
        }  # fmt: skip
        return self._page(
            request, "confirmation.html", title="Thank you", order_id=order_id, lines=lines,
            revenue=revenue, order_json=json.dumps(order), moment=self.offers["confirm-referral"],
        )  # fmt: skip

    # -- images -------------------------------------------------------------------------------

    async def product_image(self, request: Request) -> Response:
        item = self.engine.catalog.get(request.path_params["product_id"])
        category = category_of(item) if item is not None else None
        if item is None or category is None:
            return Response("no such image", status_code=404, media_type="text/plain")
        hue = item.attributes.get("hue")
        svg = product_svg(
            category, item.title or "", hue if isinstance(hue, int) else category.hue,
            sum(map(ord, item.id)),
        )  # fmt: skip
        return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": SVG_CACHE})

    async def banner_image(self, request: Request) -> Response:
        svg = banner_svg(request.path_params["name"])
        if svg is None:
            return Response("no such image", status_code=404, media_type="text/plain")
        return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": SVG_CACHE})


def money(value: float | None) -> str:
    """Prices as the placement templates write them: whole without decimals, else two."""
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"
