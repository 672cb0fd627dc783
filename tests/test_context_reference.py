"""Incremental session and profile features against a from-scratch reference.

The context layer updates a visitor's session and profile one event at a time, with bounded
lists and forward-decayed affinities. This file recomputes the same features from the whole
ordered list of one visitor's events (one anonymousId, no identity merges) with code of its
own, and compares them with what the real pipeline built: events decoded from JSON, stamped,
enriched, logged and applied by `Pipeline.ingest`, read back with `ContextStage.lookup`.

The reference reads the events as sent (plain dicts), not the product's `Facts`. Times are
event times in milliseconds; "ordered" means log order, the order the events were sent in.
The example tests at the end pin cases where the two once disagreed and the product was
wrong (session start of late events, repeats beyond the shown searches, blank queries,
`properties.path`, help-page words, milliseconds after 2038).
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
import tempfile
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from intently import Engine, ManualClock
from intently.context.profile import Profile, ProfileRules
from intently.context.settings import ContextSettings
from intently.events.validate import decode_body
from intently.segments.fields import FieldCatalog
from intently.segments.fused import fuse
from intently.segments.lang import compile_expression
from support import START, make_settings

pytestmark = pytest.mark.anyio

# -- the specification the reference follows ------------------------------------------------

SECOND = 1_000
MINUTE = 60 * SECOND
DAY = 24 * 60 * MINUTE
SESSION_TIMEOUT = 30 * MINUTE
SESSION_HALF_LIFE = 10 * MINUTE
PROFILE_HALF_LIFE = 30 * DAY
RECENT_PRODUCTS, RECENT_PRICES, RECENT_SEARCHES, RECENT_PAGES, RECENT_DWELLS = 10, 20, 5, 5, 10
MAX_DWELL = 30 * MINUTE
LONG_HELP_STAY = 30 * SECOND
RAGE_GAP, RAGE_COUNT = 700, 3
VIEW, CART, PURCHASE, SEARCH = 1.0, 3.0, 5.0, 1.0
PRICE_ALPHA = 0.1
HELP_WORDS = frozenset(
    {"shipping", "delivery", "return", "returns", "refund", "refunds", "help", "faq", "faqs",
     "support", "contact", "warranty"}
)  # fmt: skip
STAGE_OF = {
    "Cart Viewed": 1,
    "Product Added": 1,
    "Checkout Started": 2,
    "Checkout Step Viewed": 3,
    "Checkout Step Completed": 3,
    "Payment Info Entered": 4,
    "Order Completed": 5,
}
STAGE_NAMES = ("browsing", "cart", "checkout", "shipping", "payment", "purchased")
CLICKS = ("Element Clicked", "Clicked")

Sent = tuple[int, dict[str, Any]]  # (event time in ms, the event as sent)


def test_the_reference_assumes_the_default_settings() -> None:
    defaults = ContextSettings()
    assert (defaults.session_timeout_ms, defaults.session_half_life_ms) == (
        SESSION_TIMEOUT,
        SESSION_HALF_LIFE,
    )
    assert defaults.profile_half_life_ms == PROFILE_HALF_LIFE
    assert (
        defaults.recent_products,
        defaults.recent_prices,
        defaults.recent_searches,
        defaults.recent_pages,
        defaults.recent_dwells,
    ) == (RECENT_PRODUCTS, RECENT_PRICES, RECENT_SEARCHES, RECENT_PAGES, RECENT_DWELLS)
    assert (defaults.long_help_stay_ms, defaults.rage_click_gap_ms) == (LONG_HELP_STAY, RAGE_GAP)
    assert defaults.rage_click_count == RAGE_COUNT


# -- reading an event as sent ---------------------------------------------------------------


def kind_of(event: dict[str, Any]) -> str:
    return str(event["event"]) if event["type"] == "track" else str(event["type"])


def props(event: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = event.get("properties") or {}
    return found


def campaign_of(event: dict[str, Any]) -> tuple[Any, ...] | None:
    campaign = (event.get("context") or {}).get("campaign")
    if not campaign or not (campaign.get("name") or campaign.get("source")):
        return None
    return (campaign.get("source"), campaign.get("medium"), campaign.get("name"))


def page_path(event: dict[str, Any]) -> str | None:
    """`context.page.path`, else the `path` property (Segment's page spec reserves it; server
    libraries send only that), else the page's name."""
    page = (event.get("context") or {}).get("page") or {}
    path = page.get("path") or props(event).get("path") or event.get("name")
    return str(path) if path else None


def is_help_page(event: dict[str, Any]) -> bool:
    for text in (page_path(event), event.get("category"), event.get("name")):
        if text and HELP_WORDS.intersection(re.split(r"[^a-z]+", text.lower())):
            return True
    return False


def normalized(query: str) -> str:
    return re.sub(r"\s+", " ", query).strip().lower()


def quantity(line: dict[str, Any]) -> int:
    count = line.get("quantity")
    return 1 if count is None else int(count)


def viewed(events: list[Sent]) -> list[tuple[int, dict[str, Any]]]:
    return [
        (at, props(e))
        for at, e in events
        if kind_of(e) == "Product Viewed" and props(e).get("product_id") is not None
    ]


def added(events: list[Sent]) -> list[tuple[int, dict[str, Any]]]:
    return [
        (at, props(e))
        for at, e in events
        if kind_of(e) == "Product Added" and props(e).get("product_id") is not None
    ]


