"""The live session: what this visit shows about the visitor's intent, updated per event.

Every list and map is bounded (see `ContextSettings`), so a session costs about the same
whether it saw ten events or ten thousand. Times are event times (milliseconds), so a
replay of history builds the same sessions as live traffic did.
"""

from __future__ import annotations

import zlib
from statistics import median
from sys import intern
from typing import Any

from msgspec import Struct, field

from intently.context.decay import DecayedScores
from intently.context.facts import CHECKOUT_STAGES, Facts, Line
from intently.context.settings import ContextSettings

# How much each kind of interest counts towards affinities and session evidence.
VIEW_WEIGHT = 1.0
CART_WEIGHT = 3.0
PURCHASE_WEIGHT = 5.0
SEARCH_WEIGHT = 1.0
# Distinct queries remembered per session to tell a repeated search.
_SEARCH_MEMORY = 64
# Dwell between two page views longer than this is a pause, not reading.
_MAX_DWELL_MS = 30 * 60_000


class Session(Struct, gc=False, kw_only=True):
    """Containers that most sessions never fill are None until used: an empty list or
    dict costs 56-64 bytes, and there are a hundred thousand live sessions."""

    number: int
    start_ms: int
    last_ms: int
    events: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    pages: int = 0
    recent_pages: list[str] | None = None
    max_scroll: float = 0.0
    products: list[str] = field(default_factory=list)
    # The categories of `products`, index for index; None until one is known.
    product_categories: list[str | None] | None = None
    affinity_base_ms: int = 0
    categories: dict[str, float] | None = None
    brands: dict[str, float] | None = None
    prices: list[float] | None = None
    price_min: float | None = None
    price_max: float | None = None
    searches: list[str] | None = None
    searched: list[int] | None = None  # checksums of the session's distinct queries
    repeated_searches: int = 0
    cart: list[Line] | None = None
    checkout_stage: int = 0
    checkout_step: int | None = None
    purchases: int = 0
    revenue: float = 0.0
    dwells: list[int] | None = None
    last_page_ms: int | None = None
    last_page_help: bool = False
    help_ms: int = 0
    long_help_stays: int = 0
    exit_intent: bool = False
    rage_clicks: int = 0
    click_target: str | None = None
    click_ms: int = 0
    click_run: int = 0
    back_and_forth: int = 0
    evidence: float = 0.0
    campaign: str | None = None
    medium: str | None = None
    source: str | None = None
    device: str | None = None
    country: str | None = None
    region: str | None = None
    city: str | None = None
    local_hour: int | None = None
    weekday: int | None = None


