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

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

MAX_SCORE = 1e12


class Candidate(NamedTuple):  # a tuple: made by the dozen in every decision
    id: str
    score: float
    category: str | None = None
    brand: str | None = None
    group: str | None = None  # near-duplicates share a group


@dataclass(frozen=True)
class Rules:
    pinned: Sequence[str] = ()
    excluded: frozenset[str] = frozenset()
    boost: dict[str, float] = field(default_factory=dict)  # added to the score
    buried: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Slate:
    items: list[str]
    # The probability of each item at its position, given the items above it.
    propensities: list[float]
    reasons: list[str]


def build_slate(
    candidates: Iterable[Candidate],
    size: int,
    rng: np.random.Generator,
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
    rng: np.random.Generator,
    rules: Rules,
    slate: Slate,
    knobs: tuple[float, float, float, float],
) -> None:
    """Fill the slate's remaining positions after the `placed` (pinned) items.

    Plain Python over a few dozen candidates. Penalties are kept per category and per
    brand (what the items on the slate sharing it cost), so a placement costs one
    addition; each position's weights are exp((score - penalties - best) / temperature),
    relative to that position's best, which weighs 1: nothing overflows, and the sum
    never vanishes whatever the temperature."""
    temperature, floor, category_penalty, brand_penalty = knobs
    adjusted = [
        min(max(c.score + rules.boost.get(c.id, 0.0), -MAX_SCORE), MAX_SCORE) for c in candidates
    ]
    # Categories and brands numbered (apart: a brand may be named like a category); 0 is
    # "none", whose penalty stays 0.
    categories: dict[str | None, int] = {None: 0}
    category = [categories.setdefault(c.category, len(categories)) for c in candidates]
    brands: dict[str | None, int] = {None: 0}
    brands_at = len(categories)
    brand = [brands_at + brands.setdefault(c.brand, len(brands)) for c in candidates]
    penalty = [0.0] * (brands_at + len(brands))
    groups = {p.group for p in placed if p.group is not None}
    left = [
        i for i, c in enumerate(candidates) if c.group is None or c.group not in groups
    ]  # fmt: skip
    buried = [c.id in rules.buried for c in candidates]

    def took(taken: Candidate) -> None:
        code = categories.get(taken.category, 0)
        if code:
            penalty[code] += category_penalty
        code = brands.get(taken.brand, 0)
        if code:
            penalty[brands_at + code] += brand_penalty

    for pinned in placed:
        took(pinned)
    while len(slate.items) < size:
        choices = [i for i in left if not buried[i]] or left
        if not choices:
            return
        scores = [adjusted[i] - penalty[category[i]] - penalty[brand[i]] for i in choices]
        best = max(scores)
        weights = [math.exp((score - best) / temperature) for score in scores]
        total = sum(weights)
        share = floor / len(choices)
        keep = (1 - floor) / total
        point = rng.random()
        running = 0.0
        at = len(choices) - 1  # rounding at the very end
        for j, weight in enumerate(weights):
            running += keep * weight + share
            if point < running:
                at = j
                break
        index = choices[at]
        chosen = candidates[index]
        reason = (
            "buried by a rule: nothing else was left"
            if buried[index]
            else "boosted by a rule"
            if chosen.id in rules.boost
            else "ranked by score"
        )
        slate.items.append(chosen.id)
        slate.propensities.append(keep * weights[at] + share)
        slate.reasons.append(reason)
        if chosen.group is None:
            left.remove(index)
        else:
            left = [i for i in left if i != index and candidates[i].group != chosen.group]
        took(chosen)
