"""Candidate items for a widget: what each recommender proposes, scored and explained.

Each recommender of a placement blends sources, each scaled so its best candidate
scores 1.0, then weighted. A candidate keeps the reason of the source that gave it the
most, so a visitor can read why it is there. Every blend ends with popular and trending
items at a low weight, so a widget fills even for a first-time visitor or an empty
session; and with items similar by attributes (same category, brand, price) to what is
in view, which is how a new item, never viewed yet, gets its first exposures.

| recommender | sources                                                            |
|-------------|--------------------------------------------------------------------|
| for_you     | session kNN + sequential rules over the device's recent views;     |
|             | viewed together; the profile's categories; the visit's context     |
| similar     | viewed together with the product in view; what sessions that       |
|             | viewed it went on to view; items like it                           |
| cart        | bought together, then viewed together, with the cart               |
| order       | bought together with the order just completed                      |
| recently_viewed | the device's own recent views, latest first                    |
| trending    | views decayed by time (6 h half-life)                              |
| popular     | views of all time                                                  |
| catalog     | the placement's catalog query, most viewed first                   |
"""

from __future__ import annotations

import heapq
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice

from msgspec import Struct

from intently.catalog.items import Item
from intently.catalog.store import CatalogStore
from intently.recommend.blend import next_items
from intently.recommend.learn import LearnFromViews

# How many candidates each source proposes (the slate picks among them all).
PER_SOURCE = 30
# Items similar by attributes, considered per item in view.
SIMILAR_SCAN = 30
MAX_LIKE_CACHED = 100_000
# Ranking asked items (a search's results): the caller's order weighs 1.0; what the
# recommender gives an item counts half; the visitor's strongest category adds this much
# (the second, half of it): enough to lift a category's items over the first third of a
# relevance order, not over the whole of it.
ASKED_RECOMMENDER = 0.5
ASKED_AFFINITY = 0.6


@dataclass
class Pool:
    """Candidates with their blended score; each keeps the reason of its strongest
    source, which a visitor can read."""

    scores: dict[str, float] = field(default_factory=dict)
    # Each source's scale and scores, to find the reason of the few items shown (not of
    # every candidate: most are never shown).
    _sources: list[tuple[float, dict[str, float], str]] = field(default_factory=list)

    def add(self, scored: Iterable[tuple[str, float]], weight: float, reason: str) -> None:
        """Add a source's (item, score) pairs, scaled by the source's best score."""
        source = dict(scored)
        if not source:
            return
        top = max(source.values())
        if top <= 0:
            return
        scale = weight / top
        scores = self.scores
        get = scores.get
        for item, score in source.items():
            scores[item] = get(item, 0.0) + scale * score
        self._sources.append((scale, source, reason))

    def add_kept(self, other: Pool, keep: Container[str], factor: float) -> None:
        """Add `other`'s sources, only for the items in `keep`, each item's contribution
        `factor` times what it was in `other` (each source keeps its reason)."""
        for scale, source, reason in other._sources:
            kept = [(item, score) for item, score in source.items() if item in keep]
            if kept:
                self.add(kept, factor * scale * max(score for _, score in kept), reason)

    def reason(self, item: str) -> str | None:
        """The reason of the source that gave `item` the most (the first of equals)."""
        best, found = 0.0, None
        for scale, source, reason in self._sources:
            score = source.get(item)
            if score is not None and scale * score > best:
                best, found = scale * score, reason
        return found


class Ask(Struct, frozen=True):
    """What a decide request tells the recommenders."""

    anonymous_id: str | None
    product_id: str | None
    cart: Sequence[str]
    order: Sequence[str]
    context_keys: Sequence[str]  # cold start: campaign, source, country, device
    categories: Sequence[str]  # the visitor's top categories (profile and session)
    personal: bool  # False: nothing about the visitor may be used
    now_ms: int


