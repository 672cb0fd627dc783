"""Slates for widgets: several items in order, diverse, under business rules, with the
probability of every pick logged.

A slate is filled position by position. Pinned items come first, in their order (a rule,
probability 1). Every other position is drawn from the candidates still allowed: each has
a weight exp(score / temperature), its score first adjusted by the rules (boost, bury) and
lowered for each item already on the slate with the same category or brand (diversity);
the draw mixes that softmax with a uniform floor, so every allowed candidate keeps a
positive probability. An item whose `group` (near-duplicates: the same product in another
colour, the same offer twice) is already on the slate is not allowed; buried items are
drawn only when nothing else is left.

The probability of the item drawn at each position, given the items above it, is logged
(a Plackett-Luce slate): the product over positions is the probability of the whole
slate, which position-aware off-policy estimators use.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterable, Sequence
from itertools import accumulate
from typing import NamedTuple

import msgspec
from msgspec import Struct

MAX_SCORE = 1e12
# Below this sum, the weights of the candidates left are computed afresh (far above the
# smallest normal float, so the weights that matter keep their precision).
_FADED = 1e-200


class Candidate(NamedTuple):  # a tuple: made by the dozen in every decision
    id: str
    score: float
    category: str | None = None
    brand: str | None = None
    group: str | None = None  # near-duplicates share a group


Facets = tuple[str | None, str | None, str | None]  # category, brand, group


def candidates_of(
    ids: Iterable[str], scores: Iterable[float], facets: Iterable[Facets]
) -> list[Candidate]:
    """Candidates from aligned ids, scores and facets: the tuples made directly (a
    NamedTuple's own constructor is Python code, its cost noticeable by the dozen)."""
    make = tuple.__new__
    return [
        make(Candidate, (item_id, score, *facet))
        for item_id, score, facet in zip(ids, scores, facets, strict=True)
    ]


# (Structs: made on every decision of an items placement, and cheaply)
class Rules(Struct, frozen=True):
    pinned: Sequence[str] = ()
    excluded: frozenset[str] = frozenset()
    boost: dict[str, float] = msgspec.field(default_factory=dict)  # added to the score
    buried: frozenset[str] = frozenset()


class Slate(Struct, frozen=True):
    items: list[str]
    # The probability of each item at its position, given the items above it.
    propensities: list[float]
    reasons: list[str]


def build_slate(
    candidates: Iterable[Candidate],
    size: int,
    rng: random.Random,
    rules: Rules | None = None,
    *,
    temperature: float = 0.1,
    floor: float = 0.05,
    same_category_penalty: float = 0.3,
    same_brand_penalty: float = 0.15,
) -> Slate:
    if size < 0:
        raise ValueError("a slate size cannot be negative")
    if temperature <= 0 or not 0 < floor <= 1:
        raise ValueError("temperature must be positive and the floor in (0, 1]")
    if same_category_penalty < 0 or same_brand_penalty < 0:
        raise ValueError("the diversity penalties cannot be negative")
    rules = rules or Rules()
    if not all(math.isfinite(boost) for boost in rules.boost.values()):
        raise ValueError("boosts must be finite numbers")
    pool: dict[str, Candidate] = {}
    for candidate in candidates:
        if not math.isfinite(candidate.score):
            raise ValueError(f"the score of {candidate.id!r} is not a finite number")
        if candidate.id not in rules.excluded and candidate.id not in pool:
            pool[candidate.id] = candidate
    slate = Slate([], [], [])
    placed: list[Candidate] = []
    for item in rules.pinned:
        if len(slate.items) == size:
            break
        pinned = pool.get(item)
        if pinned is not None and (
            pinned.group is None or all(pinned.group != p.group for p in placed)
        ):
            del pool[item]
            placed.append(pinned)
            slate.items.append(pinned.id)
            slate.propensities.append(1.0)
            slate.reasons.append("pinned by a rule")
    if len(slate.items) < size and pool:
        _draw(list(pool.values()), placed, size, rng, rules, slate, (
            temperature, floor, same_category_penalty, same_brand_penalty))  # fmt: skip
    return slate


def _draw(
    candidates: list[Candidate],
    placed: list[Candidate],
    size: int,
    rng: random.Random,
    rules: Rules,
    slate: Slate,
    knobs: tuple[float, float, float, float],
) -> None:
    """Fill the slate's remaining positions after the `placed` (pinned) items.

    Plain Python over a few dozen candidates, with one weight per candidate kept from
    one position to the next (0 for those out of the draw: placed, in a placed item's
    group, or buried while others are left). Placing an item multiplies the weights of
    those sharing its category (or brand) by exp(-penalty / temperature) instead of
    recomputing them. Weights start relative to the best candidate (at most 1: nothing
    overflows); buried candidates, once drawn from, and weights fading towards underflow
    are computed afresh from the scores, relative to the best left. Each position draws
    from the mixture its probabilities describe: uniform with probability `floor`, else
    by weight."""
    temperature, floor, category_penalty, brand_penalty = knobs
    boost = rules.boost
    if boost:
        adjusted = [c.score + boost.get(c.id, 0.0) for c in candidates]
    else:
        adjusted = [c.score for c in candidates]
    if max(adjusted) > MAX_SCORE or min(adjusted) < -MAX_SCORE:
        adjusted = [min(max(score, -MAX_SCORE), MAX_SCORE) for score in adjusted]
    # Categories and brands numbered (apart: a brand may be named like a category); 0 is
    # "none", which is never penalized.
    categories: dict[str | None, int] = {None: 0}
    category = [categories.setdefault(c.category, len(categories)) for c in candidates]
    brands: dict[str | None, int] = {None: 0}
    brands_at = len(categories)
    brand = [brands_at + brands.setdefault(c.brand, len(brands)) for c in candidates]
    penalty = [0.0] * (brands_at + len(brands))
    sharing: list[list[int]] = [[] for _ in penalty]  # the candidates with each code
    for i, code in enumerate(category):
        sharing[code].append(i)
    for i, code in enumerate(brand):
        sharing[code].append(i)
    groups = {p.group for p in placed if p.group is not None}
    if groups:
        left = [i for i, c in enumerate(candidates) if c.group is None or c.group not in groups]
    else:
        left = list(range(len(candidates)))
    buried = rules.buried
    later = [i for i in left if candidates[i].id in buried] if buried else []
    drawing = [i for i in left if candidates[i].id not in buried] if later else left
    weight = [0.0] * len(candidates)

    def weigh_afresh() -> None:
        scores = [adjusted[i] - penalty[category[i]] - penalty[brand[i]] for i in drawing]
        top = max(scores)
        for i, score in zip(drawing, scores, strict=True):
            weight[i] = math.exp((score - top) / temperature)

    everyone = len(candidates)
    fading = [0.0, *(math.exp(-category_penalty / temperature) for _ in range(1, brands_at))]
    fading += [0.0, *(math.exp(-brand_penalty / temperature) for _ in range(1, len(brands)))]

    def penalize(code: int) -> None:
        if code and code != brands_at:  # (brands_at is "no brand")
            penalty[code] += category_penalty if code < brands_at else brand_penalty
            members = sharing[code]
            # Shared by every candidate (a widget of one category, often): all weights
            # fade alike, which changes no probability; they are left as they are.
            if len(members) < everyone:
                factor = fading[code]
                for i in members:
                    weight[i] *= factor

    for pinned in placed:
        penalize(categories.get(pinned.category, 0))
        penalize(brands_at + brands.get(pinned.brand, 0))
    if drawing:
        weigh_afresh()
    for point in [rng.random() for _ in range(size - len(slate.items))]:
        if not drawing:
            if not later:
                return
            drawing, later = later, []  # nothing else is left: the buried ones
            weigh_afresh()
        running = list(accumulate(weight))
        if running[-1] < _FADED:
            weigh_afresh()
            running = list(accumulate(weight))
        total = running[-1]
        if point < floor:
            index = drawing[min(int(point / floor * len(drawing)), len(drawing) - 1)]
        else:
            index = bisect.bisect_right(running, (point - floor) / (1 - floor) * total)
            if index == everyone or weight[index] == 0:  # (rounding at the very end)
                index = max(i for i in drawing if weight[i] > 0)
        chosen = candidates[index]
        reason = (
            "buried by a rule: nothing else was left"
            if chosen.id in buried
            else "boosted by a rule"
            if chosen.id in boost
            else "ranked by score"
        )
        slate.items.append(chosen.id)
        slate.propensities.append((1 - floor) * weight[index] / total + floor / len(drawing))
        slate.reasons.append(reason)
        drawing.remove(index)
        weight[index] = 0.0
        if chosen.group is not None:
            for i in [i for i in drawing if candidates[i].group == chosen.group]:
                drawing.remove(i)
                weight[i] = 0.0
            later = [i for i in later if candidates[i].group != chosen.group]
        penalize(category[index])
        penalize(brand[index])
