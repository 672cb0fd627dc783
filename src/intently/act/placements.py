"""Placements: the places on a page (or in a message) where a decision is made.

A placement declares where its candidates come from (offers of some kinds, or items from
a recommender), the business rules that apply to them (include, exclude, pin, boost,
bury; each optionally only for visitors matching a segment or an expression), the policy
that chooses, how many to show, the fallback that answers when deciding fails or
overruns its deadline, and what counts as its reward.

Definitions come from three places, later ones replacing earlier ones of the same id:
the starter configuration shipped with intently (five placements that work as soon as a
catalog is loaded), the operator's YAML file (`placements:` mapping ids to definitions),
and the API (`PUT /v1/placements/{id}`, kept in the data dir).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from intently.act.templates import MAX_TEMPLATE, Template, compile_template, default_template
from intently.catalog.offers import OfferKind
from intently.configfile import ConfigError, read_mapping, save_atomically
from intently.context.profile import Profile
from intently.events.schema import Id, Name
from intently.learn.rewards import RewardKind
from intently.segments.fields import FieldCatalog
from intently.segments.lang import ExpressionError, compile_expression

PolicyName = Literal[
    "linucb", "lin-thompson", "beta-thompson", "epsilon-greedy", "rules-first", "slate"
]
# Where a widget's items come from (see act/candidates.py for what each blends).
Recommender = Literal[
    "for_you", "similar", "cart", "order", "recently_viewed", "trending", "popular", "catalog"
]
RuleAction = Literal["include", "exclude", "pin", "boost", "bury"]
MAX_COUNT = 50
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class PolicySpec(Struct, forbid_unknown_fields=True, omit_defaults=True):
    name: PolicyName
    # Exploration: the floor every eligible action keeps (share of the probability).
    floor: Annotated[float, Meta(gt=0, le=1)] = 0.05
    epsilon: Annotated[float, Meta(gt=0, le=1)] = 0.1
    alpha: Annotated[float, Meta(ge=0, le=100)] = 1.0
    draws: Annotated[int, Meta(ge=10, le=10_000)] = 200
    dimensions: Annotated[int, Meta(ge=2, le=1024)] = 32
    temperature: Annotated[float, Meta(gt=0, le=100)] = 0.1
    priority: list[Id] = msgspec.field(default_factory=list)  # rules-first: best first


class CatalogQuery(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Items matching all that is given: any of the categories (anywhere in the item's
    category path), brands and tags, within the price range."""

    categories: list[Name] = msgspec.field(default_factory=list)
    brands: list[Name] = msgspec.field(default_factory=list)
    tags: list[Name] = msgspec.field(default_factory=list)
    min_price: Annotated[float, Meta(ge=0)] | None = None
    max_price: Annotated[float, Meta(ge=0)] | None = None


