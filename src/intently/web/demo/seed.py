"""What `intently demo` loads into the engine at each start: the shop's catalog and
offers, the placements and segments its pages use, and (once per data dir) a history of
other visitors' past sessions.

Everything but the history is applied at every start and is idempotent: the same
products, offers and definitions replace themselves (a placement or segment already
defined identically is left alone, so its learned state and version are kept). The
history goes through the engine's own ingest path (the pipeline, as `intently replay`
does: durable, deduplicated, applied to profiles, segments and recommenders), with fixed
messageIds; `demo-seed.json` in the data dir records that it was loaded, so a restart
does not load it again.

How the shop adapts within one session (the rules live here, in the placements):
- `home_hero`: each category's banner is eligible once the category is among the
  session's top categories (the offer's `eligibility`); a rule excludes the two banners
  for everyone as soon as the session shows an interest, so the category banner shows.
- `home_recs`, `search_results`, `category_grid`: items of the session's top categories
  are boosted by a rule; asked lists (search, category pages) also rank by the visitor's
  category affinity (act/candidates.py `Recommenders.ranking`).
- `exit_intent_offer`: discounts eligible with something in the cart, shown when the tag
  sees exit intent (`data-intently-trigger="exit-intent"`).
- `confirmation_offer`: calls to action for the transaction moment; "complete the look"
  is eligible once the session has an order.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from intently.act.placements import PlacementSpec
from intently.catalog.items import Item
from intently.catalog.offers import prepare
from intently.events.validate import decode_event
from intently.segments.registry import SegmentSpec
from intently.web.demo.catalog import BY_ID, CATEGORIES, SEED, offers, products

if TYPE_CHECKING:
    from intently.engine import Engine

log = logging.getLogger(__name__)

SEED_VERSION = 1
MARKER = "demo-seed.json"
HISTORY_VISITORS = 480
HISTORY_HOURS = 72

HERO_TEMPLATE = (
    '<a class="hero" href="{{fields.url}}">'
    '<img class="hero-image" src="{{fields.image}}" alt="">'
    '<span class="hero-text"><strong class="hero-title">{{title}}</strong>'
    '<span class="hero-body">{{fields.text}}</span>'
    '<span class="button">{{fields.cta}}</span></span></a>'
)
OFFER_TEMPLATE = (
    '<div class="offer offer-{{kind}}"><strong class="offer-title">{{title}}</strong>'
    '<span class="offer-body">{{fields.text}}</span>'
    '<code class="offer-code">{{fields.code}}</code>'
    '<a class="button" href="{{fields.url}}">{{fields.cta}}</a></div>'
)
# The same markup as the pages' own product cards (templates/demo/_card.html).
ITEMS_TEMPLATE = (
    '<div class="grid"><a class="card" data-each href="{{url}}">'
    '<img class="card-image" src="{{image}}" alt="" width="400" height="400">'
    '<span class="card-title">{{title}}</span>'
    '<span class="card-price">${{price}}</span></a></div>'
)
GENERIC_HEROES = ["hero-season", "hero-members"]


def _category_boosts(amount: float) -> list[dict[str, Any]]:
    return [
        {
            "action": "boost", "match": {"categories": [c.id]}, "amount": amount,
            "when": f'"{c.id}" in session.top_categories',
            "description": f"boosted: {c.name.lower()} is among what you browse now",
        }
        for c in CATEGORIES
    ]  # fmt: skip


# Generous deadlines: the demo runs on a laptop, next to a browser and whatever else; a
# decision that overruns answers with its fallback, which would hide the adaptation.
DEADLINE_MS = 100.0


def _items(recommender: str, count: int, description: str, **more: Any) -> dict[str, Any]:
    return {
        "kind": "items", "recommender": recommender, "count": count,
        "policy": {"name": "slate"}, "template": ITEMS_TEMPLATE, "description": description,
        "deadline_ms": DEADLINE_MS, **more,
    }  # fmt: skip


PLACEMENTS: dict[str, dict[str, Any]] = {
    "home_hero": {
        "kind": "offers", "offer_kinds": ["banner"], "count": 1,
        "offers": [f"hero-{c.id}" for c in CATEGORIES] + GENERIC_HEROES,
        "policy": {"name": "linucb"}, "fallback": ["hero-season"], "template": HERO_TEMPLATE,
        "deadline_ms": DEADLINE_MS,
        "rules": [{
            "action": "exclude", "items": GENERIC_HEROES,
            "when": "session.top_categories != []",
            "description": "you showed interest in a category: its banner replaces the "
            "generic ones",
        }],
        "description": "The home page's hero: the banner of the category the visitor "
        "browses now, else a generic banner (LinUCB).",
    },
    "home_recs": _items(
        "for_you", 8, "Home page recommendations: what this visitor's session suggests.",
        rules=_category_boosts(0.45),
    ),
    "pdp_recs": _items("similar", 4, "Product page: viewed together and alike."),
    "cart_recs": _items(
        "cart", 4, "Cart: bought and viewed together with the cart.", reward="add_to_cart"
    ),
    "search_results": _items(
        "for_you", 24, "Search results, ranked for the visitor (the page asks its results).",
        rules=_category_boosts(0.4),
    ),
    "category_grid": _items(
        "for_you", 25, "A category page's products, ranked for the visitor."
    ),
    "exit_intent_offer": {
        "kind": "offers", "offer_kinds": ["discount", "message"], "count": 1,
        "offers": ["exit-cart-10", "exit-free-shipping", "exit-help"],
        "policy": {"name": "beta-thompson"}, "reward": "conversion", "fallback": ["exit-help"],
        "deadline_ms": DEADLINE_MS,
        "template": OFFER_TEMPLATE,
        "description": "Shown as an overlay when the visitor is about to leave the cart or "
        "the checkout: a retention offer.",
    },
    "confirmation_offer": {
        "kind": "offers", "offer_kinds": ["cta"], "count": 1,
        "offers": ["confirm-referral", "confirm-complete-look"],
        "policy": {"name": "epsilon-greedy"}, "fallback": ["confirm-referral"],
        "deadline_ms": DEADLINE_MS,
        "template": OFFER_TEMPLATE,
        "description": "The transaction moment: an offer on the order confirmation page.",
    },
}  # fmt: skip

SEGMENTS: dict[str, dict[str, str]] = {
    "running_fans": {
        "expression": '"running" in session.top_categories or "running" in profile.top_categories',
        "description": "Browses or buys running shoes.",
    },
    "cart_abandoners": {
        "expression": "session.cart.count > 0 and session.exit_intent",
        "description": "Something in the cart, and about to leave.",
    },
    "outdoor_explorers": {
        "expression": '"hiking" in profile.top_categories or "trail" in profile.top_categories'
        ' or "jackets" in profile.top_categories',
        "description": "Hiking boots, trail shoes, outdoor jackets.",
    },
    "big_baskets": {
        "expression": "session.cart.value >= 150",
        "description": "A cart worth $150 or more.",
    },
    "buyers": {"expression": "profile.purchases.count > 0", "description": "Ordered before."},
}  # fmt: skip


def define(engine: Engine) -> None:
    """The catalog, offers, placements and segments (idempotent)."""
    engine.catalog.upsert(products())
    live = [prepare(offer, engine.segments.catalog) for offer in offers()]
    engine.catalog.apply_offers(engine.catalog.write_offers(live))
    for placement_id, raw in PLACEMENTS.items():
        spec = msgspec.convert(raw, PlacementSpec)
        current = engine.placements.get(placement_id)
        if current is None or current.spec != spec:
            engine.placements.define(placement_id, spec)
    for name, fields in SEGMENTS.items():
        segment = engine.segments.get(name)
        wanted = (fields["expression"], fields["description"])
        if segment is None or (segment.expression, segment.description) != wanted:
            engine.define_segment(name, SegmentSpec(**fields))


async def seed(engine: Engine) -> int:
    """Define everything and load the history once; returns the events loaded now."""
    define(engine)
    marker = engine.settings.data_dir / MARKER
    if marker.exists():
        try:
            if json.loads(marker.read_text()).get("version") == SEED_VERSION:
                return 0
        except (OSError, ValueError):
            pass  # unreadable: the history is loaded again (its messageIds dedupe it)
    loaded = await load_history(engine)
    marker.write_text(json.dumps({"version": SEED_VERSION, "events": loaded}))
    log.info("demo: loaded %d events of past visitors", loaded)
    return loaded


async def load_history(engine: Engine) -> int:
    """Past sessions of other visitors, through the pipeline (as a replay)."""
    now_ms = engine.now_ms()
    events = []
    for line in history(now_ms):
        event, error = decode_event(line, None)
        if error is not None:  # a bug in this module: say which event
            raise ValueError(f"demo history: {error.field}: {error.detail}")
        assert event is not None
        events.append((None, event))
    # The messageIds of a history loaded before (the marker lost) are known again.
    window = engine.pipeline.dedupe.window_ms
    engine.pipeline.prime_dedupe(now_ms - HISTORY_HOURS * 3_600_000 - window, now_ms)
    accepted = 0
    for start in range(0, len(events), 500):
        result = await engine.pipeline.ingest(events[start : start + 500], replay=True)
        accepted += result.accepted
    engine.decider.tick(engine.now_ms())  # popular and trending lists see the history
    return accepted


# Categories a shopper of one often browses too.
RELATED = {
    "running": ("trail",), "trail": ("running", "hiking"), "hiking": ("jackets", "trail"),
    "jackets": ("hiking", "cycling"), "tennis": ("yoga",), "yoga": ("swimwear", "tennis"),
    "cycling": ("jackets",), "swimwear": ("yoga",),
}  # fmt: skip
# How many past shoppers each category draws (running is the shop's best seller).
POPULARITY = {
    "running": 4, "trail": 2, "hiking": 2, "jackets": 2, "tennis": 1.5, "yoga": 1.5,
    "cycling": 1.5, "swimwear": 1,
}  # fmt: skip
AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
)


def history(now_ms: int) -> Iterator[bytes]:
    """Past sessions as Segment events (JSON lines), the same for the same `now_ms`'s
    seed: each visitor browses mostly one category (some wander to a related one), some
    add to cart, some order. Within a category a few products are the favourites."""
    rng = random.Random(SEED + 1)
    catalog = products()
    by_category: dict[str, list[Item]] = {}
    for item in catalog:
        by_category.setdefault(item.leaf_category or "", []).append(item)
    favourites = {
        name: rng.sample(items, k=len(items)) for name, items in sorted(by_category.items())
    }
    weights = [1 / (rank + 1) ** 0.9 for rank in range(max(map(len, favourites.values())))]
    names = list(POPULARITY)
    for visitor in range(HISTORY_VISITORS):
        anonymous_id = f"demo-past-{visitor:04d}"
        at_ms = now_ms - int(rng.uniform(1, HISTORY_HOURS) * 3_600_000)
        main = rng.choices(names, weights=[POPULARITY[n] for n in names])[0]
        agent = rng.choice(AGENTS)
        viewed: list[Item] = []
        for _ in range(rng.randint(2, 7)):
            category = main if rng.random() < 0.8 else rng.choice(RELATED[main])
            pool = favourites[category]
            viewed.append(rng.choices(pool, weights=weights[: len(pool)])[0])
        lines: list[tuple[str, dict[str, Any]]] = [
            ("Product Viewed", _product(item)) for item in viewed
        ]
        if rng.random() < 0.35:
            added = [item for item in viewed if item.leaf_category == main][-1:] or viewed[-1:]
            if rng.random() < 0.4 and len(viewed) > 2:
                added.append(rng.choice(viewed[:-1]))
            added = list({item.id: item for item in added}.values())
            lines += [("Product Added", _product(item)) for item in added]
            if rng.random() < 0.5:
                revenue = round(sum(item.price or 0.0 for item in added), 2)
                lines.append(
                    ("Order Completed", {
                        "order_id": f"past-{visitor:04d}", "revenue": revenue,
                        "currency": "USD", "products": [_product(i) for i in added],
                    })
                )  # fmt: skip
        for number, (name, properties) in enumerate(lines):
            at_ms += int(rng.uniform(15, 120) * 1000)
            moment = datetime.fromtimestamp(min(at_ms, now_ms - 1000) / 1000, tz=UTC)
            stamp = moment.isoformat().replace("+00:00", "Z")
            yield msgspec.json.encode(
                {
                    "type": "track", "event": name, "anonymousId": anonymous_id,
                    "messageId": f"demo-seed-{SEED_VERSION}-{visitor}-{number}",
                    "timestamp": stamp, "receivedAt": stamp, "properties": properties,
                    "context": {"userAgent": agent},
                }
            )  # fmt: skip


def _product(item: Item) -> dict[str, Any]:
    category = item.leaf_category
    return {
        "product_id": item.id, "name": item.title, "price": item.price, "brand": item.brand,
        "category": category, "quantity": 1,
        "url": item.url, "image_url": item.image,
    } if category in BY_ID else {"product_id": item.id}  # fmt: skip