class Recommenders:
    def __init__(self, learner: LearnFromViews, catalog: CatalogStore) -> None:
        self.learner = learner
        self.catalog = catalog
        # Refreshed by `refresh` (each second), not per decide: ranking every item's
        # count on each request would cost more than the rest of the decision.
        self.popular: list[tuple[str, float]] = []
        self.trending: list[tuple[str, float]] = []
        self._context_top: dict[str, list[tuple[str, float]]] = {}
        self._refreshed: tuple[int, int] | None = None  # (at, catalog version)
        # Items like a product, by attributes: they change only with the catalog.
        self._like: dict[str, list[tuple[str, float]]] = {}
        self._like_version = -1

    def refresh_if_stale(self, now_ms: int) -> None:
        """Refresh at most each second, and at once after the catalog changed."""
        if self._refreshed is None or (
            now_ms - self._refreshed[0] >= 1000 or self._refreshed[1] != self.catalog.version
        ):
            self.refresh(now_ms)

    @property
    def refreshed_at(self) -> int:
        return -1 if self._refreshed is None else self._refreshed[0]

    def refresh(self, now_ms: int) -> None:
        self._refreshed = (now_ms, self.catalog.version)
        learner = self.learner
        available = self.catalog.is_available
        self.popular = [
            (i, float(n)) for i, n in learner.popularity.most_common(PER_SOURCE * 4) if available(i)
        ][:PER_SOURCE]
        if not self.popular:  # nothing viewed yet: the catalog's own order
            self.popular = [(i, 1.0) for i in islice(self.catalog.available_ids(), PER_SOURCE)]
        self.trending = [
            (i, s) for i, s in learner.trending.top(PER_SOURCE * 4, now_ms) if available(i)
        ][:PER_SOURCE]
        self._context_top = {
            key: [(i, float(counts[i])) for i in heapq.nlargest(
                PER_SOURCE * 2, counts, key=counts.__getitem__) if available(i)][:PER_SOURCE]
            for key, counts in learner.by_context.items()
        }  # fmt: skip

    def title(self, item_id: str) -> str:
        item = self.catalog.get(item_id)
        return item.title if item is not None and item.title else item_id

    def pool(self, recommender: str, ask: Ask, query_items: Sequence[str] = ()) -> Pool:
        pool = Pool()
        learner = self.learner
        views = learner.views(ask.anonymous_id) if ask.personal and ask.anonymous_id else []
        if recommender in ("for_you", "similar"):
            current = list(views)
            if ask.product_id is not None and (not current or current[-1] != ask.product_id):
                current.append(ask.product_id)
            if recommender == "similar" and ask.product_id is not None:
                pool.add(
                    learner.viewed_together.scores([ask.product_id], PER_SOURCE),
                    1.0, f"viewed together with {self.title(ask.product_id)}",
                )  # fmt: skip
                self._similar(pool, ask.product_id, 0.4)
            if current:
                session = learner.session_of(ask.anonymous_id) if ask.anonymous_id else None
                reason = (
                    f"because you viewed {self.title(current[-1])}"
                    if views
                    else f"viewed next by visitors of {self.title(current[-1])}"
                )
                pool.add(
                    next_items(learner.knn, learner.sequential, current, PER_SOURCE,
                               exclude_session=session),
                    0.8 if recommender == "similar" else 1.0, reason,
                )  # fmt: skip
            if recommender == "for_you":
                if views:
                    pool.add(
                        learner.viewed_together.scores(views[-5:], PER_SOURCE),
                        0.5, f"often viewed with {self.title(views[-1])}",
                    )  # fmt: skip
                for category in ask.categories[:2]:
                    pool.add(
                        self._popular_in(category), 0.3, f"popular in {category}, which you like"
                    )
                for key in ask.context_keys:
                    top = self._context_top.get(key)
                    if top:
                        pool.add(top, 0.3, f"popular with visitors like you ({key})")
                        break  # the most specific context known
        elif recommender == "cart" and ask.cart:
            pool.add(
                learner.bought_together.scores(ask.cart, PER_SOURCE), 1.0,
                f"bought together with {self.title(ask.cart[-1])}",
            )  # fmt: skip
            pool.add(
                learner.viewed_together.scores(ask.cart, PER_SOURCE), 0.5,
                f"viewed together with {self.title(ask.cart[-1])}",
            )  # fmt: skip
        elif recommender == "order" and ask.order:
            pool.add(
                learner.bought_together.scores(ask.order, PER_SOURCE), 1.0,
                f"bought together with {self.title(ask.order[-1])}",
            )  # fmt: skip
            pool.add(
                learner.viewed_together.scores(ask.order, PER_SOURCE), 0.3,
                f"viewed together with {self.title(ask.order[-1])}",
            )  # fmt: skip
        elif recommender == "recently_viewed" and views:
            recent = list(dict.fromkeys(reversed(views)))
            pool.add(
                [(item, float(len(recent) - rank)) for rank, item in enumerate(recent)],
                1.0, "you viewed it recently",
            )  # fmt: skip
        elif recommender == "catalog":  # already the most viewed first (Decider._selection)
            popularity = learner.popularity
            pool.add(
                [(i, 1.0 + popularity.get(i, 0)) for i in query_items], 1.0, "in this selection"
            )
        if recommender == "popular":
            pool.add(self.popular, 1.0, "popular")
        elif recommender == "trending":
            pool.add(self.trending, 1.0, "trending now")
        elif len(pool.scores) < PER_SOURCE and recommender != "recently_viewed":
            # Too few to choose from (a new visitor, a new item): trending and popular
            # items fill the widget, at a weight that keeps them after the rest.
            pool.add(self.trending, 0.1, "trending now")
            pool.add(self.popular, 0.05, "popular")
        return pool

    def ranking(self, recommender: str, ask: Ask, items: Sequence[str]) -> Pool:
        """Scores for ranking exactly `items`, given in the caller's order (a search's
        relevance): that order (the first 1.0, the last near 0), plus half of what the
        placement's recommender would give each of them, plus an affinity for the
        visitor's two strongest categories (ASKED_AFFINITY, then half of it)."""
        pool = Pool()
        n = len(items)
        pool.add(
            [(item, float(n - rank)) for rank, item in enumerate(items)], 1.0, "in the order asked"
        )
        if not ask.personal:
            return pool
        keep = set(items)
        pool.add_kept(self.pool(recommender, ask), keep, ASKED_RECOMMENDER)
        for weight, category in zip(
            (ASKED_AFFINITY, ASKED_AFFINITY / 2), ask.categories[:2], strict=False
        ):
            members = self.catalog.in_category(category)
            pool.add(
                [(item, 1.0) for item in items if item in members],
                weight, f"in {category}, which you like",
            )  # fmt: skip
        return pool

    def _popular_in(self, category: str) -> list[tuple[str, float]]:
        popularity = self.learner.popularity
        members = islice(self.catalog.in_category(category), SIMILAR_SCAN)
        return [(i, 1.0 + popularity.get(i, 0)) for i in members]

    def _similar(self, pool: Pool, product_id: str, weight: float) -> None:
        """Items like the one in view by attributes: the same category, then the same
        brand and a near price. New items have no views, so this is how they are found."""
        item = self.catalog.get(product_id)
        if item is None or item.leaf_category is None:
            return
        if self._like_version != self.catalog.version or len(self._like) > MAX_LIKE_CACHED:
            self._like, self._like_version = {}, self.catalog.version
        scored = self._like.get(product_id)
        if scored is None:
            scored = self._like[product_id] = [
                (other, _likeness(item, candidate))
                for other in islice(self.catalog.in_category(item.leaf_category), SIMILAR_SCAN)
                if other != product_id and (candidate := self.catalog.get(other)) is not None
            ]
        pool.add(scored, weight, f"like {item.title or product_id}")


def _likeness(item: Item, other: Item) -> float:
    score = 1.0  # same category
    if item.brand is not None and item.brand == other.brand:
        score += 0.5
    if item.price and other.price:
        score += 0.5 * min(item.price, other.price) / max(item.price, other.price)
    return score
