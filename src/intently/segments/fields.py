"""The fields segment expressions may read: a closed list, each with a type, the topics of
change it depends on, and how to read it.

Nothing outside this list is reachable from an expression: there is no attribute access,
only these names. `profile.traits.<name>` is the one open family; traits are free-form,
so their type is `any` (a comparison with the wrong type is simply false).

How a field is read is written once, as a small Python expression over `p` (the profile),
`s` (its live session; session fields are read only when there is one, else their
`default`) and `n` (now, in epoch milliseconds), calling helpers from `HELPERS` by their
`h_` names. The same text becomes the field's getter (for evaluating one segment) and is
inlined into fused evaluation (`fused.py`), so both read exactly the same value. These
templates are this module's own code; nothing of an expression's text is ever in them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from intently.context.facts import CHECKOUT_STAGES, Facts
from intently.context.profile import Profile, ProfileRules
from intently.context.session import Session, cart_value, engagement, median_of

Type = Literal["number", "string", "bool", "list", "any", "null"]
Getter = Callable[[Profile, int], Any]

# Topics: what an event can change. A segment is re-evaluated only after events that
# touch a topic it reads. Each topic is one bit, so an event's topics are one int.
ACTIVITY = "activity"  # any event: counts, times
_TOPIC_NAMES = ("activity", "pages", "products", "cart", "purchases", "search", "signals",
                "where", "identity", "traits", "consent", "session")  # fmt: skip
TOPICS = frozenset(_TOPIC_NAMES)
TOPIC_BITS = {name: 1 << index for index, name in enumerate(_TOPIC_NAMES)}
ALL_TOPICS = (1 << len(_TOPIC_NAMES)) - 1
_ACTIVITY, _PAGES, _PRODUCTS, _CART, _PURCHASES, _SEARCH, _SIGNALS, _WHERE, _IDENTITY, \
    _TRAITS, _CONSENT, _SESSION = (TOPIC_BITS[name] for name in _TOPIC_NAMES)  # fmt: skip
SESSION_BOUNDARY = _SESSION


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: Type
    nullable: bool
    topics: frozenset[str]
    get: Getter
    doc: str
    # How to read it, as Python source (see the module docstring); None: call `get`.
    source: str | None = None
    # For session fields: the source of the value when there is no live session.
    default: str | None = None


def topics_changed(facts: Facts, new_profile: bool, new_session: bool) -> int:
    """The topics an event may have changed, as a mask of `TOPIC_BITS`: everything for a
    new profile; the session fields when a session begins; and what the event touches."""
    if new_profile:
        return ALL_TOPICS
    topics = _ACTIVITY
    if new_session:
        topics |= _SESSION
    if facts.kind in ("page", "screen"):
        topics |= _PAGES
    if facts.product is not None:
        topics |= _PRODUCTS
    if facts.added or facts.removed or facts.cart is not None or facts.checkout_stage:
        topics |= _CART
    if facts.order_revenue is not None:
        topics |= _PURCHASES
    if facts.query is not None:
        topics |= _SEARCH
    if facts.exit_intent or facts.rage_click or facts.click_target or facts.scroll_depth:
        topics |= _SIGNALS
    if facts.country is not None or facts.device is not None or facts.local_hour is not None:
        topics |= _WHERE
    if facts.user_id is not None or facts.previous_id is not None:
        topics |= _IDENTITY
    if facts.traits:
        topics |= _TRAITS
    if facts.consent:
        topics |= _CONSENT
    return topics


def top_keys(scores: dict[str, float] | None, count: int) -> list[str]:
    """The `count` strongest keys of decayed scores, strongest first, ties by key. All
    entries share one base time, so the order of the raw values is the order at any time
    (see `context/decay.py`): no decay needs computing to rank them."""
    if not scores:
        return []
    if len(scores) == 1:
        return list(scores)
    # Keys ascending, then a stable sort by score descending: ties stay by key.
    return sorted(sorted(scores), key=scores.__getitem__, reverse=True)[:count]


def _cart_count(session: Session) -> int:
    cart = session.cart
    return sum(line.quantity for line in cart) if cart else 0


def _cart_products(session: Session) -> list[str]:
    cart = session.cart
    return [line.product_id for line in cart] if cart else []


def _stage(session: Session) -> str:
    return CHECKOUT_STAGES[session.checkout_stage]


def _keys(mapping: dict[str, Any] | None) -> list[str]:
    return list(mapping or ())


# What field sources may call, by name. Pure functions of their arguments.
HELPERS: dict[str, Any] = {
    "h_top3": partial(top_keys, count=3),
    "h_median": median_of,
    "h_cart_value": cart_value,
    "h_cart_count": _cart_count,
    "h_cart_products": _cart_products,
    "h_stage": _stage,
    "h_engagement": engagement,
    "h_keys": _keys,
}


class FieldCatalog:
    """Every readable field, built for one set of profile rules (for decay settings)."""

    def __init__(self, rules: ProfileRules) -> None:
        self.rules = rules
        self._fields: dict[str, Field] = {}
        # Helpers bound to these rules, added to `HELPERS` for this catalog's fields.
        self.helpers: dict[str, Any] = dict(HELPERS)
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
        self, name: str, type_: Type, topics: str, source: str, doc: str, *,
        nullable: bool = False, default: str | None = None,
    ) -> None:  # fmt: skip
        getter = _getter(source, default, self.helpers)
        self._fields[name] = Field(
            name, type_, nullable, frozenset(topics.split()), getter, doc, source, default
        )

    def _session(
        self, name: str, type_: Type, topics: str, source: str, default: str, doc: str, *,
        nullable: bool = False,
    ) -> None:  # fmt: skip
        # Every session field also changes when a session starts or ends.
        self._add(name, type_, topics + " session", source, doc, nullable=nullable,
                  default=default)  # fmt: skip

    def _build(self) -> None:
        rules = self.rules
        self.helpers["h_propensity"] = lambda p, n: rules.scores(p, n)["purchase_propensity"][
            "value"
        ]
        self.helpers["h_churn"] = lambda p, n: rules.scores(p, n)["churn_risk"]["value"]
        for purpose in ("analytics", "personalization", "marketing"):
            self.helpers[f"h_consent_{purpose}"] = _consent(rules, purpose)

        def top(scores: str) -> str:  # no call at all for no scores (most reads)
            return f"(h_top3({scores}) if {scores} else [])"

        s = self._session
        s("session.events", "number", ACTIVITY, "s.events", "0", "events this session")
        s("session.pages", "number", "pages", "s.pages", "0", "pages viewed this session")
        s("session.time_on_site", "number", ACTIVITY, "(s.last_ms - s.start_ms) / 1000", "0",
          "seconds from the session's first event to its last")  # fmt: skip
        s("session.product_views", "number", "products", "s.counts.get('Product Viewed', 0)",
          "0", "products viewed this session")  # fmt: skip
        s("session.max_scroll", "number", "signals", "s.max_scroll", "0", "max scroll depth %")
        cart = "cart purchases"
        s("session.cart.value", "number", cart, "h_cart_value(s)", "0.0", "cart value")
        s("session.cart.count", "number", cart, "h_cart_count(s)", "0", "items in the cart")
        s("session.cart.products", "list", cart, "h_cart_products(s)", "[]",
          "product ids in the cart")  # fmt: skip
        s("session.checkout.stage", "string", cart, "h_stage(s)", "'browsing'",
          "browsing, cart, checkout, shipping, payment or purchased")  # fmt: skip
        s("session.purchases", "number", "purchases", "s.purchases", "0", "orders this session")
        s("session.revenue", "number", "purchases", "s.revenue", "0.0", "revenue this session")
        s("session.exit_intent", "bool", "signals", "s.exit_intent", "False", "exit intent seen")
        s("session.rage_clicks", "number", "signals", "s.rage_clicks", "0", "rage clicks")
        s("session.back_and_forth", "number", "products", "s.back_and_forth", "0",
          "returns to a product just compared with a similar one")  # fmt: skip
        s("session.repeated_searches", "number", "search", "s.repeated_searches", "0",
          "searches repeating an earlier one")  # fmt: skip
        s("session.long_help_stays", "number", "pages", "s.long_help_stays", "0",
          "long stays on shipping/returns/help pages")  # fmt: skip
        s("session.engagement", "string", "pages", "h_engagement(s)", "'unknown'",
          "rapid, steady, deep or unknown")  # fmt: skip
        # Lists are handed out as held: expressions only test membership, never mutate.
        s("session.recent_products", "list", "products", "s.products", "[]",
          "the last product ids viewed")  # fmt: skip
        s("session.searches", "list", "search", "(s.searches or [])", "[]", "recent queries")
        s("session.top_categories", "list", "products cart purchases", top("s.categories"),
          "[]", "the 3 categories with the highest session affinity")  # fmt: skip
        s("session.top_brands", "list", "products cart", top("s.brands"), "[]",
          "the 3 brands with the highest session affinity")  # fmt: skip
        s("session.price.min", "number", "products", "s.price_min", "None",
          "lowest price viewed", nullable=True)  # fmt: skip
        s("session.price.max", "number", "products", "s.price_max", "None",
          "highest price viewed", nullable=True)  # fmt: skip
        s("session.price.median", "number", "products", "h_median(s.prices)", "None",
          "median of recent viewed prices", nullable=True)  # fmt: skip
        s("session.source.medium", "string", "session", "s.medium", "None",
          "search, social, email, paid, referral, internal or direct", nullable=True)  # fmt: skip
        s("session.source.campaign", "string", "session", "s.campaign", "None",
          "source|medium|name of the UTM campaign", nullable=True)  # fmt: skip
        s("session.evidence", "number", "products cart search", "s.evidence", "0.0",
          "weighted interest events this session")  # fmt: skip
        for alias, attribute, doc in (
            ("geo.country", "country", "ISO country code"),
            ("geo.region", "region", "region name"),
            ("geo.city", "city", "city name"),
            ("device.type", "device", "desktop, mobile, tablet, bot or other"),
            ("local.hour", "local_hour", "hour of day where the visitor is (0-23)"),
            ("local.weekday", "weekday", "0 Monday ... 6 Sunday, where the visitor is"),
        ):
            kind: Type = "number" if alias.startswith("local.") else "string"
            s(alias, kind, "where", "s." + attribute, "None", doc, nullable=True)
        p = self._add
        p("profile.sessions", "number", "session", "p.sessions", "sessions so far")
        p("profile.known", "bool", "identity", "(p.user_ids != [])", "has a userId")
        p("profile.purchases.count", "number", "purchases", "p.purchases", "orders")
        p("profile.purchases.revenue", "number", "purchases", "p.revenue", "revenue")
        p("profile.purchases.aov", "number", "purchases",
          "(p.revenue / p.purchases if p.purchases else None)", "average order value",
          nullable=True)  # fmt: skip
        p("profile.days_since_last_purchase", "number", ACTIVITY,
          "((n - p.last_purchase_ms) / 86400000 if p.last_purchase_ms else None)",
          "days since the last order", nullable=True)  # fmt: skip
        p("profile.categories_bought", "list", "purchases", "h_keys(p.categories_bought)",
          "categories ever bought")  # fmt: skip
        p("profile.top_categories", "list", "products cart purchases", top("p.categories"),
          "the 3 categories with the highest long-term affinity")  # fmt: skip
        p("profile.top_brands", "list", "products cart purchases", top("p.brands"),
          "the 3 brands with the highest long-term affinity")  # fmt: skip
        p("profile.price_level", "number", "products purchases", "p.price_level",
          "long-term average price seen", nullable=True)  # fmt: skip
        p("profile.scores.purchase_propensity", "number", "activity", "h_propensity(p, n)",
          "0-1, transparent purchase propensity")  # fmt: skip
        p("profile.scores.churn_risk", "number", "activity", "h_churn(p, n)", "0-1 churn risk")
        for purpose in ("analytics", "personalization", "marketing"):
            p(f"profile.consent.{purpose}", "bool", "consent", f"h_consent_{purpose}(p)",
              f"consent for {purpose}")  # fmt: skip


def read_source(field: Field) -> str:
    """One expression reading `field` from `p`, `s` and `n` (`s` may be None)."""
    assert field.source is not None
    if field.default is None:
        return field.source
    return f"({field.source} if s is not None else {field.default})"


def _getter(source: str, default: str | None, helpers: dict[str, Any]) -> Getter:
    field = Field("", "any", True, frozenset(), _unread, "", source, default)
    text = f"def get(p, n):\n    s = p.session\n    return {read_source(field)}\n"
    namespace: dict[str, Any] = {"__builtins__": {}, **helpers}
    exec(compile(text, "<field>", "exec"), namespace)  # noqa: S102 - this module's own text
    getter: Getter = namespace["get"]
    return getter


def _unread(_profile: Profile, _now: int) -> Any:  # pragma: no cover - never called
    raise AssertionError("a placeholder getter")


def _trait(name: str) -> Getter:
    def read(profile: Profile, _: int) -> Any:
        return profile.traits.get(name) if profile.traits else None

    return read


def _consent(rules: ProfileRules, purpose: str) -> Callable[[Profile], bool]:
    def read(profile: Profile) -> bool:
        return rules.consents(profile, purpose)

    return read
