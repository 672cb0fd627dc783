"""The bodies of `POST /v1/decide` and `POST /v1/context`, and their answers."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from intently.act.placements import MAX_COUNT
from intently.events.schema import Campaign, Id, PageContext

MAX_PLACEMENTS = 20
MAX_LINES = 200
MAX_RANKED = 500


class DecideLine(Struct, forbid_unknown_fields=False, omit_defaults=True):
    """A product in the cart or the order (other Segment product fields are ignored)."""

    product_id: Id
    quantity: Annotated[int, Meta(ge=1, le=1_000_000)] = 1
    price: Annotated[float, Meta(ge=0, le=1e12)] | None = None


class DecideOrder(Struct, forbid_unknown_fields=False, omit_defaults=True):
    order_id: Id | None = None
    products: Annotated[list[DecideLine], Meta(max_length=MAX_LINES)] = msgspec.field(
        default_factory=list
    )
    revenue: Annotated[float, Meta(ge=0, le=1e12)] | None = None


class DecideContext(Struct, forbid_unknown_fields=True, omit_defaults=True):
    product_id: Id | None = None
    page: PageContext | None = None
    cart: Annotated[list[DecideLine], Meta(max_length=MAX_LINES)] | None = None
    order: DecideOrder | None = None
    campaign: Campaign | None = None


class PlacementAsk(Struct, forbid_unknown_fields=True, omit_defaults=True):
    id: Annotated[str, Meta(min_length=1, max_length=64)]
    count: Annotated[int, Meta(ge=1, le=MAX_COUNT)] | None = None
    # Item widgets: rank these items (a search's results, a category page) instead of
    # the placement's own candidates.
    items: Annotated[list[Id], Meta(max_length=MAX_RANKED)] | None = None


class DecideBody(Struct, rename="camel", forbid_unknown_fields=True, omit_defaults=True):
    placements: Annotated[list[PlacementAsk], Meta(min_length=1, max_length=MAX_PLACEMENTS)]
    anonymous_id: Id | None = None
    user_id: Id | None = None
    context: DecideContext = msgspec.field(default_factory=DecideContext)
    # Include each decision's features (the "why am I seeing this?" view).
    explain: bool = False
    # Include each placement's template (act/templates.py): what the browser tag renders.
    templates: bool = False
    write_key: str | None = None


class DecidedItem(Struct, omit_defaults=True):
    id: str
    propensity: float
    reasons: list[str]
    kind: str | None = None  # an offer's kind
    title: str | None = None
    fields: dict[str, Any] | None = None  # an offer's template fields
    url: str | None = None
    image: str | None = None
    price: float | None = None


class PolicyRef(Struct):
    name: str
    version: str


class PlacementDecision(Struct):
    placement: str
    decision_id: str
    items: list[DecidedItem]
    policy: PolicyRef
    reasons: list[str]
    personalized: bool
    arm: str | None = None  # the experiment / holdout arm (the experiments issue fills it)
    degraded: str | None = None  # why the fallback answered
    features: dict[str, Any] | None = None
    template: str | None = None


class DecideAnswer(Struct):
    decisions: list[PlacementDecision]
