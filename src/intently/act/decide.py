"""Deciding: for each placement asked, what this visitor sees now, why, and with what
probability; then learning from what they do next.

A decision reads the visitor's live state (the session and profile the context stage
keeps, updated by every acknowledged event before its acknowledgement), so the event
acknowledged just before a decide is in it. For each placement:

1. candidates: the offers open now whose eligibility rule the visitor meets, or the
   items a recommender proposes (act/candidates.py), available and matching the
   placement's query;
2. business rules: include, exclude, pin, boost, bury, each for the visitors it names;
3. the policy: a bandit draws offers from the distribution it logs; a slate draws items
   position by position (act/slates.py); every pick's probability is logged;
4. the decision is logged (act/decisions.py) and registered for attribution, whose
   rewards update the policy online.

A stage that overruns the placement's deadline, or fails, hands over to the fallback
(the placement's default content, or popular items), and the decision says so
(`degraded`). Without consent to personalization, nothing about the visitor is used: no
session, no profile, no features beyond the request itself.
"""

from __future__ import annotations

import heapq
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Protocol

import msgspec
import numpy as np

from intently.act.candidates import Ask, Recommenders
from intently.act.decisions import (
    DecisionIds,
    DecisionLog,
    DecisionRecord,
    ExposureRecord,
    FeatureValue,
    RewardRecord,
)
from intently.act.features import FeatureHasher, Hashed, Vector, contributions
from intently.act.placements import CatalogQuery, Placement, PlacementRegistry, PolicySpec, Rule
from intently.act.policies import (
    BetaThompson,
    EpsilonGreedy,
    LinThompson,
    LinUCB,
    Policy,
    RulesFirst,
    choose,
    learnable,
)
from intently.act.slates import Rules, build_slate, candidates_of
from intently.act.wire import (
    DecideAnswer,
    DecideBody,
    DecidedItem,
    PlacementDecision,
    PolicyRef,
)
from intently.catalog.items import Item
from intently.catalog.offers import Offer
from intently.catalog.store import CatalogStore
from intently.configfile import ConfigError
from intently.context.facts import CHECKOUT_STAGES, Facts
from intently.context.identity import derived_profile_id
from intently.context.profile import Profile
from intently.context.session import cart_value, engagement
from intently.context.stage import ContextStage
from intently.events.enrich import Enricher
from intently.experiments.assign import Arm
from intently.experiments.runtime import Experiments
from intently.learn.bus import Decided, LearningBus, Rewarded, Viewed
from intently.learn.rewards import Attribution, Decision, Observed, Outcome, Reward
from intently.learn.snapshot import LearnedPolicy, PendingReward
from intently.recommend.learn import LearnFromViews, context_keys, device_of
from intently.stores.protocol import Changes, StoreUnavailable

log = logging.getLogger(__name__)

# Features logged for explanation and freshness, not fed to the models: one-hot ids would
# only add noise to a model over a few dozen offers.
MODELLED_OUT = frozenset({"last_product", "session_events"})
_CLICKS = frozenset({"Product Clicked", "Promotion Clicked", "Element Clicked", "Clicked"})
MAX_LOGGED_CANDIDATES = 200
# A widget's slate is drawn among its best candidates: this many per position asked, and
# at least SLATE_POOL_MIN.
SLATE_POOL_PER_ITEM = 3
SLATE_POOL_MIN = 16
# A `catalog` placement considers its this many most viewed matching items.
SELECTION_SIZE = 200
# How long past its window another worker's decision waits for its maker's last word
# (the zero reward at its close, which the learning bus brings within a tick or two).
FOREIGN_GRACE_MS = 60_000


class ItemsRefused(ValueError):
    """Items were asked of placements that show offers: only item widgets rank items."""

    def __init__(self, refused: list[tuple[int, str]]) -> None:
        self.refused = refused
        names = ", ".join(repr(pid) for _, pid in refused)
        super().__init__(f"items: placement {names} shows offers; only item widgets rank items")


class UnknownPlacements(ValueError):
    def __init__(self, unknown: list[tuple[int, str]]) -> None:
        self.unknown = unknown
        names = ", ".join(repr(pid) for _, pid in unknown)
        super().__init__(f"no placement is defined with the id {names}")


class DecisionObserver(Protocol):
    """Told of each decision made, reward attributed and exposure logged, as they happen
    (the dashboard's live counts: api/live.py)."""

    def decided(self, record: DecisionRecord) -> None: ...

    def rewarded(self, reward: Reward) -> None: ...

    def exposed(self, placement: str, decision_id: str, at_ms: int) -> None: ...


class _Fallback(Exception):
    """The placement's fallback answers: a deadline overrun, or nothing to choose from;
    the message says which, and becomes the decision's `degraded`."""


@dataclass
class _Visitor:
    key: str  # the device: "a:<anonymousId>" or "u:<userId>"
    profile: Profile | None  # None without consent to personalization
    personal: bool
    features: dict[str, FeatureValue]
    ask: Ask
    # The profile's id whatever the consent: an identifier, kept so that attribution can
    # match the person's events and an erasure can find the decision.
    profile_id: str | None = None
    # The modelled features hashed, by dimensions (a vector and its reasons share them).
    hashed: dict[int, Hashed] = field(default_factory=dict)
    # Who experiments assign: the profile id, or the one the profile will get.
    unit: str = ""

    @property
    def aliases(self) -> tuple[str, ...]:
        return () if self.profile_id is None else (profile_key(self.profile_id),)


@dataclass
class _Outcome:
    """What one placement decided, before it is logged and answered."""

    items: list[str]
    propensities: list[float]
    item_reasons: list[list[str]]
    reasons: list[str]
    policy: str
    candidates: list[str]
    learn: tuple[Policy, Vector | None] | None = None  # the policy rewards go to
    degraded: str | None = None


class _Pending(msgspec.Struct, gc=False):  # (untracked, as `Decision` is: see there)
    policy: Policy
    action: str
    vector: Vector | None


def _listed(vector: Vector | None) -> list[float] | None:
    return None if vector is None else [float(x) for x in vector]


