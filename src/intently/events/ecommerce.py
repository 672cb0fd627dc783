"""Typed properties for the events of Segment's e-commerce spec (v2).

A `track` whose `event` is one of `ECOMMERCE_EVENTS` must carry properties of the right
types: a `price` that is a number, `products` that are a list of products, and so on.
Numbers sent as numeric strings ("19.99") are accepted, as many shop platforms send them;
anything else is rejected with the field named. Properties outside the spec stay in
`properties` untouched.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from intently.events.schema import Id, Name, Text, TrackEvent, Url

ECOMMERCE_EVENTS = frozenset(
    {
        "Products Searched",
        "Product List Viewed",
        "Product List Filtered",
        "Promotion Viewed",
        "Promotion Clicked",
        "Product Clicked",
        "Product Viewed",
        "Product Added",
        "Product Removed",
        "Cart Viewed",
        "Checkout Started",
        "Checkout Step Viewed",
        "Checkout Step Completed",
        "Payment Info Entered",
        "Order Updated",
        "Order Completed",
        "Order Refunded",
        "Order Cancelled",
        "Coupon Entered",
        "Coupon Applied",
        "Coupon Denied",
        "Coupon Removed",
        "Product Added to Wishlist",
        "Product Removed from Wishlist",
        "Wishlist Product Added to Cart",
        "Product Shared",
        "Cart Shared",
        "Product Reviewed",
    }
)

# Bounds that also exclude NaN (it fails every comparison) and absurd magnitudes.
Price = Annotated[float, Meta(ge=0, le=1e12)]
Money = Annotated[float, Meta(ge=-1e12, le=1e12)]
Quantity = Annotated[int, Meta(ge=0, le=1_000_000)]
Position = Annotated[int, Meta(ge=0, le=1_000_000)]
ProductId = Id | int


class Product(Struct, omit_defaults=True):
    """One product, as in `Product Viewed` or an entry of `products`."""

    product_id: ProductId | None = None
    sku: Id | None = None
    category: Text | None = None
    name: Text | None = None
    brand: Name | None = None
    variant: Name | None = None
    price: Price | None = None
    quantity: Quantity | None = None
    coupon: Name | None = None
    position: Position | None = None
    url: Url | None = None
    image_url: Url | None = None


class CommerceProperties(Product, omit_defaults=True):
    """The union of the spec's properties; each event uses the subset it needs."""

    query: Text | None = None
    list_id: Id | None = None
    cart_id: Id | None = None
    order_id: Id | None = None
    checkout_id: Id | None = None
    promotion_id: Id | None = None
    creative: Name | None = None
    affiliation: Name | None = None
    step: Position | None = None
    shipping_method: Name | None = None
    payment_method: Name | None = None
    total: Money | None = None
    subtotal: Money | None = None
    revenue: Money | None = None
    value: Money | None = None
    shipping: Money | None = None
    tax: Money | None = None
    discount: Money | None = None
    currency: Annotated[str, Meta(min_length=3, max_length=3)] | None = None
    products: Annotated[list[Product], Meta(max_length=1000)] | None = None


def is_ecommerce(event: TrackEvent) -> bool:
    return event.event in ECOMMERCE_EVENTS


def commerce_properties(event: TrackEvent) -> CommerceProperties:
    """The typed view of an e-commerce event's properties.

    Raises `msgspec.ValidationError` with the path of the offending property.

    >>> ev = TrackEvent(event="Product Viewed", properties={"product_id": "p1", "price": "9.5"})
    >>> commerce_properties(ev).price
    9.5
    """
    return msgspec.convert(event.properties, CommerceProperties, strict=False)


# The fields a one-product event (or a search) usually sends, with what the schema accepts for
# each in the types decoded JSON holds as they are (no conversion): (types, bounds), the
# bounds being string lengths or number ranges, as in the annotations above.
_STRING, _INTEGER, _NUMBER = (str,), (int,), (int, float)
_PRODUCT_CHECKS: dict[str, tuple[tuple[type, ...], float, float]] = {
    "product_id": ((str, int), 1, 256),  # an int id has no bounds (checked below)
    "sku": (_STRING, 1, 256),
    "category": (_STRING, 0, 2048),
    "name": (_STRING, 0, 2048),
    "brand": (_STRING, 0, 256),
    "variant": (_STRING, 0, 256),
    "coupon": (_STRING, 0, 256),
    "url": (_STRING, 0, 8192),
    "image_url": (_STRING, 0, 8192),
    "price": (_NUMBER, 0, 1e12),
    "quantity": (_INTEGER, 0, 1_000_000),
    "position": (_INTEGER, 0, 1_000_000),
    "query": (_STRING, 0, 2048),  # `Products Searched`
}
_TYPED_FIELDS = frozenset(field.encode_name for field in msgspec.structs.fields(CommerceProperties))


def surely_valid(event: TrackEvent) -> bool:
    """True when the properties are certainly accepted by `commerce_properties` without
    building the typed struct: only product fields (and a search's query), each of a JSON
    type the schema takes as is and within its bounds (the common one-product event).
    False means "not certain": the caller converts with the schema, which decides and
    names the field at fault."""
    for key, value in event.properties.items():
        check = _PRODUCT_CHECKS.get(key)
        if check is None:
            if key in _TYPED_FIELDS:
                return False  # a typed field this shortcut does not check
            continue  # a property outside the spec: kept as sent
        if value is None:
            continue
        kinds, low, high = check
        kind = type(value)
        if kind not in kinds:
            return False
        if kind is str:
            if not low <= len(value) <= high:
                return False
        elif key != "product_id" and not low <= value <= high:
            return False
    return True