def orders(events: list[Sent]) -> list[tuple[int, dict[str, Any]]]:
    return [(at, props(e)) for at, e in events if kind_of(e) == "Order Completed"]


def order_lines(order: dict[str, Any]) -> list[dict[str, Any]]:
    return [line for line in order.get("products") or () if line.get("product_id") is not None]


def order_revenue(order: dict[str, Any]) -> float:
    for name in ("revenue", "total"):
        if order.get(name) is not None:
            return float(order[name])
    return sum((line.get("price") or 0.0) * quantity(line) for line in order_lines(order))


def searches(events: list[Sent]) -> list[str]:
    """Normalized queries (lower case, blanks collapsed); a blank query is no search."""
    found = [
        normalized(props(e)["query"])
        for _, e in events
        if kind_of(e) == "Products Searched" and isinstance(props(e).get("query"), str)
    ]
    return [query for query in found if query]


def repeated(queries: list[str], window: int | None = None) -> int:
    """Searches for a query already searched in the session (or, with `window`, among the
    `window` searches just before it)."""
    count = 0
    for index, query in enumerate(queries):
        earlier = queries[max(0, index - window) : index] if window else queries[:index]
        count += query in earlier
    return count


# -- the reference ------------------------------------------------------------------------


def split_sessions(events: list[Sent]) -> list[list[Sent]]:
    """A session ends after 30 minutes without events (by event time: the gap is measured
    from the latest time the session has seen), or when an event brings a campaign other
    than the one the session started with."""
    sessions: list[list[Sent]] = []
    latest = 0
    campaign: tuple[Any, ...] | None = None
    for at, event in events:
        brought = campaign_of(event)
        if (
            not sessions
            or at - latest > SESSION_TIMEOUT
            or (brought is not None and brought != campaign)
        ):
            sessions.append([])
            latest, campaign = at, brought
        sessions[-1].append((at, event))
        latest = max(latest, at)
    return sessions


def decayed(
    contributions: list[tuple[str, float, int]], now: int, half_life: int
) -> dict[str, float]:
    """sum(weight * 2**(-(now - t) / half_life)) per key, directly."""
    scores: dict[str, float] = {}
    for key, weight, at in contributions:
        scores[key] = scores.get(key, 0.0) + weight * 2.0 ** (-(now - at) / half_life)
    return scores


def interests(events: list[Sent]) -> tuple[list[tuple[str, float, int]], ...]:
    """(key, weight, time) of every category and brand interest the events show."""
    categories: list[tuple[str, float, int]] = []
    brands: list[tuple[str, float, int]] = []
    for weight, shown in ((VIEW, viewed(events)), (CART, added(events))):
        for at, p in shown:
            if p.get("category") is not None:
                categories.append((p["category"], weight, at))
            if p.get("brand") is not None:
                brands.append((p["brand"], weight, at))
    for at, order in orders(events):
        categories.extend(
            (line["category"], PURCHASE, at)
            for line in order_lines(order)
            if line.get("category") is not None
        )
    return categories, brands


def reference_cart(events: list[Sent]) -> list[dict[str, Any]]:
    cart: list[dict[str, Any]] = []
    for _, event in events:
        kind, p = kind_of(event), props(event)
        if kind == "Product Added" and p.get("product_id") is not None:
            held = next((h for h in cart if h["product_id"] == str(p["product_id"])), None)
            if held is None:
                cart.append(
                    {
                        "product_id": str(p["product_id"]),
                        "quantity": quantity(p),
                        "price": p.get("price"),
                        "category": p.get("category"),
                    }
                )
            else:
                held["quantity"] += quantity(p)
                if p.get("price") is not None:
                    held["price"] = p["price"]
        elif kind == "Product Removed" and p.get("product_id") is not None:
            held = next((h for h in cart if h["product_id"] == str(p["product_id"])), None)
            if held is not None:
                held["quantity"] -= quantity(p)
                if held["quantity"] <= 0:
                    cart.remove(held)
        elif kind in ("Cart Viewed", "Checkout Started") and p.get("products") is not None:
            cart = [
                {
                    "product_id": str(line["product_id"]),
                    "quantity": quantity(line),
                    "price": line.get("price"),
                    "category": line.get("category"),
                }
                for line in p["products"]
                if line.get("product_id") is not None
            ]
        elif kind == "Order Completed":
            cart = []
    return cart


def rage_clicks(events: list[Sent]) -> int:
    """`Rage Click` events, plus every run of clicks on one target, each within 700 ms of
    the one before (other events in between do not break a run), that reaches three."""
    count = sum(kind_of(e) == "Rage Click" for _, e in events)
    clicks = [
        (at, props(e)["target"])
        for at, e in events
        if kind_of(e) in CLICKS and isinstance(props(e).get("target"), str)
    ]
    run = 0
    for index, (at, target) in enumerate(clicks):
        if index and clicks[index - 1][1] == target and 0 <= at - clicks[index - 1][0] <= RAGE_GAP:
            run += 1
        else:
            run = 1
        count += run == RAGE_COUNT
    return count


def back_and_forth(events: list[Sent]) -> int:
    """Views A, B, A in a row where B and the second A are alike (same category, or one
    of the two unknown)."""
    shown = [(str(p["product_id"]), p.get("category")) for _, p in viewed(events)]
    count = 0
    for (first, _), (middle, middle_category), (last, category) in zip(
        shown, shown[1:], shown[2:], strict=False
    ):
        if first == last != middle and (
            middle_category is None or category is None or middle_category == category
        ):
            count += 1
    return count


