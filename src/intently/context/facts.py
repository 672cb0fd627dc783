"""What an event says, read once into plain facts that the session and profile update from.

Event names follow Segment's e-commerce spec (`Product Viewed`, `Product Added`,
`Order Completed`, ...). Behaviour that spec does not cover uses these track events, which
the browser tag sends:

- `Scroll Depth` with `properties.depth` (percent, 0-100);
- `Exit Intent` (the pointer left towards the browser chrome, or a mobile back gesture);
- `Element Clicked` with `properties.target` (a selector): three clicks on one target, each
  within 700 ms of the last, are one rage click; `Rage Click` reports one directly.

Consent arrives on any event as `context.consent.categoryPreferences` (Segment's consent
spec) or through the profile API, which logs an event of its own.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from msgspec import Struct

from intently.clock import epoch_ms
from intently.events.ecommerce import (
    CommerceProperties,
    Product,
    commerce_properties,
    surely_valid,
)
from intently.events.record import EventRecord
from intently.events.schema import (
    EVENT_TAGS,
    AliasEvent,
    IdentifyEvent,
    PageEvent,
    ScreenEvent,
    TrackEvent,
)

# Pages whose long visits mean the visitor is unsure (delivery costs, returns, help).
# Whole words only: /help/returns and /pages/shipping-policy, not /blog/helpful-gifts.
_HELP_PAGE = re.compile(
    r"(?<![a-z])(shipping|delivery|returns?|refunds?|help|faq|faqs|support|contact|"
    r"warranty|size-guide)(?![a-z])",
    re.IGNORECASE,
)
CHECKOUT_STAGES = ("browsing", "cart", "checkout", "shipping", "payment", "purchased")
_STAGE_OF_EVENT = {
    "Cart Viewed": 1,
    "Product Added": 1,
    "Checkout Started": 2,
    "Checkout Step Viewed": 3,
    "Checkout Step Completed": 3,
    "Payment Info Entered": 4,
    "Order Completed": 5,
}
_CLICK_EVENTS = frozenset({"Element Clicked", "Clicked"})
_EXPOSURE_EVENTS = frozenset({"Decision Viewed", "Promotion Viewed"})
# Clicks that reward a decision, and the property naming what was clicked.
_CLICKED_ITEM = {
    "Product Clicked": "product_id",
    "Promotion Clicked": "promotion_id",
    "Element Clicked": "item_id",
    "Clicked": "item_id",
}


class Line(Struct, array_like=True, gc=False):
    """A product in a cart or an order."""

    product_id: str
    quantity: int
    price: float | None
    category: str | None


class Facts(Struct, gc=False, kw_only=True):
    """The parts of one event the context layer uses. `kind` counts events: the track
    event's name, or the type of the other events (`page`, `identify`, ...)."""

    kind: str
    at_ms: int
    anonymous_id: str | None
    user_id: str | None
    previous_id: str | None = None
    page_path: str | None = None
    help_page: bool = False
    product: Line | None = None
    brand: str | None = None
    query: str | None = None
    added: Line | None = None
    removed: Line | None = None
    cart: list[Line] | None = None
    order_revenue: float | None = None
    order_lines: list[Line] | None = None
    checkout_stage: int = 0
    checkout_step: int | None = None
    scroll_depth: float | None = None
    exit_intent: bool = False
    rage_click: bool = False
    click_target: str | None = None
    # Rewards: the decision an event names (`properties.decision_id`), and the item or
    # offer a click was on (`Product Clicked`, `Promotion Clicked`, `Element Clicked`).
    decision_id: str | None = None
    clicked: str | None = None
    # A viewable impression of a decision, reported by the client (`Decision Viewed` or
    # Segment's `Promotion Viewed`, with `decision_id`).
    exposure: bool = False
    traits: dict[str, Any] | None = None
    # A track event's properties (the record's own dict, not a copy): custom metrics of
    # experiments add them up.
    properties: dict[str, Any] | None = None
    consent: dict[str, bool] | None = None
    # Where the visit came from and what it runs on (from enrichment).
    campaign: str | None = None
    medium: str | None = None
    source: str | None = None
    device: str | None = None
    country: str | None = None
    region: str | None = None
    city: str | None = None
    local_hour: int | None = None
    weekday: int | None = None


def facts_of(record: EventRecord) -> Facts:
    event = record.event
    assert event.timestamp is not None
    enrichment = record.enrichment
    event_type = type(event)
    # Strings are not interned here: the session and the profile intern what they keep,
    # when it is new to them (most events repeat what they already hold).
    referrer = enrichment.referrer
    device = enrichment.device
    geo = enrichment.geo
    local = enrichment.local
    campaign = enrichment.campaign
    facts = Facts(
        kind=event.event if isinstance(event, TrackEvent) else EVENT_TAGS[event_type],
        at_ms=record.at_ms or epoch_ms(event.timestamp),
        anonymous_id=event.anonymous_id,
        user_id=event.user_id,
        campaign=(
            f"{campaign.source or ''}|{campaign.medium or ''}|{campaign.name or ''}"
            if campaign is not None and (campaign.name or campaign.source)
            else None
        ),
        medium=referrer.medium,
        source=referrer.source,
        device=None if device is None else device.type,
        country=None if geo is None else geo.country,
        region=None if geo is None else geo.region,
        city=None if geo is None else geo.city,
        local_hour=None if local is None else local.hour,
        weekday=None if local is None else local.weekday,
    )
    context = event.context
    if context is not None and context.consent is not None:
        facts.consent = dict(context.consent.category_preferences)
    if isinstance(event, TrackEvent):
        _read_track(event, facts)
    elif isinstance(event, _PAGE_EVENTS):
        page = context.page if context is not None else None
        # Segment's page spec puts the path in properties (server libraries send only
        # that); the browser's context.page.path wins when both are there.
        path = event.properties.get("path")
        facts.page_path = (
            (page.path if page else None) or (path if isinstance(path, str) else None) or event.name
        )
        facts.help_page = _is_help_page(facts.page_path, event.category, event.name)
    elif isinstance(event, IdentifyEvent):
        facts.traits = event.traits
    elif isinstance(event, AliasEvent):
        facts.previous_id = event.previous_id
    return facts