def policy_of(spec: PolicySpec, seed: int | None = None) -> Policy:
    """A new policy as `spec` says; sampling ones draw from `seed` (random if None)."""
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    match spec.name:
        case "linucb":
            return LinUCB(spec.dimensions, spec.alpha, floor=spec.floor)
        case "lin-thompson":
            return LinThompson(spec.dimensions, floor=spec.floor, draws=spec.draws, seed=seed)
        case "beta-thompson":
            return BetaThompson(floor=spec.floor, draws=spec.draws, seed=seed)
        case "epsilon-greedy":
            return EpsilonGreedy(spec.epsilon)
        case "rules-first":
            return RulesFirst(spec.priority, floor=spec.floor)
    raise ValueError(f"policy {spec.name!r} does not choose offers")


def spec_of_key(policy_key: bytes) -> PolicySpec:
    """The policy definition a policy key holds: its JSON, after the "<experiment>/<variant>/"
    that a variant with a policy of its own puts before it (experiments/registry.py).
    Raises msgspec.DecodeError for a key that holds none."""
    return msgspec.json.decode(policy_key[policy_key.find(b"{") :], type=PolicySpec)


def matches_query(item: Item, query: CatalogQuery) -> bool:
    if query.categories and not set(query.categories) & set(item.category):
        return False
    if query.brands and item.brand not in query.brands:
        return False
    if query.tags and not set(query.tags) & set(item.tags):
        return False
    price = item.price
    if query.min_price is not None and (price is None or price < query.min_price):
        return False
    return not (query.max_price is not None and (price is None or price > query.max_price))


