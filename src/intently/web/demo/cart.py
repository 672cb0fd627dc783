"""The demo shop's cart and last order, kept in cookies (no server-side state).

`demo_cart` holds the cart as `id:quantity` pairs joined by `|` (web/static/demo/demo.js
writes it when a product is added or removed; the pages read it). `demo_order` holds the
last order placed (`order_id|id:quantity|...`), written by the checkout and read by the
confirmation page. Whatever a cookie holds is checked: unknown products, bad quantities
and anything past the bounds are ignored, never an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from intently.catalog.items import Item
from intently.catalog.store import CatalogStore

CART_COOKIE = "demo_cart"
ORDER_COOKIE = "demo_order"
MAX_LINES = 30
MAX_QUANTITY = 99
_ORDER_ID = re.compile(r"^o-[0-9a-f]{8}$")


@dataclass(frozen=True)
class Line:
    item: Item
    quantity: int

    @property
    def total(self) -> float:
        return round((self.item.price or 0.0) * self.quantity, 2)

    def as_event(self) -> dict[str, object]:
        """The line as the tag's `data-intently-cart` / order products take it."""
        return {
            "product_id": self.item.id, "quantity": self.quantity, "price": self.item.price,
            "name": self.item.title, "category": self.item.leaf_category,
            "brand": self.item.brand,
        }  # fmt: skip


def parse_lines(text: str | None, catalog: CatalogStore) -> list[Line]:
    lines: dict[str, Line] = {}
    for part in (text or "").split("|")[: MAX_LINES * 2]:
        product_id, _, count = part.partition(":")
        item = catalog.get(product_id.strip())
        if item is None or not count.strip().isdigit():
            continue
        quantity = min(int(count), MAX_QUANTITY)
        if quantity >= 1 and (item.id in lines or len(lines) < MAX_LINES):
            held = lines.get(item.id)
            lines[item.id] = Line(item, min(quantity + (held.quantity if held else 0), 99))
    return list(lines.values())


def encode_lines(lines: list[Line]) -> str:
    return "|".join(f"{line.item.id}:{line.quantity}" for line in lines)


def subtotal(lines: list[Line]) -> float:
    return round(sum(line.total for line in lines), 2)


def parse_order(text: str | None, catalog: CatalogStore) -> tuple[str, list[Line]] | None:
    """(order id, lines) of the `demo_order` cookie, or None."""
    order_id, _, rest = (text or "").partition("|")
    if not _ORDER_ID.match(order_id):
        return None
    lines = parse_lines(rest, catalog)
    return (order_id, lines) if lines else None