_PAGE_EVENTS = (PageEvent, ScreenEvent)


def _is_help_page(*names: str | None) -> bool:
    return any(name and _HELP_PAGE.search(name) for name in names)


def _read_track(event: TrackEvent, facts: Facts) -> None:
    name = event.event
    properties = event.properties
    facts.properties = properties
    facts.checkout_stage = _STAGE_OF_EVENT.get(name, 0)
    decision_id = properties.get("decision_id")
    if decision_id is not None:
        facts.decision_id = decision_id if isinstance(decision_id, str) else None
        if name in _EXPOSURE_EVENTS:
            facts.exposure = True
            return
    clicked_key = _CLICKED_ITEM.get(name)
    if clicked_key is not None:
        clicked = properties.get(clicked_key)
        facts.clicked = clicked if isinstance(clicked, str) else None
    if name in _CLICK_EVENTS:
        target = properties.get("target")
        facts.click_target = target if isinstance(target, str) else None
        return
    if name == "Scroll Depth":
        depth = event.properties.get("depth")
        if isinstance(depth, int | float) and not isinstance(depth, bool):
            facts.scroll_depth = min(100.0, max(0.0, float(depth)))
        return
    if name == "Exit Intent":
        facts.exit_intent = True
        return
    if name == "Rage Click":
        facts.rage_click = True
        return
    if not name[:1].isupper() or name not in _COMMERCE_READERS:
        return
    if name in _READ_DIRECTLY and surely_valid(event):  # log history may predate the checks
        if name == "Products Searched":
            _read_query(event.properties.get("query"), facts)
        else:
            _read_one_product(name, event.properties, facts)
        return
    try:
        commerce = commerce_properties(event)
    except msgspec.ValidationError:  # checked at ingest; history from before may differ
        return
    _COMMERCE_READERS[name](commerce, facts)


# Events about one product, read straight from their properties when these hold the
# types the e-commerce schema converts to (as nearly every client sends them): the same
# answer as converting them with the schema, without building the typed struct again
# (ingest already did, to validate them).
_ONE_PRODUCT = frozenset(
    {"Product Viewed", "Product Added", "Wishlist Product Added to Cart", "Product Removed"}
)


# With a search, the events read straight from their properties after `surely_valid`.
_READ_DIRECTLY = _ONE_PRODUCT | {"Products Searched"}


def _read_one_product(name: str, properties: dict[str, Any], facts: Facts) -> None:
    """Fill `facts` from one product's properties, which `surely_valid` accepted: each is
    absent, None or of the JSON type the schema takes as is (an int price becomes the
    float the schema makes of it)."""
    product_id = properties.get("product_id")
    price = properties.get("price")
    quantity = properties.get("quantity")
    category = properties.get("category")
    brand = properties.get("brand")
    line = (
        None
        if product_id is None
        else Line(
            str(product_id),
            1 if quantity is None else quantity,
            None if price is None else float(price),
            category,
        )
    )
    if name == "Product Viewed":
        facts.product, facts.brand = line, brand
    elif name == "Product Removed":
        facts.removed = line
    else:
        facts.added, facts.brand = line, brand


def _line(product: Product, quantity: int | None = None) -> Line | None:
    if product.product_id is None:
        return None
    count = product.quantity if quantity is None else quantity
    return Line(
        str(product.product_id), 1 if count is None else count, product.price, product.category
    )


def _viewed(properties: CommerceProperties, facts: Facts) -> None:
    facts.product = _line(properties)
    facts.brand = properties.brand


def _searched(properties: CommerceProperties, facts: Facts) -> None:
    _read_query(properties.query, facts)


def _read_query(sent: str | None, facts: Facts) -> None:
    query = " ".join(sent.lower().split()) if sent else ""
    if query:  # a blank search is no search
        facts.query = query


def _added(properties: CommerceProperties, facts: Facts) -> None:
    facts.added = _line(properties)
    facts.brand = properties.brand


def _removed(properties: CommerceProperties, facts: Facts) -> None:
    facts.removed = _line(properties)


def _cart_viewed(properties: CommerceProperties, facts: Facts) -> None:
    if properties.products is not None:
        facts.cart = [line for p in properties.products if (line := _line(p)) is not None]


def _checkout_step(properties: CommerceProperties, facts: Facts) -> None:
    facts.checkout_step = properties.step


def _order_completed(properties: CommerceProperties, facts: Facts) -> None:
    lines = [line for p in properties.products or () if (line := _line(p)) is not None]
    facts.order_lines = lines
    revenue = properties.revenue
    if revenue is None:
        revenue = properties.total
    if revenue is None:
        revenue = sum((line.price or 0.0) * line.quantity for line in lines)
    facts.order_revenue = revenue


_COMMERCE_READERS = {
    "Product Viewed": _viewed,
    "Products Searched": _searched,
    "Product Added": _added,
    "Wishlist Product Added to Cart": _added,
    "Product Removed": _removed,
    "Cart Viewed": _cart_viewed,
    "Checkout Started": _cart_viewed,
    "Checkout Step Viewed": _checkout_step,
    "Checkout Step Completed": _checkout_step,
    "Order Completed": _order_completed,
}