class RuleSpec(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One business rule. It applies to the candidates named in `items` or matching
    `match`, for visitors in `segment` and matching `when` (both optional)."""

    action: RuleAction
    items: list[Id] = msgspec.field(default_factory=list)
    match: CatalogQuery | None = None
    segment: Name | None = None
    when: Annotated[str, Meta(max_length=2048)] | None = None
    amount: Annotated[float, Meta(ge=0, le=1000)] = 1.0  # boost / bury, in score units
    description: Annotated[str, Meta(max_length=500)] | None = None


class PlacementSpec(Struct, forbid_unknown_fields=True, omit_defaults=True):
    kind: Literal["offers", "items"]
    policy: PolicySpec
    count: Annotated[int, Meta(ge=1, le=MAX_COUNT)] = 1
    offer_kinds: list[OfferKind] = msgspec.field(default_factory=list)  # offers: all if empty
    # offers: a content set, these offers only (still open and eligible); all if empty.
    offers: list[Id] = msgspec.field(default_factory=list)
    recommender: Recommender = "for_you"  # items
    query: CatalogQuery | None = None  # items: only these
    rules: Annotated[list[RuleSpec], Meta(max_length=100)] = msgspec.field(default_factory=list)
    # Default content: these ids, in order. Empty: popular items, or the first open offer
    # without an eligibility rule.
    fallback: list[Id] = msgspec.field(default_factory=list)
    deadline_ms: Annotated[float, Meta(gt=0, le=10_000)] = 20.0
    reward: RewardKind = "click"
    # A share of visitors who get the default content here, to measure the placement's
    # lift (experiments/assign.py).
    holdout: Annotated[float, Meta(ge=0, lt=1)] = 0.0
    description: Annotated[str, Meta(max_length=500)] | None = None
    # How the browser tag and the render endpoint show a decision (act/templates.py);
    # the starter template of the placement's kind when not given.
    template: Annotated[str, Meta(max_length=MAX_TEMPLATE)] | None = None


Condition = Callable[[Profile | None, int], bool]


@dataclass(frozen=True)
class Rule:
    spec: RuleSpec
    applies_to: Callable[[Profile | None, int], bool]  # the visitor condition
    reason: str


@dataclass(frozen=True)
class Placement:
    id: str
    spec: PlacementSpec
    source: str  # "starter", "config" or "api"
    rules: tuple[Rule, ...]
    version: str  # changes whenever the definition does
    policy_key: bytes  # the policy's definition: learned state is kept while it is equal
    template: Template

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id,
            "source": self.source,
            "version": self.version,
            **msgspec.to_builtins(self.spec),
        }


def _always(profile: Profile | None, now_ms: int) -> bool:
    return True


def _condition(spec: RuleSpec, catalog: FieldCatalog, where: str) -> Condition:
    checks: list[Condition] = []
    if spec.segment is not None:
        segment = spec.segment
        checks.append(lambda p, _: p is not None and segment in p.segments)
    if spec.when is not None:
        try:
            matches = compile_expression(spec.when, catalog).matches
        except ExpressionError as error:
            raise ConfigError(f"{where}.when: {error}") from None
        # A visitor the engine has not seen yet has no session: conditions on it fail.
        checks.append(lambda p, now: p is not None and matches(p, now))
    if not checks:
        return _always
    return lambda profile, now_ms: all(check(profile, now_ms) for check in checks)


def _reason(spec: RuleSpec) -> str:
    if spec.description:
        return spec.description
    who = []
    if spec.segment:
        who.append(f"segment {spec.segment}")
    if spec.when:
        who.append(f"when {spec.when}")
    return f"rule: {spec.action}" + (f" for {' and '.join(who)}" if who else "")


def prepare(
    placement_id: str, spec: PlacementSpec, source: str, catalog: FieldCatalog
) -> Placement:
    """Check and compile a definition; raises `ConfigError` naming the field."""
    if not _ID.match(placement_id):
        raise ConfigError(f"placement id {placement_id!r} must match {_ID.pattern}")
    if spec.kind == "offers" and spec.policy.name == "slate":
        raise ConfigError("policy: 'slate' ranks items; offers take a bandit policy")
    if spec.kind == "items" and spec.policy.name != "slate":
        raise ConfigError("policy: item widgets are ranked by the 'slate' policy")
    rules = tuple(
        Rule(rule, _condition(rule, catalog, f"rules/{i}"), _reason(rule))
        for i, rule in enumerate(spec.rules)
    )
    for i, rule in enumerate(spec.rules):
        if not rule.items and rule.match is None:
            raise ConfigError(f"rules/{i}: name the candidates it applies to (items or match)")
    template = compile_template(spec.template or default_template(spec.kind, spec.offer_kinds))
    digest = hashlib.blake2b(msgspec.json.encode(spec), digest_size=4).hexdigest()
    policy_key = msgspec.json.encode(spec.policy)
    return Placement(placement_id, spec, source, rules, digest, policy_key, template)


def _policy(name: PolicyName, **options: object) -> PolicySpec:
    return msgspec.convert({"name": name, **options}, PolicySpec)


# The starter configuration: what a shop needs on day one.
STARTER: dict[str, PlacementSpec] = {
    "home_hero": PlacementSpec(
        kind="offers", offer_kinds=["banner"], count=1, policy=_policy("linucb"),
        description="The home page's hero banner: one banner, chosen by LinUCB over the "
        "visitor's context.",
    ),
    "pdp_recs": PlacementSpec(
        kind="items", recommender="similar", count=8, policy=_policy("slate"),
        description="Product page recommendations, given the product being viewed.",
    ),
    "cart_recs": PlacementSpec(
        kind="items", recommender="cart", count=4, policy=_policy("slate"), reward="add_to_cart",
        description="Cart recommendations: bought and viewed together with the cart.",
    ),
    "exit_intent_offer": PlacementSpec(
        kind="offers", offer_kinds=["discount", "message"], count=1,
        policy=_policy("beta-thompson"), reward="conversion",
        description="Shown when the visitor is about to leave: a retention offer.",
    ),
    "confirmation_offer": PlacementSpec(
        kind="offers", offer_kinds=["cta", "discount", "message"], count=1,
        policy=_policy("epsilon-greedy"),
        description="The transaction moment: an offer on the order confirmation page.",
    ),
}  # fmt: skip


class PlacementRegistry:
    def __init__(self, catalog: FieldCatalog, data_dir: Path, config_file: Path | None) -> None:
        self.catalog = catalog
        self._api_file = data_dir / "placements.json"
        self._placements: dict[str, Placement] = {
            pid: prepare(pid, spec, "starter", catalog) for pid, spec in STARTER.items()
        }
        self._defaults = dict(self._placements)  # what an API definition replaced
        if config_file is not None:
            self._load_config(config_file)
            self._defaults = dict(self._placements)
        if self._api_file.exists():
            stored = msgspec.json.decode(self._api_file.read_bytes(), type=dict[str, PlacementSpec])
            for pid, spec in stored.items():
                self._placements[pid] = prepare(pid, spec, "api", catalog)

    def __iter__(self) -> Iterator[Placement]:
        return iter(list(self._placements.values()))

    def __len__(self) -> int:
        return len(self._placements)

    def get(self, placement_id: str) -> Placement | None:
        return self._placements.get(placement_id)

    def define(self, placement_id: str, spec: PlacementSpec) -> Placement:
        """Add or replace a placement by API; raises `ConfigError` (nothing changes)."""
        placement = prepare(placement_id, spec, "api", self.catalog)
        self._placements[placement_id] = placement
        self._save()
        return placement

    def delete(self, placement_id: str) -> bool:
        """Remove an API definition; the starter or configured one it replaced, if any,
        answers again. False when there is no API definition of that id."""
        current = self._placements.get(placement_id)
        if current is None or current.source != "api":
            return False
        default = self._defaults.get(placement_id)
        if default is None:
            del self._placements[placement_id]
        else:
            self._placements[placement_id] = default
        self._save()
        return True

    def _save(self) -> None:
        api = {p.id: p.spec for p in self._placements.values() if p.source == "api"}
        save_atomically(self._api_file, api)

    def _load_config(self, path: Path) -> None:
        for pid, value in read_mapping(path, "placements", "placements").items():
            if not isinstance(pid, str):
                raise ConfigError(f"{path}: placement id {pid!r} must be text")
            try:
                spec = msgspec.convert(value, PlacementSpec)
                self._placements[pid] = prepare(pid, spec, "config", self.catalog)
            except msgspec.ValidationError as exc:
                raise ConfigError(f"{path}: placement {pid!r}: {exc}") from None
            except ConfigError as exc:
                raise ConfigError(f"{path}: placement {pid!r}: {exc}") from None