class SessionRules:
    """Starts, updates, merges and describes sessions under one set of settings."""

    def __init__(self, settings: ContextSettings) -> None:
        self.settings = settings
        self.affinity = DecayedScores(settings.session_half_life_ms, settings.max_affinities)

    def is_over(self, session: Session, facts: Facts) -> bool:
        """Whether `facts` begin a new session: inactivity, or a new campaign."""
        if facts.at_ms - session.last_ms > self.settings.session_timeout_ms:
            return True
        return facts.campaign is not None and facts.campaign != session.campaign

    def start(self, facts: Facts, number: int) -> Session:
        return Session(
            number=number,
            start_ms=facts.at_ms,
            last_ms=facts.at_ms,
            affinity_base_ms=facts.at_ms,
            campaign=_interned(facts.campaign),
            medium=_interned(facts.medium),
            source=_interned(facts.source),
        )

    def apply(self, session: Session, facts: Facts, *, personal: bool) -> None:
        """Update `session` with one event. Without `personal` (no personalization
        consent) only counts and times move: nothing about interests is kept."""
        settings = self.settings
        at = facts.at_ms
        session.events += 1
        count_kind(session.counts, facts.kind, settings.max_counts)
        is_page = facts.kind in ("page", "screen")
        if is_page:
            session.pages += 1
        if at > session.last_ms:
            session.last_ms = at
        elif at < session.start_ms:  # late, out-of-order: the session began earlier
            session.start_ms = at
        if not personal:
            return
        # Kept strings are interned (a handful of values shared by every session), when
        # they change: most events repeat what the session already holds.
        if facts.device is not None and facts.device != session.device:
            session.device = intern(facts.device)
        if facts.country is not None and (
            facts.country != session.country
            or facts.region != session.region
            or facts.city != session.city
        ):
            session.country = intern(facts.country)
            session.region, session.city = _interned(facts.region), _interned(facts.city)
        if facts.local_hour is not None:
            session.local_hour, session.weekday = facts.local_hour, facts.weekday
        if is_page:
            self._page(session, facts)
        if facts.product is not None:
            self._viewed(session, facts.product, facts.brand, at)
        if facts.query is not None:
            searches = session.searches
            if searches is None:
                searches = session.searches = []
            _push(searches, facts.query, settings.recent_searches)
            # Repeats are found among many more queries than are kept to show: a
            # stable checksum of each (Python's str hash changes between runs).
            fingerprint = zlib.crc32(facts.query.encode())
            seen = session.searched
            if seen is None:
                seen = session.searched = []
            if fingerprint in seen:
                session.repeated_searches += 1
            else:
                _push(seen, fingerprint, _SEARCH_MEMORY)
            session.evidence += SEARCH_WEIGHT
        if facts.added is not None:
            self._add_to_cart(session, facts.added, facts.brand, at)
        if facts.removed is not None and session.cart:
            _remove_from_cart(session.cart, facts.removed)
        if facts.cart is not None:
            session.cart = facts.cart[: settings.max_cart_lines]
        if facts.checkout_step is not None:
            session.checkout_step = facts.checkout_step
        if facts.checkout_stage > session.checkout_stage:
            session.checkout_stage = facts.checkout_stage
        if facts.order_revenue is not None:
            self._purchased(session, facts, at)
        if facts.scroll_depth is not None and facts.scroll_depth > session.max_scroll:
            session.max_scroll = facts.scroll_depth
        if facts.exit_intent:
            session.exit_intent = True
        if facts.rage_click:
            session.rage_clicks += 1
        if facts.click_target is not None:
            self._clicked(session, facts.click_target, at)

    def _page(self, session: Session, facts: Facts) -> None:
        settings = self.settings
        if session.last_page_ms is not None:
            dwell = facts.at_ms - session.last_page_ms
            if 0 <= dwell <= _MAX_DWELL_MS:
                if session.dwells is None:
                    session.dwells = []
                _push(session.dwells, dwell, settings.recent_dwells)
                if session.last_page_help:
                    session.help_ms += dwell
                    if dwell >= settings.long_help_stay_ms:
                        session.long_help_stays += 1
        session.last_page_ms = facts.at_ms
        session.last_page_help = facts.help_page
        if facts.page_path is not None:
            if session.recent_pages is None:
                session.recent_pages = []
            _push(session.recent_pages, facts.page_path, settings.recent_pages)

    def _viewed(self, session: Session, product: Line, brand: str | None, at: int) -> None:
        settings = self.settings
        products, categories = session.products, session.product_categories
        # A -> B -> A between two products alike (same category, or unknown): comparing.
        if len(products) >= 2 and products[-2] == product.product_id != products[-1]:
            previous = categories[-1] if categories else None
            if previous is None or product.category is None or previous == product.category:
                session.back_and_forth += 1
        _push(products, product.product_id, settings.recent_products)
        if categories is None and product.category is not None:
            categories = session.product_categories = [None] * (len(products) - 1)
        if categories is not None:
            _push(categories, product.category, settings.recent_products)
        if product.price is not None:
            self._price(session, product.price)
        self._interest(session, product.category, brand, VIEW_WEIGHT, at)

    def _price(self, session: Session, price: float) -> None:
        if session.prices is None:
            session.prices = []
        _push(session.prices, price, self.settings.recent_prices)
        if session.price_min is None or price < session.price_min:
            session.price_min = price
        if session.price_max is None or price > session.price_max:
            session.price_max = price

    def _interest(
        self, session: Session, category: str | None, brand: str | None, weight: float, at: int
    ) -> None:
        session.evidence += weight
        self.affinity.add(session, category, brand, weight, at)

    def _add_to_cart(self, session: Session, line: Line, brand: str | None, at: int) -> None:
        if session.cart is None:
            session.cart = []
        for held in session.cart:
            if held.product_id == line.product_id:
                held.quantity += line.quantity
                if line.price is not None:
                    held.price = line.price
                break
        else:
            if len(session.cart) < self.settings.max_cart_lines:
                session.cart.append(Line(line.product_id, line.quantity, line.price, line.category))
        self._interest(session, line.category, brand, CART_WEIGHT, at)

    def _purchased(self, session: Session, facts: Facts, at: int) -> None:
        session.purchases += 1
        session.revenue += facts.order_revenue or 0.0
        session.cart = None
        for line in facts.order_lines or ():
            self._interest(session, line.category, None, PURCHASE_WEIGHT, at)

    def _clicked(self, session: Session, target: str, at: int) -> None:
        settings = self.settings
        if (
            target == session.click_target
            and 0 <= at - session.click_ms <= settings.rage_click_gap_ms
        ):
            session.click_run += 1
        else:
            session.click_target, session.click_run = target, 1
        session.click_ms = at
        if session.click_run == settings.rage_click_count:
            session.rage_clicks += 1

    def merge(self, into: Session, other: Session) -> None:
        """Fold `other` (the same person's session on another device) into `into`."""
        settings = self.settings
        first, second = (other, into) if other.last_ms <= into.last_ms else (into, other)
        into.start_ms = min(into.start_ms, other.start_ms)
        into.last_ms = max(into.last_ms, other.last_ms)
        into.events += other.events
        for kind, count in other.counts.items():
            count_kind(into.counts, kind, settings.max_counts, count)
        into.pages += other.pages
        into.max_scroll = max(into.max_scroll, other.max_scroll)
        # Recent lists: the session active last contributes the most recent entries.
        into.recent_pages = _joined_optional(
            first.recent_pages, second.recent_pages, settings.recent_pages
        )
        # Categories first: `_categories` reads the lengths of the unmerged product lists.
        if first.product_categories is None and second.product_categories is None:
            into.product_categories = None
        else:
            into.product_categories = _joined(
                _categories(first), _categories(second), settings.recent_products
            )
        into.products = _joined(first.products, second.products, settings.recent_products)
        into.prices = _joined_optional(first.prices, second.prices, settings.recent_prices)
        into.searches = _joined_optional(first.searches, second.searches, settings.recent_searches)
        into.searched = _joined_optional(first.searched, second.searched, _SEARCH_MEMORY)
        into.dwells = _joined_optional(first.dwells, second.dwells, settings.recent_dwells)
        into.price_min = _min(into.price_min, other.price_min)
        into.price_max = _max(into.price_max, other.price_max)
        self.affinity.merge(into, other)
        for line in other.cart or ():
            self._add_to_cart_quietly(into, line)
        into.checkout_stage = max(into.checkout_stage, other.checkout_stage)
        into.checkout_step = second.checkout_step or first.checkout_step
        into.purchases += other.purchases
        into.revenue += other.revenue
        into.help_ms += other.help_ms
        into.long_help_stays += other.long_help_stays
        into.repeated_searches += other.repeated_searches
        into.exit_intent = into.exit_intent or other.exit_intent
        into.rage_clicks += other.rage_clicks
        into.back_and_forth += other.back_and_forth
        into.evidence += other.evidence
        for name in ("campaign", "medium", "source", "device", "country", "region", "city",
                     "local_hour", "weekday"):  # fmt: skip
            if getattr(second, name) is not None:
                setattr(into, name, getattr(second, name))

    def _add_to_cart_quietly(self, session: Session, line: Line) -> None:
        if session.cart is None:
            session.cart = []
        for held in session.cart:
            if held.product_id == line.product_id:
                held.quantity += line.quantity
                return
        if len(session.cart) < self.settings.max_cart_lines:
            session.cart.append(Line(line.product_id, line.quantity, line.price, line.category))

    def describe(self, session: Session, now_ms: int) -> dict[str, Any]:
        """The session's features, as the API and segments see them."""
        prices = session.prices or []
        cart = session.cart or []
        top = self.affinity.top
        return {
            "number": session.number,
            "started": session.start_ms,
            "last_seen": session.last_ms,
            "time_on_site_ms": session.last_ms - session.start_ms,
            "events": session.events,
            "counts": dict(session.counts),
            "pages_viewed": session.pages,
            "recent_pages": list(session.recent_pages or ()),
            "max_scroll_depth": session.max_scroll,
            "recent_products": list(session.products),
            "categories": dict(top(session.categories or {}, session.affinity_base_ms, now_ms, 10)),
            "brands": dict(top(session.brands or {}, session.affinity_base_ms, now_ms, 10)),
            "price": {
                "min": session.price_min,
                "max": session.price_max,
                "median": median(prices) if prices else None,
            },
            "recent_searches": list(session.searches or ()),
            "cart": {
                "items": [
                    {
                        "product_id": line.product_id,
                        "quantity": line.quantity,
                        "price": line.price,
                        "category": line.category,
                    }
                    for line in cart
                ],
                "count": sum(line.quantity for line in cart),
                "value": cart_value(session),
            },
            "checkout": {
                "stage": CHECKOUT_STAGES[session.checkout_stage],
                "step": session.checkout_step,
            },
            "purchases": session.purchases,
            "revenue": session.revenue,
            "engagement": engagement(session),
            "signals": {
                "exit_intent": session.exit_intent,
                "rage_clicks": session.rage_clicks,
                "back_and_forth": session.back_and_forth,
                "repeated_searches": session.repeated_searches,
                "long_help_stays": session.long_help_stays,
                "help_time_ms": session.help_ms,
            },
            "source": {
                "medium": session.medium,
                "source": session.source,
                "campaign": session.campaign,
            },
            "device": session.device,
            "geo": {"country": session.country, "region": session.region, "city": session.city},
            "local_time": {"hour": session.local_hour, "weekday": session.weekday},
            "evidence": session.evidence,
        }


