"""Catalog items: the products decisions choose from, as typed structs checked one by one.

An item is valid or refused on its own, with the field named (as events are): one bad row
of a 10,000-item upload never stops the other 9,999. `category` is a path from the
broadest category to the narrowest (`["Shoes", "Running"]`); the narrowest is what
sessions and profiles hold as the item's category. `stock` None means "not tracked": the
item is available; 0 means sold out: it is not recommended, from the moment the update
is acknowledged.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from intently.catalog.uploads import UploadError, judge, judge_all, read_entries
from intently.events.limits import check_free_form
from intently.events.schema import Id, Name, Text, Url
from intently.events.validate import FieldError

__all__ = ["Item", "ItemUpload", "UploadError", "decode_item", "decode_upload"]

MAX_ITEMS_PER_UPLOAD = 10_000
Price = Annotated[float, Meta(ge=0, le=1e12)]
Stock = Annotated[int, Meta(ge=0, le=10**12)]


class Item(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    id: Id
    title: Text | None = None
    category: Annotated[list[Name], Meta(max_length=10)] = msgspec.field(default_factory=list)
    brand: Name | None = None
    price: Price | None = None
    stock: Stock | None = None
    tags: Annotated[list[Name], Meta(max_length=100)] = msgspec.field(default_factory=list)
    image: Url | None = None
    url: Url | None = None
    active: bool = True
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def leaf_category(self) -> str | None:
        return self.category[-1] if self.category else None

    @property
    def available(self) -> bool:
        return self.active and self.stock != 0


class _Upload(Struct):
    items: Annotated[list[msgspec.Raw], Meta(max_length=MAX_ITEMS_PER_UPLOAD)]


class ItemUpload(Struct):
    """The body of `POST /v1/catalog/items` (for the OpenAPI document)."""

    items: Annotated[list[Item], Meta(max_length=MAX_ITEMS_PER_UPLOAD)]


_item = msgspec.json.Decoder(Item)
_upload = msgspec.json.Decoder(_Upload)


def _checked(raw: bytes | msgspec.Raw) -> Item:
    item = _item.decode(raw)
    check_free_form(item.attributes, ["attributes"])
    return item


def decode_item(
    raw: bytes | msgspec.Raw, index: int | None
) -> tuple[Item | None, FieldError | None]:
    """One item, or why not (the field named, with a JSON pointer under /items/index)."""
    return judge(lambda: _checked(raw), index, "items")


def decode_upload(body: bytes) -> tuple[list[Item], list[FieldError]]:
    """`{"items": [...]}`: the valid items, and the refused ones (each with its index)."""
    valid, errors = judge_all(read_entries(body, _upload, "items"), "items", _checked)
    return [item for _, item in valid], errors