class Decider:
    def __init__(
        self,
        *,
        placements: PlacementRegistry,
        catalog: CatalogStore,
        context: ContextStage,
        learner: LearnFromViews,
        decisions: DecisionLog,
        enricher: Enricher,
        now_ms: Callable[[], int],
        window_ms: int = 30 * 60_000,
        seed: int | None = None,
        timer: Callable[[], float] = time.perf_counter,
        experiments: Experiments | None = None,
    ) -> None:
        self.placements = placements
        self.catalog = catalog
        self.context = context
        self.learner = learner
        self.decisions = decisions
        self.enricher = enricher
        self.now_ms = now_ms
        self.timer = timer
        self.experiments = experiments
        self.recommenders = Recommenders(learner, catalog)
        self.attribution = Attribution(self._on_reward, window_ms)
        # Python's generator, not numpy's: numpy's gives up the GIL on every draw, and a
        # thread that does so thousands of times a second starves the others (the
        # decision log's writer waited hundreds of ms for the GIL and fell behind).
        self._rng = random.Random(seed)
        self._policies: dict[tuple[str, bytes], Policy] = {}
        self._hashers: dict[int, FeatureHasher] = {}
        self._pending: dict[str, _Pending] = {}
        # Other workers' decisions pending here, by when they were made (oldest first):
        # their maker's reward, or its zero at the close, pops them; one whose maker never
        # says (it restarted) is dropped a grace after its window, not kept forever.
        self._foreign_at: dict[str, int] = {}
        # Workers sharing Redis: decisions and rewards published to the others (engine).
        self.bus: LearningBus | None = None
        self._new_id = DecisionIds()
        self._selections: dict[str, tuple[tuple[str, int, int], list[str]]] = {}
        self.unlogged = 0  # decisions answered but not logged (the log failed)
        self.observers: list[DecisionObserver] = []

    # -- deciding -------------------------------------------------------------------------

    def placements_unknown(self, body: DecideBody) -> bool:
        """Whether `decide` would refuse `body` (an unknown placement, or items asked of an
        offer placement): checked before a context request's events are ingested."""
        found = [self.placements.get(ask.id) for ask in body.placements]
        return any(
            placement is None or (ask.items is not None and placement.spec.kind != "items")
            for ask, placement in zip(body.placements, found, strict=True)
        )

    def decide(
        self, body: DecideBody, client_ip: str | None = None, user_agent: str | None = None,
        refused: Sequence[str] = (),
    ) -> DecideAnswer:  # fmt: skip
        """Decide every placement of `body`; raises `UnknownPlacements` (nothing decided)
        when any is not defined, `ItemsRefused` when items are asked of an offer placement.

        An ask that names `items` (a search's results, a category page) has exactly those
        of them that are in the catalog ranked, all of them unless `count` says fewer
        (see `_rank_asked`)."""
        placements = [self.placements.get(ask.id) for ask in body.placements]
        unknown = [(i, ask.id) for i, ask in enumerate(body.placements) if placements[i] is None]
        if unknown:
            raise UnknownPlacements(unknown)
        offers_asked = [
            (i, ask.id) for i, ask in enumerate(body.placements)
            if ask.items is not None and placements[i].spec.kind != "items"  # type: ignore[union-attr]
        ]  # fmt: skip
        if offers_asked:
            raise ItemsRefused(offers_asked)
        now = self.now_ms()
        trouble = None
        try:
            self.recommenders.refresh_if_stale(now)
            visitor = self._visitor(body, client_ip, user_agent, refused, now)
        except StoreUnavailable:  # Redis gone: answered at once, without the visitor
            trouble = "the state store is unavailable"
            visitor = self._nobody(body, now)
        except Exception:  # a bug: every placement answers with its fallback
            log.exception("reading the visitor failed; the fallbacks answer")
            trouble = "reading the visitor failed"
            visitor = self._nobody(body, now)
        answers = []
        for ask, placement in zip(body.placements, placements, strict=True):
            assert placement is not None
            # (the asked items once each, in the order given)
            asked = None if ask.items is None else list(dict.fromkeys(ask.items))
            count = ask.count or (placement.spec.count if asked is None else len(asked))
            answers.append(
                self._decide_placement(placement, count, visitor, now, body.explain, trouble, asked)
            )
            if body.templates:
                answers[-1].template = placement.template.source
        return DecideAnswer(answers)

    def _nobody(self, body: DecideBody, now: int) -> _Visitor:
        """A visitor known only by id: nothing read, nothing personal."""
        key = "a:" + body.anonymous_id if body.anonymous_id else "u:" + str(body.user_id)
        ask = Ask(body.anonymous_id, body.context.product_id, (), (), (), (), False, now)
        return _Visitor(key, None, False, {}, ask, unit=_unit_of(body, None))

    def _decide_placement(
        self, placement: Placement, count: int, visitor: _Visitor, now: int, explain: bool,
        trouble: str | None = None, asked: list[str] | None = None,
    ) -> PlacementDecision:  # fmt: skip
        started = self.timer()
        deadline = started + placement.spec.deadline_ms / 1000.0
        arm: Arm | None = None
        serving = placement
        try:
            if trouble is not None:
                raise _Fallback(trouble)
            if self.experiments is not None:
                arm = self.experiments.arm(placement, visitor.unit, visitor.profile)
            if arm is not None and arm.default_content:
                outcome = self._default_content(placement, count, visitor, now, arm.reason, asked)
            else:
                if arm is not None:
                    try:
                        serving = self.experiments.serves(arm, placement)  # type: ignore[union-attr]
                    except Exception:  # the placement changed under the variant: not shown
                        arm = None
                        raise
                if serving.spec.kind == "offers":
                    outcome = self._offers(serving, count, visitor, now, deadline)
                elif asked is not None:
                    outcome = self._rank_asked(serving, count, visitor, deadline, asked)
                else:
                    outcome = self._items(serving, count, visitor, deadline)
                if arm is not None:
                    outcome.reasons.insert(0, arm.reason)
        except _Fallback as why:
            outcome = self._fallback(serving, count, visitor, now, str(why), asked=asked)
        except Exception as error:  # a bug must not cost the page its content
            log.exception("deciding placement %r failed; the fallback answers", placement.id)
            outcome = self._fallback(
                serving,
                count,
                visitor,
                now,
                f"deciding failed ({type(error).__name__})",
                asked=asked,
            )
        latency_us = int((self.timer() - started) * 1e6)
        decision_id = self._new_id(now)
        record = DecisionRecord(
            decision_id=decision_id,
            at_ms=now,
            placement=placement.id,
            visitor=visitor.key,
            profile_id=visitor.profile_id,
            policy=outcome.policy,
            policy_version=serving.version,
            arm=arm.label if arm is not None else None,
            features=visitor.features,
            candidates=outcome.candidates[:MAX_LOGGED_CANDIDATES],
            items=outcome.items,
            propensities=outcome.propensities,
            reasons=outcome.reasons,
            item_reasons=outcome.item_reasons,
            latency_us=latency_us,
            degraded=outcome.degraded,
            personalized=visitor.personal,
            reward_kind=serving.spec.reward,
        )
        try:  # the page gets its answer even when the decision cannot be kept
            self.decisions.record(record)
            if outcome.items:
                self._register(decision_id, serving, outcome, visitor, now)
        except Exception:
            self.unlogged += 1
            log.exception("decision %s could not be logged", decision_id)
        for observer in self.observers:  # (a failing dashboard must not cost the learning)
            try:
                observer.decided(record)
            except Exception:
                log.exception("an observer of decision %s failed", decision_id)
        if self.experiments is not None and trouble is None:
            try:  # (measurement must not cost the page its answer either)
                self.experiments.exposed(
                    arm, placement, visitor.unit, now, visitor.profile, decision_id
                )
            except Exception:
                log.exception("the exposure of decision %s could not be logged", decision_id)
        return PlacementDecision(
            placement=placement.id,
            decision_id=decision_id,
            items=[
                self._describe(placement, item, propensity, reasons)
                for item, propensity, reasons in zip(
                    outcome.items, outcome.propensities, outcome.item_reasons, strict=True
                )
            ],
            policy=PolicyRef(outcome.policy, serving.version),
            reasons=outcome.reasons,
            personalized=visitor.personal and (arm is None or not arm.default_content),
            arm=arm.label if arm is not None else None,
            degraded=outcome.degraded,
            features=dict(visitor.features) if explain else None,
        )

    def _check(self, deadline: float, stage: str) -> None:
        if self.timer() > deadline:
            raise _Fallback(f"{stage} overran the placement's deadline")

    # -- who is asking ----------------------------------------------------------------------

    def _visitor(
        self, body: DecideBody, client_ip: str | None, user_agent: str | None,
        refused: Sequence[str], now: int,
    ) -> _Visitor:  # fmt: skip
        context = self.context
        profile = None
        if body.user_id is not None:
            profile = context.lookup(body.user_id)
        if profile is None and body.anonymous_id is not None:
            profile = context.lookup(body.anonymous_id)
        if "personalization" in refused:
            personal = False
        elif profile is not None:
            personal = context.rules.personalizes(profile)
        else:
            personal = "personalization" in context.settings.default_consent
        key = (
            "a:" + body.anonymous_id if body.anonymous_id is not None else "u:" + str(body.user_id)
        )
        request = body.context
        features: dict[str, FeatureValue] = {}
        product = self.catalog.get(request.product_id) if request.product_id else None
        if product is not None and product.leaf_category is not None:
            features["product_category"] = product.leaf_category
        cart = [line.product_id for line in request.cart or ()]
        if request.cart:
            features["cart_items"] = len(request.cart)
            features["cart_value"] = sum((x.price or 0.0) * x.quantity for x in request.cart)
        order = [line.product_id for line in request.order.products] if request.order else []
        if request.order is not None:
            revenue = request.order.revenue
            if revenue is None:
                revenue = sum((x.price or 0.0) * x.quantity for x in request.order.products)
            features["order_value"] = revenue
        keys: Sequence[str] = ()
        categories: list[str] = []
        if personal:
            categories = _top_categories(profile)
            self._personal_features(features, profile, body, client_ip, user_agent, categories)
            keys = context_keys(
                _text(features.get("campaign")), _text(features.get("source")),
                _text(features.get("device")), _text(features.get("country")),
            )  # fmt: skip
            if not cart and profile is not None and profile.session and profile.session.cart:
                cart = [line.product_id for line in profile.session.cart]
        ask = Ask(
            anonymous_id=body.anonymous_id,
            product_id=request.product_id,
            cart=cart,
            order=order,
            context_keys=keys,
            categories=categories,
            personal=personal,
            now_ms=now,
        )
        return _Visitor(
            key, profile if personal else None, personal, features, ask,
            profile.id if profile is not None else None, unit=_unit_of(body, profile),
        )  # fmt: skip

    def _personal_features(
        self, features: dict[str, FeatureValue], profile: Profile | None, body: DecideBody,
        client_ip: str | None, user_agent: str | None, top_categories: list[str],
    ) -> None:  # fmt: skip
        session = profile.session if profile is not None else None
        if session is not None and session.device is not None:
            _put(features, "device", session.device)
            _put(features, "country", session.country)
            _put(features, "source", session.source)
            _put(features, "medium", session.medium)
            _put(features, "campaign", session.campaign)
        else:  # a first request, before any event: what the request itself says
            device, geo = self.enricher.client(client_ip, user_agent)
            page = body.context.page
            campaign, referrer = self.enricher.visit(
                page.url if page else None, page.referrer if page else None
            )
            campaign = body.context.campaign or campaign
            _put(features, "device", device.type if device else None)
            _put(features, "country", geo.country if geo else None)
            _put(features, "source", referrer.source)
            _put(features, "medium", referrer.medium)
            if campaign is not None and (campaign.name or campaign.source):
                name = f"{campaign.source or ''}|{campaign.medium or ''}|{campaign.name or ''}"
                features["campaign"] = name
        if session is not None:
            features["engagement"] = engagement(session)
            features["pages"] = session.pages
            features["checkout_stage"] = CHECKOUT_STAGES[session.checkout_stage]
            features["exit_intent"] = session.exit_intent
            features["session_events"] = session.events
            if session.cart:
                features["session_cart_value"] = cart_value(session)
            if session.products:
                features["last_product"] = session.products[-1]
        if profile is not None:
            features["known"] = profile.known
            features["buyer"] = profile.purchases > 0
            for name in profile.segments[:20]:
                features["segment:" + name] = True
            if top_categories:
                features["top_category"] = top_categories[0]

    # -- offers -----------------------------------------------------------------------------

    def _offers(
        self, placement: Placement, count: int, visitor: _Visitor, now: int, deadline: float
    ) -> _Outcome:
        spec = placement.spec
        kinds, content_set = spec.offer_kinds, spec.offers
        offers = [
            o for o in self.catalog.eligible_offers(visitor.profile, now)
            if (not kinds or o.kind in kinds) and (not content_set or o.id in content_set)
        ]  # fmt: skip
        ids = [o.id for o in offers]
        reasons: list[str] = []
        allowed, pinned, buried, _ = self._apply_rules(placement, visitor, ids, reasons)
        if not allowed and not pinned:
            raise _Fallback("no offer is eligible" + (" after the rules" if ids else ""))
        self._check(deadline, "finding the candidates")
        policy = self.policy(placement)
        vector = self._vector(spec.policy.dimensions, visitor) if visitor.personal else None
        chosen: list[str] = []
        propensities: list[float] = []
        item_reasons: list[list[str]] = []
        for offer_id in pinned[:count]:
            chosen.append(offer_id)
            propensities.append(1.0)
            item_reasons.append(["pinned by a rule"])
        # Buried offers are drawn only once nothing else is left.
        if chosen or buried:
            unburied = [x for x in allowed if x not in chosen and x not in buried]
            later = [x for x in allowed if x not in chosen and x in buried]
        else:  # (the common case: no rule pinned or buried anything)
            unburied, later = list(allowed), []
        rest = unburied or later
        drawn_from = list(rest)  # the set the first draw was made from: what is logged
        while len(chosen) < count and rest:
            choice = choose(policy, rest, vector, self._rng)
            chosen.append(choice.action)
            propensities.append(choice.propensity)
            item_reasons.append(self._why_offer(policy, choice.action, choice.propensity, visitor))
            rest.remove(choice.action)
            if not rest and rest is unburied:
                rest = later
        self._check(deadline, "the policy")
        learn = (policy, vector) if not pinned[:count] else None
        return _Outcome(
            chosen, propensities, item_reasons, reasons, policy.name,
            [*pinned[:count], *drawn_from], learn=learn,
        )  # fmt: skip

    def _why_offer(
        self, policy: Policy, action: str, propensity: float, visitor: _Visitor
    ) -> list[str]:
        why = [f"chosen by {policy.name} with probability {propensity:.2f}"]
        live = self.catalog.get_offer(action)
        if live is not None and live.offer.eligibility:
            why.append(f"its rule matched: {live.offer.eligibility}")
        if isinstance(policy, LinUCB | LinThompson) and action in policy.models:
            theta = policy.models[action].theta
            weighed = contributions(self._hashed(len(theta), visitor), theta)
            top = [f"{name} ({value:+.2f})" for name, value in weighed[:3] if value > 0]
            if top:
                why.append("weighed most: " + ", ".join(top))
        return why

    def policy(self, placement: Placement) -> Policy:
        """The placement's live policy (made on first use)."""
        key = (placement.id, placement.policy_key)
        policy = self._policies.get(key)
        if policy is None:
            policy = self._policies[key] = policy_of(placement.spec.policy)
        return policy

    def adopt(
        self, placement_id: str, spec: PolicySpec, policy: Policy, judged_version: str
    ) -> Placement:
        """Make `policy` (already trained, e.g. on the decision log) the live policy of
        the placement, as `spec` describes it; raises `ConfigError` if the placement is
        gone or changed since the version it was judged on."""
        current = self.placements.get(placement_id)
        if current is None:
            raise ConfigError(f"there is no placement {placement_id!r}")
        if current.version != judged_version:
            raise ConfigError(
                f"placement {placement_id!r} changed while the candidate was judged; judge again"
            )
        replaced = msgspec.structs.replace(current.spec, policy=spec)
        placement = self.placements.define(placement_id, replaced)
        self._policies[(placement_id, placement.policy_key)] = policy
        return placement

    def _modelled(self, visitor: _Visitor) -> dict[str, FeatureValue]:
        return {k: v for k, v in visitor.features.items() if k not in MODELLED_OUT}

    def _vector(self, dimensions: int, visitor: _Visitor) -> Vector:
        return self._hasher(dimensions).vector_of(self._hashed(dimensions, visitor))

    def _hashed(self, dimensions: int, visitor: _Visitor) -> Hashed:
        hashed = visitor.hashed.get(dimensions)
        if hashed is None:
            hashed = visitor.hashed[dimensions] = self._hasher(dimensions).hashed(
                self._modelled(visitor)
            )
        return hashed

    def _hasher(self, dimensions: int) -> FeatureHasher:
        hasher = self._hashers.get(dimensions)
        if hasher is None:
            hasher = self._hashers[dimensions] = FeatureHasher(dimensions)
        return hasher

    # -- items ------------------------------------------------------------------------------

    def _items(
        self, placement: Placement, count: int, visitor: _Visitor, deadline: float
    ) -> _Outcome:
        spec = placement.spec
        catalog = self.catalog
        query = spec.query
        selection = self._selection(placement) if spec.recommender == "catalog" else []
        pool = self.recommenders.pool(spec.recommender, visitor.ask, selection)
        candidate = self._showable(visitor, query)
        # The slate draws among the best `considered` candidates allowed (by score and
        # boost), each with its logged probability.
        considered = max(SLATE_POOL_PER_ITEM * count, SLATE_POOL_MIN)
        reasons: list[str] = []
        scores = pool.scores
        # (sorts are stable: equal scores keep the order the sources proposed them in)
        if not placement.rules:  # the best first, checked only as far as needed
            pinned: list[str] = []
            buried: set[str] = set()
            boosts: dict[str, float] = {}
            best_first = sorted(scores, key=scores.__getitem__, reverse=True)
            allowed = list(islice(filter(candidate, best_first), considered))
        else:  # the rules see every candidate
            allowed, pinned, buried, boosts = self._apply_rules(
                placement, visitor, [i for i in scores if candidate(i)], reasons
            )
            if boosts:
                allowed.sort(key=lambda x: scores[x] + boosts.get(x, 0.0), reverse=True)
            else:
                allowed.sort(key=scores.__getitem__, reverse=True)
            allowed = allowed[:considered]
        if not allowed and not pinned:
            raise _Fallback(
                "the catalog is empty" if len(catalog) == 0 else "no item is a candidate"
            )
        self._check(deadline, "finding the candidates")
        ids = list(dict.fromkeys([*pinned, *allowed]))
        candidates = candidates_of(
            ids, [scores.get(item_id, 0.0) for item_id in ids], catalog.facets_of(ids)
        )
        policy = spec.policy
        slate = build_slate(
            candidates, count, self._rng,
            Rules(pinned=pinned, boost=boosts, buried=frozenset(buried)),
            temperature=policy.temperature, floor=policy.floor,
        )  # fmt: skip
        self._check(deadline, "ranking")
        item_reasons = []
        for item_id, why in zip(slate.items, slate.reasons, strict=True):
            source = pool.reason(item_id)
            item_reasons.append([source, why] if source else [why])
        return _Outcome(
            slate.items, slate.propensities, item_reasons, reasons, "slate",
            [c.id for c in candidates],
        )  # fmt: skip

    def _rank_asked(
        self, placement: Placement, count: int, visitor: _Visitor, deadline: float,
        asked: list[str],
    ) -> _Outcome:  # fmt: skip
        """Rank exactly the asked items that are in the catalog (a search's results, a
        category page), `count` of them at most.

        The caller's order is a source of its own (text relevance, a merchandiser's
        order: the first scores 1, the last near 0), to which the placement's recommender
        adds what it knows of the visitor (its sources kept only for the asked items, at
        half weight), and the visitor's strongest categories add a category affinity.
        The placement's rules apply (an exclusion removes, a pin puts first, boosts and
        burials move), but not its catalog query, nor what hides an item elsewhere (in
        view, in the cart): the caller named these items. Items sold out or inactive are
        kept, buried after the others. The slate draws every position as for a widget,
        each pick's probability logged; without diversity penalties: the caller's list is
        about one thing (a query), and a search for running shoes must not have other
        categories interleaved to look diverse."""
        catalog = self.catalog
        known = [item_id for item_id in asked if catalog.get(item_id) is not None]
        if not known:
            raise _Fallback("none of the items asked is in the catalog")
        pool = self.recommenders.ranking(placement.spec.recommender, visitor.ask, known)
        reasons: list[str] = []
        if placement.rules:
            allowed, pinned, buried, boosts = self._apply_rules(placement, visitor, known, reasons)
            wanted = set(known)
            pinned = [item_id for item_id in pinned if item_id in wanted]
        else:
            allowed, pinned, buried, boosts = known, [], set(), {}
        available = catalog.availability()
        buried |= {item_id for item_id in allowed if item_id not in available}
        ids = list(dict.fromkeys([*pinned, *allowed]))
        if not ids:
            raise _Fallback("no item asked is a candidate after the rules")
        self._check(deadline, "finding the candidates")
        scores = pool.scores
        facets = [(category, brand, None) for category, brand, _ in catalog.facets_of(ids)]
        candidates = candidates_of(ids, [scores.get(item_id, 0.0) for item_id in ids], facets)
        policy = placement.spec.policy
        slate = build_slate(
            candidates, min(count, len(ids)), self._rng,
            Rules(pinned=pinned, boost=boosts, buried=frozenset(buried)),
            temperature=policy.temperature, floor=policy.floor,
            same_category_penalty=0.0, same_brand_penalty=0.0,
        )  # fmt: skip
        self._check(deadline, "ranking")
        item_reasons = []
        for item_id, why in zip(slate.items, slate.reasons, strict=True):
            source = pool.reason(item_id)
            item_reasons.append([source, why] if source else [why])
        return _Outcome(
            slate.items, slate.propensities, item_reasons, reasons, "slate", ids
        )  # fmt: skip

    def _showable(self, visitor: _Visitor, query: CatalogQuery | None) -> Callable[[str], bool]:
        """Whether an item may be shown to this visitor: available, not already on the
        page (in view, in the cart, in the order) and matching the placement's query."""
        ask = visitor.ask
        shown_elsewhere = {ask.product_id, *ask.cart, *ask.order}
        available = self.catalog.availability()
        get = self.catalog.get

        def showable(item_id: str) -> bool:
            return (
                item_id in available
                and item_id not in shown_elsewhere
                and (query is None or _matches(get(item_id), query))
            )

        return showable

    # -- rules ------------------------------------------------------------------------------

    def _apply_rules(
        self, placement: Placement, visitor: _Visitor, ids: list[str], reasons: list[str]
    ) -> tuple[list[str], list[str], set[str], dict[str, float]]:
        """The candidates allowed, those pinned (in order), buried and boosted. An
        exclusion wins over every other rule, whatever the order they are written in."""
        profile, now = visitor.profile, visitor.ask.now_ms
        allowed = list(ids)
        pinned: list[str] = []
        buried: set[str] = set()
        boosts: dict[str, float] = {}
        excluding: list[Rule] = []
        for rule in placement.rules:
            if not rule.applies_to(profile, now):
                continue
            spec = rule.spec
            if spec.action == "exclude":
                excluding.append(rule)
                continue
            if spec.action == "pin":
                named = [x for x in spec.items if self._pinnable(placement, x, visitor)]
                targets = named + [x for x in allowed if x not in named and self._hit(rule, x)]
            else:
                targets = [x for x in allowed if self._hit(rule, x)]
            if spec.action == "include":
                keep = set(targets)
                allowed = [x for x in allowed if x in keep]
            elif spec.action == "pin":
                pinned.extend(x for x in targets if x not in pinned)
            elif spec.action == "bury":
                buried.update(targets)
            else:
                for x in targets:
                    boosts[x] = boosts.get(x, 0.0) + spec.amount
            if targets:
                reasons.append(rule.reason)
        for rule in excluding:
            hit = {x for x in (*allowed, *pinned) if self._hit(rule, x)}
            if hit:
                allowed = [x for x in allowed if x not in hit]
                pinned = [x for x in pinned if x not in hit]
                reasons.append(rule.reason)
        return allowed, pinned, buried, boosts

    def _excluded(self, placement: Placement, visitor: _Visitor, ids: list[str]) -> list[str]:
        """`ids` without those the placement's exclusions remove for this visitor."""
        profile, now = visitor.profile, visitor.ask.now_ms
        for rule in placement.rules:
            if rule.spec.action == "exclude" and rule.applies_to(profile, now):
                ids = [x for x in ids if not self._hit(rule, x)]
        return ids

    def _selection(self, placement: Placement) -> list[str]:
        """A `catalog` placement's items, most viewed first: computed again only when
        the placement, the catalog or the popularity counts (each second) change."""
        key = (placement.version, self.catalog.version, self.recommenders.refreshed_at)
        cached = self._selections.get(placement.id)
        if cached is not None and cached[0] == key:
            return cached[1]
        query = placement.spec.query
        matching = [
            item.id for item in self.catalog
            if item.available and (query is None or matches_query(item, query))
        ]  # fmt: skip
        popularity = self.learner.popularity
        ranked = heapq.nlargest(SELECTION_SIZE, matching, key=lambda i: popularity.get(i, 0))
        self._selections[placement.id] = (key, ranked)
        return ranked

    def _hit(self, rule: Rule, candidate: str) -> bool:
        spec = rule.spec
        if candidate in spec.items:
            return True
        if spec.match is None:
            return False
        item = self.catalog.get(candidate)
        return item is not None and matches_query(item, spec.match)

    def _pinnable(self, placement: Placement, candidate: str, visitor: _Visitor) -> bool:
        if placement.spec.kind == "items":
            return self.catalog.is_available(candidate)
        live = self.catalog.get_offer(candidate)
        return live is not None and live.eligible(visitor.profile, visitor.ask.now_ms)

    # -- the fallback -----------------------------------------------------------------------

    def _default_content(
        self, placement: Placement, count: int, visitor: _Visitor, now: int, why: str,
        asked: list[str] | None = None,
    ) -> _Outcome:  # fmt: skip
        """A holdout's answer: the default content, with no rule applied (not even an
        exclusion: a rule is personalization too), and nothing learned from it."""
        outcome = self._fallback(placement, count, visitor, now, why, rules=False, asked=asked)
        outcome.degraded = None
        outcome.policy = "default"
        outcome.reasons = [why]
        return outcome

    def _fallback(
        self, placement: Placement, count: int, visitor: _Visitor, now: int, why: str,
        rules: bool = True, asked: list[str] | None = None,
    ) -> _Outcome:  # fmt: skip
        """Default content: the placement's own list, else popular items or the first
        open offers without a rule; within the placement's content set, kinds and query,
        and without what its exclusions remove. Deterministic (probability 1), and never
        failing. For asked items, their own order is the default: those in the catalog,
        as given."""
        spec = placement.spec
        catalog = self.catalog
        try:
            if asked is not None and spec.kind == "items":
                known = (x for x in asked if catalog.get(x) is not None)
                ids = self._first_allowed(placement, visitor, known, count, rules)
            elif spec.kind == "items":
                source = spec.fallback or (x for x, _ in self.recommenders.popular)
                showable = filter(self._showable(visitor, spec.query), source)
                ids = self._first_allowed(placement, visitor, showable, count, rules)
            else:
                open_offers = [
                    live for live in catalog.offers()
                    if live.open_at(now)
                    and (not spec.offer_kinds or live.offer.kind in spec.offer_kinds)
                    and (not spec.offers or live.offer.id in spec.offers)
                ]  # fmt: skip
                ids = [x for x in spec.fallback if any(x == o.offer.id for o in open_offers)]
                if not spec.fallback:
                    ids = [live.offer.id for live in open_offers if live.matches is None]
                if rules:
                    ids = self._excluded(placement, visitor, ids)
        except Exception:
            log.exception("the fallback of placement %r failed; answering nothing", placement.id)
            ids = []
        ids = ids[:count]
        if asked is not None:
            reason = "in the order asked"
        elif spec.fallback:
            reason = "default content"
        else:
            reason = "popular items" if spec.kind == "items" else "the first open offer"
        return _Outcome(
            ids, [1.0] * len(ids), [[reason] for _ in ids], [f"fallback: {why}"], "fallback",
            ids, degraded=why,
        )  # fmt: skip

    def _first_allowed(
        self, placement: Placement, visitor: _Visitor, ids: Iterator[str], count: int,
        rules: bool,
    ) -> list[str]:  # fmt: skip
        """The first `count` of `ids` the placement's exclusions leave (when `rules`),
        read only as far as needed: popular items run to the whole catalog, and a
        fallback (or a holdout's every decision) must not read all of it."""
        found: list[str] = []
        while len(found) < count:
            chunk = list(islice(ids, 2 * count + 8))
            if not chunk:
                break
            found.extend(self._excluded(placement, visitor, chunk) if rules else chunk)
        return found[:count]

    # -- the answer -------------------------------------------------------------------------

    def _describe(
        self, placement: Placement, item_id: str, propensity: float, reasons: list[str]
    ) -> DecidedItem:
        if placement.spec.kind == "offers":
            live = self.catalog.get_offer(item_id)
            offer: Offer | None = live.offer if live is not None else None
            return DecidedItem(
                item_id, propensity, reasons,
                kind=offer.kind if offer else None,
                title=offer.title if offer else None,
                fields=dict(offer.fields) if offer and offer.fields else None,
            )  # fmt: skip
        item = self.catalog.get(item_id)
        return DecidedItem(
            item_id, propensity, reasons,
            title=item.title if item else None, url=item.url if item else None,
            image=item.image if item else None, price=item.price if item else None,
        )  # fmt: skip

    # -- learning ---------------------------------------------------------------------------

    def _register(
        self, decision_id: str, placement: Placement, outcome: _Outcome, visitor: _Visitor,
        now: int,
    ) -> None:  # fmt: skip
        self.attribution.decided(
            Decision(
                # (a tuple of strings: the collector stops tracking it)
                decision_id, visitor.key, placement.id, tuple(outcome.items), now,
                reward=placement.spec.reward, aliases=visitor.aliases,
            )
        )  # fmt: skip
        learned = outcome.learn is not None and len(outcome.items) == 1
        if learned:
            assert outcome.learn is not None
            policy, vector = outcome.learn
            self._pending[decision_id] = _Pending(policy, outcome.items[0], vector)
        if self.bus is not None:  # other workers credit and learn from it too
            self.bus.publish(
                Decided(
                    decision_id, visitor.key, placement.id, list(outcome.items), now,
                    placement.spec.reward, list(visitor.aliases),
                    placement.policy_key if learned else None,
                    outcome.items[0] if learned else None,
                    _listed(outcome.learn[1]) if learned and outcome.learn else None,
                )
            )  # fmt: skip

    def _on_reward(self, reward: Reward) -> None:
        if self.bus is not None:
            self.bus.publish(
                Rewarded(reward.decision_id, reward.placement, reward.item, reward.value,
                         reward.at_ms)
            )  # fmt: skip
        self.decisions.reward(
            RewardRecord(
                decision_id=reward.decision_id, at_ms=reward.at_ms, item=reward.item,
                value=reward.value,
            )
        )  # fmt: skip
        for observer in self.observers:
            try:
                observer.rewarded(reward)
            except Exception:
                log.exception("an observer of the reward of %s failed", reward.decision_id)
        pending = self._pending.pop(reward.decision_id, None)
        if pending is None:
            return  # not learned from, or already learned from (its first reward)
        try:
            value = learnable(pending.policy, reward.value)
            pending.policy.update(pending.action, value, pending.vector)
        except ValueError:
            log.exception("the reward of decision %s could not be learned", reward.decision_id)

    def learned_elsewhere(self, message: Decided | Rewarded | Viewed) -> None:
        """Another worker's decision, reward or view (learn/bus.py)."""
        if isinstance(message, Viewed):
            self.learner.learned_elsewhere(message)
            return
        if isinstance(message, Decided):
            if message.decision_id in self.attribution.decisions:
                return
            self.attribution.decided(
                Decision(
                    message.decision_id, message.visitor, message.placement,
                    tuple(message.items), message.at_ms, reward=message.reward,  # type: ignore[arg-type]
                    aliases=tuple(message.aliases), foreign=True,
                )
            )  # fmt: skip
            if message.policy_key is not None and message.action is not None:
                policy = self._shared_policy(message.placement, message.policy_key)
                vector = None if message.vector is None else np.array(message.vector)
                self._pending[message.decision_id] = _Pending(policy, message.action, vector)
                self._foreign_at[message.decision_id] = message.at_ms
            return
        decision = self.attribution.decisions.get(message.decision_id)
        if decision is not None:
            decision.rewarded += message.value  # its maker reports no zero at its close
        self._foreign_at.pop(message.decision_id, None)
        pending = self._pending.pop(message.decision_id, None)
        if pending is not None:
            try:
                pending.policy.update(
                    pending.action, learnable(pending.policy, message.value), pending.vector
                )
            except ValueError:
                log.exception("the shared reward of %s could not be learned", message.decision_id)

    def _shared_policy(self, placement_id: str, policy_key: bytes) -> Policy:
        """This worker's copy of the policy another worker learned with: the same
        definition (its key) at the same placement, built here if not used yet."""
        key = (placement_id, policy_key)
        policy = self._policies.get(key)
        if policy is None:
            policy = self._policies[key] = policy_of(spec_of_key(policy_key))
        return policy

    # -- snapshots (learn/snapshot.py) -------------------------------------------------------

    def learned(self) -> tuple[list[LearnedPolicy], list[Decided], list[PendingReward]]:
        """Every policy's parameters, the open decisions (with what their first reward
        teaches), and the foreign decisions closed here whose reward may still come."""
        keys = {id(policy): key for key, policy in self._policies.items()}
        policies = [
            LearnedPolicy(placement, key, policy.learned())
            for (placement, key), policy in self._policies.items()
        ]  # fmt: skip
        opened: list[Decided] = []
        for decision in self.attribution.decisions.values():
            pending = self._pending.get(decision.decision_id)
            key = None if pending is None else keys.get(id(pending.policy))
            opened.append(
                Decided(
                    decision.decision_id, decision.visitor, decision.placement,
                    list(decision.items), decision.at_ms, decision.reward,
                    list(decision.aliases), None if key is None else key[1],
                    None if key is None or pending is None else pending.action,
                    None if key is None or pending is None else _listed(pending.vector),
                )
            )  # fmt: skip
        waiting: list[PendingReward] = []
        for decision_id, at_ms in self._foreign_at.items():
            pending = self._pending.get(decision_id)
            key = None if pending is None else keys.get(id(pending.policy))
            if (
                key is not None
                and pending is not None
                and decision_id not in self.attribution.decisions
            ):
                waiting.append(
                    PendingReward(decision_id, key[0], key[1], pending.action,
                                  _listed(pending.vector), at_ms)
                )  # fmt: skip
        return policies, opened, waiting

    def restore(
        self, policies: Sequence[LearnedPolicy], opened: Sequence[Decided],
        waiting: Sequence[PendingReward],
    ) -> None:  # fmt: skip
        """Take what another worker learned (its `learned()`), as the start of learning
        here. The policies are checked first: raises ValueError, changing nothing, if
        one does not fit its definition."""
        built: dict[tuple[str, bytes], Policy] = {}
        for learned in policies:
            try:
                policy = policy_of(spec_of_key(learned.key))
            except (msgspec.DecodeError, ValueError) as error:
                raise ValueError(f"a learned policy of {learned.placement!r}: {error}") from None
            policy.restore(learned.learned)
            built[(learned.placement, learned.key)] = policy
        self._policies.update(built)
        for reward in waiting:  # (first: older than the open ones, `_foreign_at`'s order)
            policy = self._shared_policy(reward.placement, reward.key)
            vector = None if reward.vector is None else np.array(reward.vector)
            self._pending[reward.decision_id] = _Pending(policy, reward.action, vector)
            self._foreign_at[reward.decision_id] = reward.at_ms
        for message in opened:
            self.learned_elsewhere(message)

    def __call__(self, profile: Profile, facts: Facts | None, changes: Changes) -> None:
        """The context-stage hook: outcomes in events become rewards."""
        if facts is None or not self.attribution.decisions:
            return
        if facts.exposure:
            self._exposed(profile, facts)
            return
        outcome: Outcome
        if facts.clicked is not None or (facts.decision_id and facts.kind in _CLICKS):
            outcome, items = "click", [(facts.clicked or "", 0.0)]
        elif facts.added is not None:
            outcome, items = "add_to_cart", [(facts.added.product_id, 0.0)]
        elif facts.order_lines:
            outcome = "conversion"
            items = [(x.product_id, (x.price or 0.0) * x.quantity) for x in facts.order_lines]
        else:
            return
        device = device_of(facts)
        if device is None:
            return
        # The client sets an event's time: one from the future must not reach past the
        # windows of the decisions it could be credited to.
        at_ms = min(facts.at_ms, self.now_ms())
        self.attribution.observe(
            Observed(device, at_ms, outcome, items, facts.decision_id, (profile_key(profile.id),))
        )

    def _exposed(self, profile: Profile, facts: Facts) -> None:
        """A viewable impression: logged for an open decision of this visitor."""
        decision = self.attribution.decisions.get(facts.decision_id or "")
        keys = {device_of(facts), profile_key(profile.id)}
        if decision is None or not keys & set(decision.keys):
            self.attribution.unattributed += 1
            return
        self.decisions.exposure(ExposureRecord(decision_id=decision.decision_id, at_ms=facts.at_ms))
        for observer in self.observers:
            observer.exposed(decision.placement, decision.decision_id, facts.at_ms)

    def forget(self, devices: Sequence[str], profile_ids: Sequence[str]) -> None:
        """An erasure: the person's open decisions are dropped (no reward will be logged
        or learned for them)."""
        keys = [*devices, *(profile_key(p) for p in profile_ids)]
        for decision_id in self.attribution.forget(keys):
            self._pending.pop(decision_id, None)

    def tick(self, now_ms: int) -> None:
        """Each second: close attribution windows, refresh popular and trending lists."""
        self.attribution.close_until(now_ms)
        self.recommenders.refresh(now_ms)
        self._drop_unanswered(now_ms - self.attribution.window_ms - FOREIGN_GRACE_MS)

    def _drop_unanswered(self, made_before_ms: int) -> None:
        foreign = self._foreign_at
        while foreign:
            decision_id, at_ms = next(iter(foreign.items()))
            if at_ms >= made_before_ms:
                return
            del foreign[decision_id]
            self._pending.pop(decision_id, None)