def median_of(values: list[float] | None) -> float | None:
    """The median (the mean of the middle two for an even count), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def cart_value(session: Session) -> float:
    cart = session.cart
    if not cart:
        return 0.0
    return sum((line.price or 0.0) * line.quantity for line in cart)


def engagement(session: Session) -> str:
    """`rapid` browsing (pages a few seconds apart), `deep` reading, `steady` between, or
    `unknown` before two page-to-page dwell times are known."""
    dwells = session.dwells
    if dwells is None or len(dwells) < 2:
        return "unknown"
    typical = median(dwells)
    if typical < 10_000:
        return "rapid"
    if typical >= 45_000:
        return "deep"
    return "steady"


def count_kind(
    counts: dict[str, int], kind: str, bound: int, amount: int = 1, *, lump: bool = True
) -> None:
    """Add `amount` to `counts[kind]`, keeping at most `bound` names: beyond it, a new name
    is lumped into "(other)" (`lump`) or not counted."""
    held = counts.get(kind)
    if held is not None:
        counts[kind] = held + amount
    elif len(counts) < bound:
        counts[intern(kind)] = amount  # a new key: shared with every other owner's
    elif lump:
        counts["(other)"] = counts.get("(other)", 0) + amount


def _interned(text: str | None) -> str | None:
    return None if text is None else intern(text)


def _push(items: list[Any], item: Any, bound: int) -> None:
    items.append(item)
    if len(items) > bound:
        del items[0]


def _joined(first: list[Any], second: list[Any], bound: int) -> list[Any]:
    return (first + second)[-bound:]


def _joined_optional(
    first: list[Any] | None, second: list[Any] | None, bound: int
) -> list[Any] | None:
    if not first:
        return second
    if not second:
        return first
    return (first + second)[-bound:]


def _categories(session: Session) -> list[str | None]:
    held = session.product_categories
    return held if held is not None else [None] * len(session.products)


def _remove_from_cart(cart: list[Line], line: Line) -> None:
    for index, held in enumerate(cart):
        if held.product_id == line.product_id:
            held.quantity -= line.quantity
            if held.quantity <= 0:
                del cart[index]
            return


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)
