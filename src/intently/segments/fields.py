"""The fields segment expressions may read: a closed list, each with a type, a getter and
the topics of change it depends on.

Nothing outside this list is reachable from an expression: there is no attribute access,
only these names. `profile.traits.<name>` is the one open family; traits are free-form,
so their type is `any` (a comparison with the wrong type is simply false).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from statistics import median
from typing import Any, Literal

from intently.context.facts import CHECKOUT_STAGES, Facts
from intently.context.profile import Profile, ProfileRules
from intently.context.session import Session, cart_value, engagement

Type = Literal["number", "string", "bool", "list", "any", "null"]
Getter = Callable[[Profile, int], Any]

# Topics: what an event can change. A segment is re-evaluated only after events that
# touch a topic it reads.
ACTIVITY = "activity"  # any event: counts, times
TOPICS = frozenset(
    {ACTIVITY, "pages", "products", "cart", "purchases", "search", "signals", "where",
     "identity", "traits", "consent", "session"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: Type
    nullable: bool
    topics: frozenset[str]
    get: Getter
    doc: str


SESSION_BOUNDARY = frozenset({"session"})


def topics_changed(facts: Facts, new_profile: bool, new_session: bool) -> frozenset[str]:
    """The topics an event may have changed: everything for a new profile; the session
    fields when a session begins; and what the event itself touches."""
    if new_profile:
        return TOPICS
    topics = [ACTIVITY]
    if new_session:
        topics.append("session")
    if facts.kind in ("page", "screen"):
        topics.append("pages")
    if facts.product is not None:
        topics.append("products")
    if facts.added or facts.removed or facts.cart is not None or facts.checkout_stage:
        topics.append("cart")
    if facts.order_revenue is not None:
        topics.append("purchases")
    if facts.query is not None:
        topics.append("search")
    if facts.exit_intent or facts.rage_click or facts.click_target or facts.scroll_depth:
        topics.append("signals")
    if facts.country is not None or facts.device is not None or facts.local_hour is not None:
        topics.append("where")
    if facts.user_id is not None or facts.previous_id is not None:
        topics.append("identity")
    if facts.traits:
        topics.append("traits")
    if facts.consent:
        topics.append("consent")
    return frozenset(topics)


class FieldCatalog:
    """Every readable field, built for one set of profile rules (for decay settings)."""

    def __init__(self, rules: ProfileRules) -> None:
        self.rules = rules
        self._fields: dict[str, Field] = {}
        self._build()

    def get(self, name: str) -> Field | None:
        found = self._fields.get(name)
        if found is None and name.startswith("profile.traits."):
            trait = name.removeprefix("profile.traits.")
            if trait:
                return Field(name, "any", True, frozenset({"traits"}), _trait(trait), "a trait")
        return found

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"name": f.name, "type": f.type, "nullable": f.nullable, "doc": f.doc}
            for f in sorted(self._fields.values(), key=lambda f: f.name)
        ]

    def _add(
        self,
        name: str,
        type_: Type,
        topics: str,
        get: Getter,
        doc: str,
        *,
        nullable: bool = False,
    ) -> None:
        self._fields[name] = Field(name, type_, nullable, frozenset(topics.split()), get, doc)

    def _session(
        self,
        name: str,
        type_: Type,
        topics: str,
        get: Callable[[Session, int], Any],
        default: Any,
        doc: str,
        *,
        nullable: bool = False,
    ) -> None:
        def read(profile: Profile, now: int) -> Any:
            session = profile.session
            return default if session is None else get(session, now)

        # Every session field also changes when a session starts or ends.
        self._add("session." + name, type_, topics + " session", read, doc, nullable=nullable)

    def _build(self) -> None:
        rules = self.rules
        sessions = rules.sessions
        s = self._session
        s("events", "number", ACTIVITY, lambda x, _: x.events, 0, "events this session")
        s("pages", "number", "pages", lambda x, _: x.pages, 0, "pages viewed this session")
        s("time_on_site", "number", ACTIVITY, lambda x, _: (x.last_ms - x.start_ms) / 1000, 0,
          "seconds from the session's first event to its last")  # fmt: skip
        s("product_views", "number", "products",
          lambda x, _: x.counts.get("Product Viewed", 0), 0,
          "products viewed this session")  # fmt: skip
        s("max_scroll", "number", "signals", lambda x, _: x.max_scroll, 0, "max scroll depth %")
        cart = "cart purchases"
        s("cart.value", "number", cart, lambda x, _: cart_value(x), 0.0, "cart value")
        s("cart.count", "number", cart, lambda x, _: sum(li.quantity for li in x.cart or ()), 0,
          "items in the cart")  # fmt: skip
        s("cart.products", "list", cart, lambda x, _: [li.product_id for li in x.cart or ()], [],
          "product ids in the cart")  # fmt: skip
        s("checkout.stage", "string", cart, lambda x, _: CHECKOUT_STAGES[x.checkout_stage],
          "browsing", "browsing, cart, checkout, shipping, payment or purchased")  # fmt: skip
        s("purchases", "number", "purchases", lambda x, _: x.purchases, 0, "orders this session")
        s("revenue", "number", "purchases", lambda x, _: x.revenue, 0.0, "revenue this session")
        s("exit_intent", "bool", "signals", lambda x, _: x.exit_intent, False, "exit intent seen")
        s("rage_clicks", "number", "signals", lambda x, _: x.rage_clicks, 0, "rage clicks")
        s("back_and_forth", "number", "products", lambda x, _: x.back_and_forth, 0,
          "returns to a product just compared with a similar one")  # fmt: skip
        s("repeated_searches", "number", "search", lambda x, _: x.repeated_searches, 0,
          "searches repeating an earlier one")  # fmt: skip
        s("long_help_stays", "number", "pages", lambda x, _: x.long_help_stays, 0,
          "long stays on shipping/returns/help pages")  # fmt: skip
        s("engagement", "string", "pages", lambda x, _: engagement(x), "unknown",
          "rapid, steady, deep or unknown")  # fmt: skip
        s("recent_products", "list", "products", lambda x, _: list(x.products), [],
          "the last product ids viewed")  # fmt: skip
        s("searches", "list", "search", lambda x, _: list(x.searches or ()), [], "recent queries")
        top_of = sessions.affinity.top
        s("top_categories", "list", "products cart purchases",
          lambda x, now: _keys(top_of(x.categories or {}, x.affinity_base_ms, now, 3)),
          [], "the 3 categories with the highest session affinity")  # fmt: skip
        s("top_brands", "list", "products cart",
          lambda x, now: _keys(top_of(x.brands or {}, x.affinity_base_ms, now, 3)),
          [], "the 3 brands with the highest session affinity")  # fmt: skip
        s("price.min", "number", "products", lambda x, _: x.price_min, None, "lowest price viewed",
          nullable=True)  # fmt: skip
        s("price.max", "number", "products", lambda x, _: x.price_max, None,
          "highest price viewed", nullable=True)  # fmt: skip
        s("price.median", "number", "products", lambda x, _: median(x.prices) if x.prices else None,
          None, "median of recent viewed prices", nullable=True)  # fmt: skip
        s("source.medium", "string", "session", lambda x, _: x.medium, None,
          "search, social, email, paid, referral, internal or direct", nullable=True)  # fmt: skip
        s("source.campaign", "string", "session", lambda x, _: x.campaign, None,
          "source|medium|name of the UTM campaign", nullable=True)  # fmt: skip
        s("evidence", "number", "products cart search", lambda x, _: x.evidence, 0.0,
          "weighted interest events this session")  # fmt: skip
        where = "where"
        for alias, attribute, doc in (
            ("geo.country", "country", "ISO country code"),
            ("geo.region", "region", "region name"),
            ("geo.city", "city", "city name"),
            ("device.type", "device", "desktop, mobile, tablet, bot or other"),
            ("local.hour", "local_hour", "hour of day where the visitor is (0-23)"),
            ("local.weekday", "weekday", "0 Monday ... 6 Sunday, where the visitor is"),
        ):
            kind: Type = "number" if alias.startswith("local.") else "string"
            self._add(
                alias, kind, where + " session", _session_attribute(attribute), doc, nullable=True
            )
        p = self._add
        p("profile.sessions", "number", "session", lambda x, _: x.sessions, "sessions so far")
        p("profile.known", "bool", "identity", lambda x, _: bool(x.user_ids), "has a userId")
        p("profile.purchases.count", "number", "purchases", lambda x, _: x.purchases, "orders")
        p("profile.purchases.revenue", "number", "purchases", lambda x, _: x.revenue, "revenue")
        p("profile.purchases.aov", "number", "purchases",
          lambda x, _: x.revenue / x.purchases if x.purchases else None,
          "average order value", nullable=True)  # fmt: skip
        p("profile.days_since_last_purchase", "number", ACTIVITY,
          lambda x, now: (now - x.last_purchase_ms) / 86_400_000 if x.last_purchase_ms else None,
          "days since the last order", nullable=True)  # fmt: skip
        p("profile.categories_bought", "list", "purchases",
          lambda x, _: list(x.categories_bought or ()), "categories ever bought")  # fmt: skip
        long_top = rules.affinity.top
        p("profile.top_categories", "list", "products cart purchases",
          lambda x, now: _keys(long_top(x.categories or {}, x.affinity_base_ms, now, 3)),
          "the 3 categories with the highest long-term affinity")  # fmt: skip
        p("profile.top_brands", "list", "products cart purchases",
          lambda x, now: _keys(long_top(x.brands or {}, x.affinity_base_ms, now, 3)),
          "the 3 brands with the highest long-term affinity")  # fmt: skip
        p("profile.price_level", "number", "products purchases", lambda x, _: x.price_level,
          "long-term average price seen", nullable=True)  # fmt: skip
        p("profile.scores.purchase_propensity", "number", "activity",
          lambda x, now: rules.scores(x, now)["purchase_propensity"]["value"],
          "0-1, transparent purchase propensity")  # fmt: skip
        p("profile.scores.churn_risk", "number", "activity",
          lambda x, now: rules.scores(x, now)["churn_risk"]["value"], "0-1 churn risk")  # fmt: skip
        for purpose in ("analytics", "personalization", "marketing"):
            p(f"profile.consent.{purpose}", "bool", "consent",
              _consent(rules, purpose), f"consent for {purpose}")  # fmt: skip


def _keys(items: list[tuple[str, float]]) -> list[str]:
    return [key for key, _ in items]


def _session_attribute(attribute: str) -> Getter:
    def read(profile: Profile, _: int) -> Any:
        session = profile.session
        return None if session is None else getattr(session, attribute)

    return read


def _trait(name: str) -> Getter:
    def read(profile: Profile, _: int) -> Any:
        return profile.traits.get(name) if profile.traits else None

    return read


def _consent(rules: ProfileRules, purpose: str) -> Getter:
    def read(profile: Profile, _: int) -> Any:
        return rules.consents(profile, purpose)

    return read