def _unit_of(body: DecideBody, profile: Profile | None) -> str:
    """Who experiments assign: the profile, or, before the visitor's first event, the id
    their profile will get (the identity graph derives it from the first id it sees: the
    userId when the first event has one)."""
    if profile is not None:
        return profile.id
    if body.user_id is not None:
        return derived_profile_id("u:" + body.user_id)
    return derived_profile_id("a:" + str(body.anonymous_id))


def _matches(item: Item | None, query: CatalogQuery) -> bool:
    return item is not None and matches_query(item, query)


def profile_key(profile_id: str) -> str:
    """A profile as an attribution key (apart from device keys, "a:..." and "u:...")."""
    return "p:" + profile_id


def _put(features: dict[str, FeatureValue], name: str, value: str | None) -> None:
    if value:
        features[name] = value


def _text(value: FeatureValue | None) -> str | None:
    return value if isinstance(value, str) else None


def _top_categories(profile: Profile | None) -> list[str]:
    """The visitor's strongest categories: the session's first, then the profile's."""
    if profile is None:
        return []
    found: list[str] = []
    for scores in (profile.session.categories if profile.session else None, profile.categories):
        if scores:
            found.extend(sorted(scores, key=scores.__getitem__, reverse=True)[:2])
    return list(dict.fromkeys(found))
