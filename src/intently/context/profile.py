"""The long-term profile: one person across sessions and devices, updated with every event
together with the live session it holds.
"""

from __future__ import annotations

import math
from typing import Any

from msgspec import Struct, field

from intently.context.decay import DecayedScores
from intently.context.facts import Facts
from intently.context.session import (
    CART_WEIGHT,
    PURCHASE_WEIGHT,
    VIEW_WEIGHT,
    Session,
    SessionRules,
    count_kind,
    median_of,
)
from intently.context.settings import DAY_MS, ContextSettings

PURPOSES = ("analytics", "personalization", "marketing")
# Long-term price level: an exponential moving average of the prices seen.
_PRICE_ALPHA = 0.1
# Without two sessions to measure from, a visitor is expected back within a month.
_DEFAULT_RETURN_MS = 30 * DAY_MS


class SegmentChange(Struct, frozen=True, array_like=True, gc=False):
    """A profile entered or left a segment at `at_ms`, because of the event at log
    position `seq` (0 when a definition changed). The store keeps these durably; the
    profile itself holds only the names of its current segments."""

    profile_id: str
    segment: str
    entered: bool
    at_ms: int
    seq: int


class Profile(Struct, gc=False, kw_only=True):
    id: str
    user_ids: list[str] = field(default_factory=list)
    anonymous_ids: list[str] = field(default_factory=list)
    first_ms: int
    last_ms: int
    sessions: int = 0
    # Sum of the gaps between session starts, and the last start: for churn risk.
    session_gap_ms: int = 0
    session_start_ms: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    purchases: int = 0
    revenue: float = 0.0
    last_purchase_ms: int | None = None
    categories_bought: dict[str, int] | None = None
    affinity_base_ms: int = 0
    categories: dict[str, float] | None = None
    brands: dict[str, float] | None = None
    price_level: float | None = None
    traits: dict[str, Any] | None = None
    # purpose -> [granted, when it was said]; absent purposes follow the default.
    consent: dict[str, tuple[bool, int]] | None = None
    session: Session | None = None
    # The segments the profile is in (entries and exits, with times, are in the store).
    segments: list[str] = field(default_factory=list)

    @property
    def known(self) -> bool:
        return bool(self.user_ids)