def dwell_times(events: list[Sent]) -> tuple[list[int], int, int]:
    """Times between consecutive page views (0 to 30 minutes; others are not reading),
    and of those that followed a help page: their sum and how many were long."""
    pages = [(at, e) for at, e in events if e["type"] in ("page", "screen")]
    dwells: list[int] = []
    help_ms = long_stays = 0
    for (before, page), (after, _) in itertools.pairwise(pages):
        dwell = after - before
        if 0 <= dwell <= MAX_DWELL:
            dwells.append(dwell)
            if is_help_page(page):
                help_ms += dwell
                long_stays += dwell >= LONG_HELP_STAY
    return dwells, help_ms, long_stays


def engagement_of(dwells: list[int]) -> str:
    recent = dwells[-RECENT_DWELLS:]
    if len(recent) < 2:
        return "unknown"
    typical = statistics.median(recent)
    return "rapid" if typical < 10 * SECOND else "deep" if typical >= 45 * SECOND else "steady"


def reference_session(events: list[Sent], number: int, now: int) -> dict[str, Any]:
    times = [at for at, _ in events]
    views = viewed(events)
    prices = [float(p["price"]) for _, p in views if p.get("price") is not None]
    depths = [
        min(100.0, max(0.0, float(p["depth"])))
        for _, e in events
        if kind_of(e) == "Scroll Depth"
        and isinstance((p := props(e)).get("depth"), int | float)
        and not isinstance(p.get("depth"), bool)
    ]
    queries = searches(events)
    cart = reference_cart(events)
    steps = [
        props(e)["step"]
        for _, e in events
        if kind_of(e) in ("Checkout Step Viewed", "Checkout Step Completed")
        and props(e).get("step") is not None
    ]
    categories, brands = interests(events)
    dwells, help_ms, long_stays = dwell_times(events)
    bought = orders(events)
    paths = [path for _, e in events if e["type"] in ("page", "screen") and (path := page_path(e))]
    recent_prices = prices[-RECENT_PRICES:]
    campaign = campaign_of(events[0][1])  # a session keeps the campaign it began with
    return {
        "number": number,
        "started": min(times),
        "last_seen": max(times),
        "time_on_site_ms": max(times) - min(times),
        "events": len(events),
        "counts": dict(Counter(kind_of(e) for _, e in events)),
        "pages_viewed": sum(e["type"] in ("page", "screen") for _, e in events),
        "recent_pages": paths[-RECENT_PAGES:],
        "max_scroll_depth": max([0.0, *depths]),
        "recent_products": [str(p["product_id"]) for _, p in views][-RECENT_PRODUCTS:],
        "categories": decayed(categories, now, SESSION_HALF_LIFE),
        "brands": decayed(brands, now, SESSION_HALF_LIFE),
        "price": {
            "min": min(prices, default=None),
            "max": max(prices, default=None),
            "median": statistics.median(recent_prices) if recent_prices else None,
        },
        "recent_searches": queries[-RECENT_SEARCHES:],
        "cart": {
            "items": cart,
            "count": sum(line["quantity"] for line in cart),
            "value": sum((line["price"] or 0.0) * line["quantity"] for line in cart),
        },
        "checkout": {
            "stage": STAGE_NAMES[max((STAGE_OF.get(kind_of(e), 0) for _, e in events))],
            "step": steps[-1] if steps else None,
        },
        "purchases": len(bought),
        "revenue": sum(order_revenue(order) for _, order in bought),
        "engagement": engagement_of(dwells),
        "signals": {
            "exit_intent": any(kind_of(e) == "Exit Intent" for _, e in events),
            "rage_clicks": rage_clicks(events),
            "back_and_forth": back_and_forth(events),
            "repeated_searches": repeated(queries),
            "long_help_stays": long_stays,
            "help_time_ms": help_ms,
        },
        "campaign": None if campaign is None else "|".join(part or "" for part in campaign),
        "evidence": VIEW * len(views)
        + SEARCH * len(queries)
        + CART * len(added(events))
        + PURCHASE * sum(len(order_lines(order)) for _, order in bought),
    }


def reference_profile(events: list[Sent], now: int) -> dict[str, Any]:
    sessions = split_sessions(events)
    times = [at for at, _ in events]
    bought = orders(events)
    revenue = sum(order_revenue(order) for _, order in bought)
    categories_bought: Counter[str] = Counter()
    for _, order in bought:
        for line in order_lines(order):
            if line.get("category") is not None:
                categories_bought[line["category"]] += quantity(line)
    level: float | None = None
    for _, event in events:
        kind, p = kind_of(event), props(event)
        if kind == "Product Viewed" and p.get("product_id") is not None:
            seen = [p.get("price")]
        elif kind == "Order Completed":
            seen = [line.get("price") for line in order_lines(p)]
        else:
            seen = []
        for price in seen:
            if price is not None:
                level = price if level is None else level + PRICE_ALPHA * (price - level)
    categories, brands = interests(events)
    return {
        "first_seen": min(times),
        "last_seen": max(times),
        "sessions": len(sessions),
        "counts": dict(Counter(kind_of(e) for _, e in events)),
        "purchases": {
            "count": len(bought),
            "revenue": revenue,
            "average_order_value": revenue / len(bought) if bought else None,
            "last": max((at for at, _ in bought), default=None),
            "categories": dict(categories_bought),
        },
        "categories": decayed(categories, now, PROFILE_HALF_LIFE),
        "brands": decayed(brands, now, PROFILE_HALF_LIFE),
        "price_level": level,
        "session": reference_session(sessions[-1], len(sessions), now),
    }


