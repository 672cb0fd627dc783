"""Feeding recommenders from the context stage: each product view, as it is applied.

A `ContextStage` hook sees every event after the session and profile took it, inside the
same atomic change, so the recommenders learn from exactly the events the state holds, in
log order, live or replayed. Visitors who refused personalization are not learned from.

A recommender's session is one device's browsing path (its anonymousId, or its userId
when it sends none), split after `session_timeout_ms` without a view. It is not the
profile's session: a profile's id changes when an anonymous visitor logs in and is merged
into a known one, and sessions of two devices merged into one profile are two paths.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from intently.context.facts import Facts
from intently.context.profile import Profile, ProfileRules
from intently.learn.bus import Viewed
from intently.recommend.sequential import SequentialRules
from intently.recommend.session_knn import SessionKNN
from intently.recommend.together import CoOccurrence, Trending
from intently.stores.protocol import Changes

# The views kept per session for the recommenders (the context session keeps fewer, to
# stay small): a session kNN weighs a session's whole recent path.
RECENT_VIEWS = 20
# Cold start: views are also counted per visit context (campaign, referrer source,
# device type, country), for visitors who have viewed nothing yet. At most this many
# contexts are tracked (the first seen; a shop has few of each).
MAX_CONTEXTS = 10_000


@lru_cache(maxsize=4096)
def context_keys(
    campaign: str | None, source: str | None, device: str | None, country: str | None
) -> tuple[str, ...]:
    """The cold-start keys of a visit, most specific first (cached: visits repeat them)."""
    keys = []
    if campaign:
        keys.append("campaign=" + campaign)
    if source:
        keys.append("source=" + source)
    if country:
        keys.append("country=" + country)
    if device:
        keys.append("device=" + device)
    return tuple(keys)


@dataclass
class _Path:
    number: int = 0  # the device's sessions so far, minus one
    last_ms: int = 0
    views: list[str] = field(default_factory=list)


def device_of(facts: Facts) -> str | None:
    if facts.anonymous_id is not None:
        return "a:" + facts.anonymous_id
    return None if facts.user_id is None else "u:" + facts.user_id


class LearnFromViews:
    """A context-stage hook that feeds product views to a session kNN, sequential rules,
    co-occurrence ("viewed together"), trending and popularity counts, and orders to
    "bought together"; it keeps each device's recent views (at most `max_devices`
    devices, the least recently active forgotten first).

    `learning = False` freezes what is learned across sessions (the static evaluation
    protocol); each session's own recent views are still kept, as the engine's session
    context is."""

    def __init__(
        self,
        knn: SessionKNN,
        sequential: SequentialRules,
        profile_rules: ProfileRules,
        session_timeout_ms: int = 30 * 60_000,
        max_devices: int = 1_000_000,
    ) -> None:
        self.knn = knn
        self.sequential = sequential
        self.profile_rules = profile_rules
        self.session_timeout_ms = session_timeout_ms
        self.max_devices = max_devices
        self.popularity: Counter[str] = Counter()
        self.viewed_together = CoOccurrence(window=3)
        self.bought_together = CoOccurrence()
        self.trending = Trending()
        self.by_context: dict[str, dict[str, int]] = {}
        self.learning = True
        # Workers sharing Redis: what is learned is published to the others (engine).
        self.publish: Callable[[Viewed], None] | None = None
        self._paths: OrderedDict[str, _Path] = OrderedDict()

    def session_of(self, anonymous_id: str) -> Hashable | None:
        """The recommenders' key for the device's current session, if it has one."""
        path = self._paths.get("a:" + anonymous_id)
        return None if path is None else ("a:" + anonymous_id, path.number)

    def views(self, anonymous_id: str) -> list[str]:
        """The device's recent views in its current session, oldest first."""
        path = self._paths.get("a:" + anonymous_id)
        return [] if path is None else list(path.views)

    def __call__(self, profile: Profile, facts: Facts | None, changes: Changes) -> None:
        if facts is None or (facts.product is None and not facts.order_lines):
            return
        device = device_of(facts)
        if device is None or not self.profile_rules.personalizes(profile):
            return
        product = facts.product.product_id if facts.product is not None else None
        basket = [line.product_id for line in facts.order_lines] if facts.order_lines else None
        where = (facts.campaign, facts.source, facts.device, facts.country)
        if self.publish is not None:  # other workers learn it too (learn/bus.py)
            self.publish(Viewed(device, facts.at_ms, product, basket, list(where)))
        self._learn(device, facts.at_ms, product, basket, where)

    def learned_elsewhere(self, viewed: Viewed) -> None:
        """A view or an order another worker applied (consent was checked there)."""
        campaign, source, kind, country = viewed.where
        where = (campaign, source, kind, country)
        self._learn(viewed.device, viewed.at_ms, viewed.product, viewed.basket, where)

    def _learn(
        self, device: str, at_ms: int, product: str | None, basket: list[str] | None,
        where: tuple[str | None, str | None, str | None, str | None],
    ) -> None:  # fmt: skip
        if basket:
            if self.learning:
                self.bought_together.learn_basket(basket)
            return
        assert product is not None
        path = self._paths.get(device)
        if path is None:
            path = self._paths[device] = _Path(last_ms=at_ms)
            if len(self._paths) > self.max_devices:
                self._paths.popitem(last=False)
        else:
            self._paths.move_to_end(device)
            if at_ms - path.last_ms > self.session_timeout_ms:
                path.number += 1
                path.views = []
        path.last_ms = max(path.last_ms, at_ms)
        item = product
        if self.learning:
            self.knn.observe((device, path.number), item, at_ms)
            self.sequential.learn(path.views, item)
            self.viewed_together.learn(path.views, item)
            self.trending.learn(item, at_ms)
            self.popularity[item] += 1
            self._count_in_context(where, item)
        path.views.append(item)
        if len(path.views) > RECENT_VIEWS:
            del path.views[0]

    def _count_in_context(
        self, where: tuple[str | None, str | None, str | None, str | None], item: str
    ) -> None:
        by_context = self.by_context
        for key in context_keys(*where):
            counts = by_context.get(key)
            if counts is None:
                if len(by_context) >= MAX_CONTEXTS:
                    continue
                counts = by_context[key] = {}
            counts[item] = counts.get(item, 0) + 1

    # -- snapshots (learn/snapshot.py) -------------------------------------------------------

    def learned(self) -> dict[str, Any]:
        """Everything learned, as plain values: the models and each device's path (least
        recently active first, as they are forgotten)."""
        return {
            "knn": self.knn.learned(),
            "sequential": self.sequential.learned(),
            "viewed_together": self.viewed_together.learned(),
            "bought_together": self.bought_together.learned(),
            "trending": self.trending.learned(),
            "popularity": dict(self.popularity),
            "by_context": self.by_context,
            "paths": [[device, p.number, p.last_ms, p.views] for device, p in self._paths.items()],
        }

    def restore(self, learned: dict[str, Any]) -> None:
        """Take what `learned()` gave in place of what was learned here (all or nothing:
        raises ValueError, changing nothing, if any part is not what it should be)."""
        knn = SessionKNN(self.knn.k, self.knn.sample, self.knn.idf_weight, self.knn.max_sessions)
        sequential = SequentialRules(self.sequential.steps, self.sequential.max_rules)
        viewed = CoOccurrence(self.viewed_together.max_neighbours, self.viewed_together.window)
        bought = CoOccurrence(self.bought_together.max_neighbours, self.bought_together.window)
        trending = Trending(self.trending.half_life_ms)
        try:
            knn.restore(learned["knn"])
            sequential.restore(learned["sequential"])
            viewed.restore(learned["viewed_together"])
            bought.restore(learned["bought_together"])
            trending.restore(learned["trending"])
            popularity = Counter({str(k): int(v) for k, v in learned["popularity"].items()})
            by_context = {
                str(key): {str(item): int(n) for item, n in counts.items()}
                for key, counts in learned["by_context"].items()
            }
            paths = OrderedDict(
                (str(device), _Path(int(number), int(last_ms), [str(v) for v in views]))
                for device, number, last_ms, views in learned["paths"]
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"not what recommenders learned: {error!r}") from None
        self.knn, self.sequential = knn, sequential
        self.viewed_together, self.bought_together, self.trending = viewed, bought, trending
        self.popularity, self.by_context, self._paths = popularity, by_context, paths

    def forget(self, anonymous_ids: Iterable[str], user_ids: Iterable[str]) -> None:
        """Erase a person: their devices' paths, and their sessions from the kNN (which
        then no longer vote). What the counts and rules learned stays, without anything
        that names them."""
        devices = [*("a:" + a for a in anonymous_ids), *("u:" + u for u in user_ids)]
        for device in devices:
            path = self._paths.pop(device, None)
            if path is not None:
                for number in range(path.number + 1):
                    self.knn.forget((device, number))