class ProfileRules:
    """Updates, merges and describes profiles (and the sessions they hold)."""

    def __init__(self, settings: ContextSettings) -> None:
        self.settings = settings
        self.sessions = SessionRules(settings)
        self.affinity = DecayedScores(settings.profile_half_life_ms, settings.max_affinities)
        self._personal_by_default = "personalization" in settings.default_consent

    def new(self, profile_id: str, at_ms: int) -> Profile:
        return Profile(id=profile_id, first_ms=at_ms, last_ms=at_ms, affinity_base_ms=at_ms)

    def consents(self, profile: Profile, purpose: str) -> bool:
        said = profile.consent.get(purpose) if profile.consent else None
        return purpose in self.settings.default_consent if said is None else said[0]

    def personalizes(self, profile: Profile) -> bool:
        """`consents(profile, "personalization")`, fast for a profile that said nothing."""
        if profile.consent is None:
            return self._personal_by_default
        return self.consents(profile, "personalization")

    def apply(self, profile: Profile, facts: Facts) -> None:
        """Update `profile` and its live session with one event."""
        at = facts.at_ms
        if facts.consent:
            consent = profile.consent
            if consent is None:
                consent = profile.consent = {}
            for purpose, granted in facts.consent.items():
                if purpose in PURPOSES:
                    held = consent.get(purpose)
                    if held is None or held[1] <= at:
                        consent[purpose] = (granted, at)
        personal = self.personalizes(profile)
        if at < profile.first_ms:
            profile.first_ms = at
        if at > profile.last_ms:
            profile.last_ms = at
        count_kind(profile.counts, facts.kind, self.settings.max_counts, lump=False)
        session = profile.session
        if session is None or self.sessions.is_over(session, facts):
            if profile.session_start_ms is not None:
                profile.session_gap_ms += max(0, at - profile.session_start_ms)
            profile.session_start_ms = at
            profile.sessions += 1
            session = self.sessions.start(facts, profile.sessions)
            profile.session = session
        self.sessions.apply(session, facts, personal=personal)
        if facts.order_revenue is not None:
            profile.purchases += 1
            profile.revenue += facts.order_revenue
            profile.last_purchase_ms = max(profile.last_purchase_ms or at, at)
        if not personal:
            return
        if facts.traits:
            self._traits(profile, facts.traits)
        if facts.product is not None:
            self.affinity.add(profile, facts.product.category, facts.brand, VIEW_WEIGHT, at)
            if facts.product.price is not None:
                self._price(profile, facts.product.price)
        if facts.added is not None:
            self.affinity.add(profile, facts.added.category, facts.brand, CART_WEIGHT, at)
        for line in facts.order_lines or ():
            self.affinity.add(profile, line.category, None, PURCHASE_WEIGHT, at)
            if line.category is not None:
                bought = profile.categories_bought
                if bought is None:
                    bought = profile.categories_bought = {}
                if line.category in bought or len(bought) < self.settings.max_affinities:
                    bought[line.category] = bought.get(line.category, 0) + line.quantity
            if line.price is not None:
                self._price(profile, line.price)

    def _traits(self, profile: Profile, traits: dict[str, Any]) -> None:
        held = profile.traits
        if held is None:
            held = profile.traits = {}
        for key, value in traits.items():
            if key in held or len(held) < self.settings.max_traits:
                held[key] = value

    def _price(self, profile: Profile, price: float) -> None:
        level = profile.price_level
        profile.price_level = price if level is None else level + _PRICE_ALPHA * (price - level)

    def record_segment(
        self, profile: Profile, segment: str, entered: bool, at_ms: int, seq: int
    ) -> SegmentChange:
        if entered:
            profile.segments.append(segment)
        else:
            profile.segments.remove(segment)
        return SegmentChange(profile.id, segment, entered, at_ms, seq)

    def end_session(self, profile: Profile) -> None:
        """Drop the live session (it idled out); everything it taught the profile stays."""
        profile.session = None

    def merge(self, into: Profile, other: Profile) -> None:
        """Fold `other` into `into`: nothing of either is lost."""
        into.user_ids.extend(i for i in other.user_ids if i not in into.user_ids)
        into.anonymous_ids.extend(i for i in other.anonymous_ids if i not in into.anonymous_ids)
        into.first_ms = min(into.first_ms, other.first_ms)
        into.last_ms = max(into.last_ms, other.last_ms)
        into.sessions += other.sessions
        into.session_gap_ms += other.session_gap_ms
        into.session_start_ms = _latest(into.session_start_ms, other.session_start_ms)
        for kind, count in other.counts.items():
            into.counts[kind] = into.counts.get(kind, 0) + count
        into.purchases += other.purchases
        into.revenue += other.revenue
        if other.last_purchase_ms is not None:
            into.last_purchase_ms = max(into.last_purchase_ms or 0, other.last_purchase_ms)
        if other.categories_bought:
            bought = into.categories_bought = into.categories_bought or {}
            for category, count in other.categories_bought.items():
                bought[category] = bought.get(category, 0) + count
        self.affinity.merge(into, other)
        if into.price_level is None:
            into.price_level = other.price_level
        elif other.price_level is not None:
            into.price_level = (into.price_level + other.price_level) / 2
        if other.traits:
            traits = into.traits = into.traits or {}
            for key, value in other.traits.items():  # the known profile's traits win
                traits.setdefault(key, value)
        if other.consent:
            consent = into.consent = into.consent or {}
            for purpose, said in other.consent.items():  # the latest word per purpose wins
                held = consent.get(purpose)
                if held is None or held[1] < said[1]:
                    consent[purpose] = said
        # Segments are not carried over: the merged profile is re-evaluated at once, and
        # the absorbed one leaves its segments' counts (its history follows it).
        if other.session is not None:
            if into.session is None:
                into.session = other.session
            else:
                self.sessions.merge(into.session, other.session)

    # -- reading --------------------------------------------------------------------------

    def scores(self, profile: Profile, now_ms: int) -> dict[str, Any]:
        """Transparent scores, each with the terms that make it (a model can replace
        them later; these must stay explainable)."""
        session = profile.session
        terms = {
            "bias": -3.0,
            "past_purchases": 1.2 * math.log1p(profile.purchases),
            "cart": 1.0 if session is not None and session.cart else 0.0,
            "checkout": 0.6 * (session.checkout_stage if session is not None else 0),
            "engagement": 0.3 * math.log1p(session.evidence) if session is not None else 0.0,
            "struggle": -0.4 * _struggles(session) if session is not None else 0.0,
        }
        propensity = _logistic(sum(terms.values()))
        expected_return = (
            profile.session_gap_ms / (profile.sessions - 1)
            if profile.sessions > 1 and profile.session_gap_ms > 0
            else _DEFAULT_RETURN_MS
        )
        idle = max(0, now_ms - profile.last_ms)
        churn = 1.0 - 2.0 ** (-idle / expected_return)
        return {
            "purchase_propensity": {"value": propensity, "terms": terms},
            "churn_risk": {
                "value": churn,
                "idle_ms": idle,
                "expected_return_ms": expected_return,
            },
        }

    def blended(self, profile: Profile, now_ms: int) -> dict[str, Any]:
        """Interest today: session and profile affinities, each normalized, weighted by
        `w = e / (e + pivot)` where `e` is the session's evidence. A profile with a long
        history of premium purchases that spends this session on budget gifts is, today,
        mostly a budget gift shopper."""
        session = profile.session
        evidence = session.evidence if session is not None else 0.0
        weight = evidence / (evidence + self.settings.blend_pivot)
        session_rules = self.sessions
        blended: dict[str, dict[str, float]] = {}
        for name in ("categories", "brands"):
            long_term = _normalized(
                self.affinity.top(
                    getattr(profile, name) or {}, profile.affinity_base_ms, now_ms, 20
                )
            )
            short_term = (
                _normalized(
                    session_rules.affinity.top(
                        getattr(session, name) or {}, session.affinity_base_ms, now_ms, 20
                    )
                )
                if session is not None
                else {}
            )
            mixed = {
                key: weight * short_term.get(key, 0.0) + (1 - weight) * long_term.get(key, 0.0)
                for key in short_term.keys() | long_term.keys()
            }
            blended[name] = dict(sorted(mixed.items(), key=lambda kv: (-kv[1], kv[0]))[:10])
        session_price = median_of(session.prices) if session is not None else None
        if session_price is None:
            price = profile.price_level
        elif profile.price_level is None:
            price = session_price
        else:
            price = weight * session_price + (1 - weight) * profile.price_level
        return {"session_weight": weight, **blended, "price": price}

    def describe(self, profile: Profile, now_ms: int) -> dict[str, Any]:
        top = self.affinity.top
        session = profile.session
        return {
            "id": profile.id,
            "user_ids": list(profile.user_ids),
            "anonymous_ids": list(profile.anonymous_ids),
            "first_seen": profile.first_ms,
            "last_seen": profile.last_ms,
            "sessions": profile.sessions,
            "counts": dict(profile.counts),
            "purchases": {
                "count": profile.purchases,
                "revenue": profile.revenue,
                "average_order_value": (
                    profile.revenue / profile.purchases if profile.purchases else None
                ),
                "last": profile.last_purchase_ms,
                "categories": dict(profile.categories_bought or {}),
            },
            "categories": dict(top(profile.categories or {}, profile.affinity_base_ms, now_ms, 10)),
            "brands": dict(top(profile.brands or {}, profile.affinity_base_ms, now_ms, 10)),
            "price_level": profile.price_level,
            "traits": dict(profile.traits or {}),
            "consent": {p: self.consents(profile, p) for p in PURPOSES},
            "scores": self.scores(profile, now_ms),
            "blended": self.blended(profile, now_ms),
            "session": None if session is None else self.sessions.describe(session, now_ms),
        }


def _logistic(z: float) -> float:
    """1 / (1 + e^-z), without overflowing for a large negative z (thousands of rage
    clicks make the struggle term that large)."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _latest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _struggles(session: Session) -> int:
    return (
        session.rage_clicks
        + session.repeated_searches
        + session.long_help_stays
        + session.back_and_forth
    )


def _normalized(items: list[tuple[str, float]]) -> dict[str, float]:
    total = sum(value for _, value in items)
    return {key: value / total for key, value in items} if total > 0 else {}