# -- driving the product ----------------------------------------------------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def at_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def iso(ms: int) -> str:
    return (EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")


T0 = at_ms(START)


def sent(anonymous_id: str, start_ms: int, steps: list[tuple[int, dict[str, Any]]]) -> list[Sent]:
    """Events of one visitor: each step is (milliseconds since the previous event, the
    event); a negative gap sends an event out of order."""
    events: list[Sent] = []
    clock = start_ms
    for gap, body in steps:
        clock += gap
        events.append((clock, {**body, "anonymousId": anonymous_id, "timestamp": iso(clock)}))
    return events


async def ingest(engine: Engine, events: list[Sent], chunk: int = 500) -> None:
    for first in range(0, len(events), chunk):
        bodies = [event for _, event in events[first : first + chunk]]
        decoded = decode_body(json.dumps({"batch": bodies}).encode())
        assert decoded.errors == []
        result = await engine.pipeline.ingest(decoded.events)
        assert (result.accepted, result.duplicates) == (len(bodies), 0)


# The features of `ContextStage.describe(...)["session"]` compared as they are.
SESSION_FEATURES = (
    "number", "started", "last_seen", "time_on_site_ms", "events", "counts", "pages_viewed",
    "recent_pages", "max_scroll_depth", "recent_products", "price", "recent_searches", "cart",
    "checkout", "purchases", "revenue", "engagement", "signals", "evidence",
)  # fmt: skip


def product_view(engine: Engine, anonymous_id: str, now: int) -> dict[str, Any]:
    """The product's features, in the reference's shape."""
    profile = engine.context.lookup(anonymous_id)
    assert profile is not None
    assert profile.anonymous_ids == [anonymous_id]
    assert profile.user_ids == []
    described = engine.context.describe(profile, now)
    session = described["session"]
    assert session is not None
    # Affinities: every entry (describe lists the top ten only), decayed to `now`. (Maps a
    # session or profile never used may be None.)
    live = profile.session
    assert live is not None
    rules = engine.context.rules

    def scores(kept: dict[str, float] | None, base_ms: int, long_term: bool) -> dict[str, float]:
        decay = rules.affinity if long_term else rules.sessions.affinity
        return {key: decay.value(kept or {}, base_ms, key, now) for key in kept or {}}

    view = {key: described[key] for key in ("first_seen", "last_seen", "sessions", "counts")} | {
        "purchases": {
            key: described["purchases"][key]
            for key in ("count", "revenue", "average_order_value", "last", "categories")
        },
        "categories": scores(profile.categories, profile.affinity_base_ms, True),
        "brands": scores(profile.brands, profile.affinity_base_ms, True),
        "price_level": described["price_level"],
    }
    view["session"] = {key: session[key] for key in SESSION_FEATURES} | {
        "campaign": session["source"]["campaign"],
        "categories": scores(live.categories, live.affinity_base_ms, False),
        "brands": scores(live.brands, live.affinity_base_ms, False),
    }
    # What describe shows agrees with the raw entries: the top ten, strongest first.
    for shown, kept in (
        (session["categories"], live.categories),
        (session["brands"], live.brands),
        (described["categories"], profile.categories),
        (described["brands"], profile.brands),
    ):
        raw = kept or {}
        assert list(shown) == sorted(raw, key=lambda k: (-raw[k], k))[:10]
    return view


def differences(actual: Any, expected: Any, path: str = "") -> list[str]:
    """Where `actual` differs from `expected`; floats compare with a relative tolerance
    of 1e-9 and no absolute one (decayed scores can be tiny)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or set(actual) != set(expected):
            return [f"{path or '.'}: {actual!r} != {expected!r}"]
        return [d for k in expected for d in differences(actual[k], expected[k], f"{path}.{k}")]
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: {actual!r} != {expected!r}"]
        return [
            d for i, (a, e) in enumerate(zip(actual, expected, strict=True))
            for d in differences(a, e, f"{path}[{i}]")
        ]  # fmt: skip
    if isinstance(expected, float) and not isinstance(actual, bool):
        if isinstance(actual, int | float) and actual == pytest.approx(expected, rel=1e-9, abs=0):
            return []
        return [f"{path}: {actual!r} != {expected!r}"]
    if actual != expected or isinstance(actual, bool) != isinstance(expected, bool):
        return [f"{path}: {actual!r} != {expected!r}"]
    return []


# -- segment fields ---------------------------------------------------------------------------


def reference_fields(expected: dict[str, Any], now: int) -> dict[str, Any]:
    """What each segment field should read, from the reference (fields the reference does
    not model, such as geo, traits, consent and scores, are left out)."""
    session = expected["session"]
    purchases = expected["purchases"]
    signals = session["signals"]
    return {
        "session.events": session["events"],
        "session.pages": session["pages_viewed"],
        "session.time_on_site": session["time_on_site_ms"] / 1000,
        "session.product_views": session["counts"].get("Product Viewed", 0),
        "session.max_scroll": session["max_scroll_depth"],
        "session.cart.value": session["cart"]["value"],
        "session.cart.count": session["cart"]["count"],
        "session.cart.products": [item["product_id"] for item in session["cart"]["items"]],
        "session.checkout.stage": session["checkout"]["stage"],
        "session.purchases": session["purchases"],
        "session.revenue": session["revenue"],
        "session.exit_intent": signals["exit_intent"],
        "session.rage_clicks": signals["rage_clicks"],
        "session.back_and_forth": signals["back_and_forth"],
        "session.repeated_searches": signals["repeated_searches"],
        "session.long_help_stays": signals["long_help_stays"],
        "session.engagement": session["engagement"],
        "session.recent_products": session["recent_products"],
        "session.searches": session["recent_searches"],
        "session.price.min": session["price"]["min"],
        "session.price.max": session["price"]["max"],
        "session.price.median": session["price"]["median"],
        "session.source.campaign": session["campaign"],
        "session.evidence": session["evidence"],
        "profile.sessions": expected["sessions"],
        "profile.known": False,
        "profile.purchases.count": purchases["count"],
        "profile.purchases.revenue": purchases["revenue"],
        "profile.purchases.aov": purchases["average_order_value"],
        "profile.days_since_last_purchase": (
            (now - purchases["last"]) / DAY if purchases["last"] else None
        ),
        "profile.categories_bought": sorted(purchases["categories"]),
        "profile.price_level": expected["price_level"],
    }


# Fields ranked by decayed scores: compared with a tolerance for near-ties (below).
TOP_FIELDS = {
    "session.top_categories": ("session", "categories"),
    "session.top_brands": ("session", "brands"),
    "profile.top_categories": (None, "categories"),
    "profile.top_brands": (None, "brands"),
}


def is_top_three(shown: list[str], scores: dict[str, float]) -> bool:
    """Whether `shown` is the three strongest of `scores`, strongest first, allowing
    rounding differences between two ways of computing the same decayed score."""
    if len(shown) != min(3, len(scores)) or not set(shown) <= set(scores):
        return False
    slack = 1 + 1e-9
    ordered = all(scores[a] * slack >= scores[b] for a, b in itertools.pairwise(shown))
    weakest = min((scores[key] for key in shown), default=0.0)
    return ordered and all(scores[k] <= weakest * slack for k in scores if k not in shown)


CATALOG = FieldCatalog(ProfileRules(ContextSettings()))


def expressions_over_every_field() -> list[str]:
    """Tests of every kind over every field: the typed shortcuts fused evaluation takes
    must agree with the closures everywhere."""
    found: list[str] = []
    for field in CATALOG.describe():
        name, kind = field["name"], field["type"]
        if kind == "number":
            found += [f"{name} > 1", f"{name} == 0", f"{name} != 2", f"{name} <= 0.5",
                      f"{name} in [0, 1, 3]", f"{name} not in [1]", f"{name} - 1 > 0",
                      f"{name} / 2 < 1"]  # fmt: skip
        elif kind == "string":
            found += [f'{name} == "rapid"', f'{name} != "cart"', f'"a" in {name}',
                      f'{name} in ["deep", "browsing", "newsletter||spring"]',
                      f'{name} not in ["unknown"]', f'"i" not in {name}']  # fmt: skip
        elif kind == "list":
            found += [f'"p1" in {name}', f'"shoes" not in {name}', f"{name} == []",
                      f'{name} != ["p1"]']  # fmt: skip
        elif kind == "bool":
            found += [name, f"not {name}", f"{name} == true", f"{name} != false"]
        if field["nullable"]:
            found += [f"{name} == null", f"{name} != null"]
    return found


EVERY_FIELD = [(f"t{i}", compile_expression(e, CATALOG)) for i, e in
               enumerate(expressions_over_every_field())]  # fmt: skip
FUSED = fuse(EVERY_FIELD, CATALOG)


def check_segment_fields(profile: Profile, expected: dict[str, Any], now: int) -> None:
    """Segment fields read what the reference computed, and fused evaluation of tests over
    every field agrees with evaluating each on its own."""
    fields = {field["name"]: CATALOG.get(field["name"]) for field in CATALOG.describe()}
    read = {name: fields[name].get(profile, now) for name in reference_fields(expected, now)}  # type: ignore[union-attr]
    read["profile.categories_bought"] = sorted(read["profile.categories_bought"])
    found = differences(read, reference_fields(expected, now))
    for name, (horizon, kind) in TOP_FIELDS.items():
        source = expected["session"] if horizon else expected
        shown = fields[name].get(profile, now)  # type: ignore[union-attr]
        if not is_top_three(shown, source[kind]):
            found.append(f"{name}: {shown} are not the top three of {source[kind]}")
    assert not found, "segment fields != reference:\n  " + "\n  ".join(found)
    matched = [name for name, c in EVERY_FIELD if c.matches(profile, now)]
    everything = [name for name, _ in EVERY_FIELD]
    assert FUSED(profile, now, []) == matched
    assert FUSED(profile, now, everything) == [n for n in everything if n not in matched]


def compare(engine: Engine, events: list[Sent], now: int | None = None) -> dict[str, Any]:
    """Compare the product with the reference for one visitor's `events` (all ingested) at
    `now` (by default the latest event time); returns the product's view."""
    now = max(at for at, _ in events) if now is None else now
    actual = product_view(engine, events[0][1]["anonymousId"], now)
    expected = reference_profile(events, now)
    found = differences(actual, expected)
    assert not found, (
        "product != reference:\n  "
        + "\n  ".join(found)
        + "\nevents:\n"
        + "\n".join(f"  {at - events[0][0]:>+10} ms  {json.dumps(event)}" for at, event in events)
    )
    profile = engine.context.lookup(events[0][1]["anonymousId"])
    assert profile is not None
    check_segment_fields(profile, expected, now)
    return actual


async def check(
    engine: Engine, events: list[Sent], now: int | None = None, chunk: int = 500
) -> dict[str, Any]:
    """Ingest `events` (one new visitor's) and compare."""
    await ingest(engine, events, chunk)
    return compare(engine, events, now)


# -- events ---------------------------------------------------------------------------------


def track(name: str, **properties: Any) -> dict[str, Any]:
    return {"type": "track", "event": name, "properties": properties}


def page(path: str | None = None, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "page", **fields}
    if path is not None:
        event["context"] = {"page": {"path": path}}
    return event


def with_campaign(event: dict[str, Any], **campaign: str) -> dict[str, Any]:
    context = dict(event.get("context") or {})
    context["campaign"] = campaign
    return {**event, "context": context}


PRODUCTS = ("p1", "p2", "p3", "p4")
CATEGORIES = ("shoes", "bags", "hats")
BRANDS = ("acme", "zeta", "orbit")
PRICES = (0.0, 9.99, 19.5, 45.0, 120.0, 250.25)
QUERIES = (
    "running shoes", "Running  Shoes", "  running shoes ", "RED dress", "red\tdress",
    "hats", "gift card", "socks", "umbrella", "scarf",
)  # fmt: skip
PATHS = ("/", "/category/shoes", "/products/p1", "/help/returns", "/faq", "/shipping-info",
         "/contact", "/search")  # fmt: skip
PAGE_NAMES = ("Home", "Product", "Help Center")
TARGETS = ("#buy", "#menu")
CAMPAIGNS = ({"source": "newsletter", "name": "spring"}, {"source": "ads", "medium": "cpc"})

product = st.fixed_dictionaries(
    {"product_id": st.sampled_from(PRODUCTS)},
    optional={
        "category": st.sampled_from(CATEGORIES),
        "brand": st.sampled_from(BRANDS),
        "price": st.sampled_from(PRICES),
    },
)
line = st.fixed_dictionaries(
    {"product_id": st.sampled_from(PRODUCTS)},
    optional={
        "category": st.sampled_from(CATEGORIES),
        "price": st.sampled_from(PRICES),
        "quantity": st.integers(1, 3),
    },
)
added_product = st.fixed_dictionaries(
    {"product_id": st.sampled_from(PRODUCTS)},
    optional={
        "category": st.sampled_from(CATEGORIES),
        "brand": st.sampled_from(BRANDS),
        "price": st.sampled_from(PRICES),
        "quantity": st.integers(1, 3),
    },
)
lines = st.lists(line, max_size=3, unique_by=lambda item: item["product_id"])
maybe_lines = st.fixed_dictionaries({}, optional={"products": lines})
gap = st.one_of(
    *[st.sampled_from([100, 300, 650, 700, 701, 1_500])] * 4,  # clicks
    *[st.sampled_from([5 * SECOND, 9_999, 10 * SECOND, 29_999, 30 * SECOND, 45 * SECOND])] * 4,
    st.sampled_from([SESSION_TIMEOUT - 1, SESSION_TIMEOUT, SESSION_TIMEOUT + 1, 31 * MINUTE]),
    st.integers(100, 45 * MINUTE),
)
dwell = st.one_of(
    st.sampled_from([2 * SECOND, 9_999, 10 * SECOND, 29_999, 30 * SECOND, 44_999, 45 * SECOND]),
    st.integers(SECOND, 3 * MINUTE),
)
pages = st.one_of(
    st.builds(page, st.none() | st.sampled_from(PATHS), name=st.sampled_from(PAGE_NAMES)),
    st.builds(page, st.sampled_from(PATHS)),
    st.builds(page, st.sampled_from(PATHS)),
)
queries = st.sampled_from(QUERIES)
one_event = st.one_of(
    pages,
    product.map(lambda p: track("Product Viewed", **p)),
    product.map(lambda p: track("Product Viewed", **p)),
    queries.map(lambda q: track("Products Searched", query=q)),
    added_product.map(lambda p: track("Product Added", **p)),
    st.fixed_dictionaries(
        {"product_id": st.sampled_from(PRODUCTS)}, optional={"quantity": st.integers(1, 2)}
    ).map(lambda p: track("Product Removed", **p)),
    maybe_lines.map(lambda p: track("Cart Viewed", **p)),
    maybe_lines.map(lambda p: track("Checkout Started", **p)),
    st.fixed_dictionaries({}, optional={"step": st.integers(1, 3)}).map(
        lambda p: track("Checkout Step Viewed", **p)
    ),
    st.just(track("Payment Info Entered")),
    st.fixed_dictionaries(
        {"products": lines.filter(bool)},
        optional={"revenue": st.sampled_from([0.0, 59.9, 120.0]), "total": st.just(75.5)},
    ).map(lambda p: track("Order Completed", **p)),
    st.one_of(st.integers(-10, 120), st.floats(0, 100)).map(
        lambda d: track("Scroll Depth", depth=d)
    ),
    st.just(track("Exit Intent")),
    st.sampled_from(TARGETS).map(lambda t: track("Element Clicked", target=t)),
    st.just(track("Rage Click")),
)


@st.composite
def steps(draw: st.DrawFn) -> list[tuple[int, dict[str, Any]]]:
    """One visitor's events with the gaps before them, up to 60 of them."""
    out: list[tuple[int, dict[str, Any]]] = []
    for _ in range(draw(st.integers(1, 40))):
        choice = draw(st.integers(0, 11))
        if choice == 0:  # a burst of clicks on one target
            target = draw(st.sampled_from(TARGETS))
            for index in range(draw(st.integers(2, 5))):
                pause = draw(gap if index == 0 else st.sampled_from([100, 400, 700, 701, 900]))
                out.append((pause, track("Element Clicked", target=target)))
        elif choice == 1:  # A -> B -> A
            first, middle = draw(
                st.lists(st.sampled_from(PRODUCTS), min_size=2, max_size=2, unique=True)
            )
            for product_id in (first, middle, first):
                extra = draw(
                    st.fixed_dictionaries({}, optional={"category": st.sampled_from(CATEGORIES)})
                )
                out.append((draw(gap), track("Product Viewed", product_id=product_id, **extra)))
        elif choice in (2, 3):  # reading pages
            for _ in range(draw(st.integers(2, 6))):
                out.append((draw(dwell), draw(pages)))
        elif choice == 4:  # searching again and again
            for _ in range(draw(st.integers(2, 8))):
                out.append((draw(gap), track("Products Searched", query=draw(queries))))
        else:
            event = draw(one_event)
            if draw(st.integers(0, 39)) == 0:
                event = with_campaign(event, **draw(st.sampled_from(CAMPAIGNS)))
            out.append((draw(gap), event))
    return out[:60]


# -- the property ----------------------------------------------------------------------------


def search_window_matters(events: list[Sent]) -> bool:
    """Whether a repeated search in the last session is older than the last five searches
    (see test_a_search_repeated_after_five_others_is_still_a_repeat)."""
    queries = searches(split_sessions(events)[-1])
    return repeated(queries) != repeated(queries, RECENT_SEARCHES)


@settings(max_examples=40, deadline=None)
@given(steps(), st.sampled_from([0, 1, MINUTE, 2 * 60 * MINUTE]), st.integers(1, 60))
async def test_incremental_features_equal_a_computation_from_scratch(
    visit: list[tuple[int, dict[str, Any]]], later: int, chunk: int
) -> None:
    # A fresh engine for each example (about 80 ms): the example alone decides the result,
    # so a failure replays and shrinks.
    events = sent("visitor", T0, visit)
    assume(not search_window_matters(events))  # a known difference, tested below
    with tempfile.TemporaryDirectory() as directory:
        engine = Engine(make_settings(Path(directory)), clock=ManualClock(START))
        try:
            await check(engine, events, max(at for at, _ in events) + later, chunk)
        finally:
            engine.close()


# -- edge cases, by example ---------------------------------------------------------------------


async def test_a_31_minute_gap_starts_a_new_session_and_30_minutes_does_not(
    engine: Engine,
) -> None:
    events = sent(
        "gaps",
        T0,
        [
            (0, page("/")),
            (20 * SECOND, track("Product Viewed", product_id="p1", category="shoes", price=40)),
            (SESSION_TIMEOUT, page("/category/shoes")),  # exactly the timeout: same session
            (5 * SECOND, track("Product Added", product_id="p1", category="shoes", price=40)),
            (31 * MINUTE, page("/help/returns")),  # a new session
            (40 * SECOND, page("/")),
            (SESSION_TIMEOUT + 1, track("Product Viewed", product_id="p2", category="bags")),
        ],
    )
    view = await check(engine, events[:6])
    assert view["sessions"] == 2
    assert view["session"]["events"] == 2
    assert view["session"]["cart"]["items"] == []  # the cart was the other session's
    assert view["session"]["signals"]["long_help_stays"] == 1
    assert view["session"]["categories"] == {}
    assert view["categories"]["shoes"] == pytest.approx(4.0, rel=1e-3)  # 1 + 3, decayed
    await ingest(engine, events[6:])
    view = compare(engine, events, now=events[-1][0] + MINUTE)
    assert view["sessions"] == 3


async def test_a_page_left_open_longer_than_the_timeout_is_no_dwell(engine: Engine) -> None:
    """Between two page views, other events keep the session alive; a dwell over 30
    minutes is a pause, not reading (30 minutes exactly still counts)."""
    looking = track("Product Viewed", product_id="p1", category="shoes")
    events = sent(
        "idle-reader",
        T0,
        [
            (0, page("/help/returns")),
            (20 * MINUTE, looking),
            (10 * MINUTE, page("/faq")),  # 30 minutes after the help page: a long stay
            (20 * MINUTE, looking),
            (10 * MINUTE + 1, page("/")),  # a pause
            (5 * SECOND, page("/search")),
        ],
    )
    view = await check(engine, events)
    assert view["sessions"] == 1
    assert view["session"]["signals"]["long_help_stays"] == 1
    assert view["session"]["signals"]["help_time_ms"] == SESSION_TIMEOUT
    assert view["session"]["engagement"] == "deep"  # dwells 30 min and 5 s (not 30 min + 1)


async def test_a_new_campaign_starts_a_new_session_mid_visit(engine: Engine) -> None:
    spring = {"source": "newsletter", "name": "spring"}
    ads = {"source": "ads", "medium": "cpc", "name": "brand"}
    events = sent(
        "campaigns",
        T0,
        [
            (0, page("/")),
            (10 * SECOND, track("Product Viewed", product_id="p1", category="shoes")),
            (10 * SECOND, with_campaign(page("/category/bags"), **spring)),  # new session
            (10 * SECOND, track("Product Viewed", product_id="p2", category="bags")),
            (10 * SECOND, with_campaign(page("/products/p2"), **spring)),  # same campaign
            (10 * SECOND, with_campaign(page("/products/p3"), medium="email")),  # no campaign
            (10 * SECOND, track("Product Added", product_id="p2", category="bags")),
            (10 * SECOND, with_campaign(page("/products/p4"), **ads)),  # another: new session
            (10 * SECOND, track("Product Viewed", product_id="p4", category="hats")),
        ],
    )
    view = await check(engine, events[:7])
    assert view["sessions"] == 2
    assert view["session"]["counts"] == {"page": 3, "Product Viewed": 1, "Product Added": 1}
    await ingest(engine, events[7:])
    view = compare(engine, events)
    assert view["sessions"] == 3
    assert set(view["session"]["categories"]) == {"hats"}


async def test_events_out_of_order_within_a_session(engine: Engine) -> None:
    """Late events (a retried beacon, a mobile batch) carry their own times: the gap to the
    next event, the decay of their interest and the dwell times all use those times."""
    events = sent(
        "shuffled",
        T0,
        [
            (0, page("/")),
            (5 * MINUTE, page("/help/returns")),
            (-4 * MINUTE, track("Product Viewed", product_id="p1", category="shoes", price=10)),
            (6 * MINUTE, page("/category/shoes")),  # 2 minutes after the help page
            (-10 * SECOND, track("Element Clicked", target="#buy")),
            (300, track("Element Clicked", target="#buy")),
            (300, track("Element Clicked", target="#buy")),
            (29 * MINUTE, track("Product Viewed", product_id="p2", category="bags", price=30)),
        ],
    )
    view = await check(engine, events)  # (the first event is the earliest: see below)
    assert view["sessions"] == 1
    assert view["session"]["signals"]["long_help_stays"] == 1
    assert view["session"]["signals"]["rage_clicks"] == 1


async def test_an_event_older_than_the_session_start_moves_the_start(engine: Engine) -> None:
    events = sent(
        "early",
        T0,
        [
            (0, page("/products/p1")),
            (-3 * SECOND, track("Product Viewed", product_id="p1", category="shoes")),
            (20 * SECOND, page("/")),
        ],
    )
    view = await check(engine, events)
    assert view["session"]["started"] == T0 - 3 * SECOND


async def test_a_late_event_joins_the_live_session_whatever_its_time(engine: Engine) -> None:
    """Log order decides which session an event joins: one that arrives after a new
    session began belongs to that session even when its own time is older than the
    timeout (the earlier session is over and is not reopened). Its interest still decays
    from its own time."""
    events = sent(
        "late",
        T0,
        [
            (0, track("Product Viewed", product_id="p1", category="shoes")),
            (60 * MINUTE, track("Product Viewed", product_id="p2", category="bags")),
            (-59 * MINUTE, track("Product Added", product_id="p1", category="shoes")),
            (59 * MINUTE + SECOND, page("/")),
        ],
    )
    await ingest(engine, events)
    now = events[-1][0]
    view = product_view(engine, "late", now)
    expected = reference_profile(events, now)
    assert view["sessions"] == expected["sessions"] == 2
    assert view["session"]["counts"] == expected["session"]["counts"]
    assert view["session"]["categories"] == pytest.approx(
        expected["session"]["categories"], rel=1e-9
    )
    assert view["session"]["cart"] == expected["session"]["cart"]


async def test_a_search_repeated_after_five_others_is_still_a_repeat(engine: Engine) -> None:
    queries = ["boots", "socks", "hats", "gloves", "scarf", "belt", "Boots "]
    events = sent(
        "searcher", T0, [(10 * SECOND, track("Products Searched", query=q)) for q in queries]
    )
    view = await check(engine, events)
    assert view["session"]["signals"]["repeated_searches"] == 1


async def test_a_blank_query_is_no_search(engine: Engine) -> None:
    events = sent(
        "blank",
        T0,
        [
            (0, track("Products Searched", query="  ")),
            (SECOND, track("Products Searched", query=" \t ")),
        ],
    )
    view = await check(engine, events)
    assert view["session"]["recent_searches"] == []


async def test_a_page_path_sent_as_a_property_counts(engine: Engine) -> None:
    events = sent(
        "server-side",
        T0,
        [
            (0, {"type": "page", "properties": {"path": "/help/returns"}}),
            (40 * SECOND, {"type": "page", "properties": {"path": "/"}}),
        ],
    )
    view = await check(engine, events)
    assert view["session"]["signals"]["long_help_stays"] == 1


async def test_help_words_inside_other_words_are_not_help_pages(engine: Engine) -> None:
    events = sent(
        "reader",
        T0,
        [
            (0, page("/blog/helpful-gift-ideas")),
            (2 * MINUTE, page("/collections/contactless-cards")),
            (2 * MINUTE, page("/")),
        ],
    )
    view = await check(engine, events)
    assert view["session"]["signals"]["help_time_ms"] == 0


async def test_event_times_keep_their_millisecond_after_2038(engine: Engine) -> None:
    # 2039-07-18T11:01:13.601Z: timestamp() * 1000 is 2194599673600.9998.
    first = at_ms(datetime(2039, 7, 18, 10, 31, 13, 600_000, tzinfo=UTC))
    events = sent("future", first, [(0, page("/")), (SESSION_TIMEOUT + 1, page("/"))])
    view = await check(engine, events)
    assert view["sessions"] == 2
