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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

MAX_SCORE = 1e12


@dataclass(frozen=True)
class Candidate:
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
    if not all(np.isfinite(boost) for boost in rules.boost.values()):
        raise ValueError("boosts must be finite numbers")
    pool: dict[str, Candidate] = {}
    for candidate in candidates:
        if not np.isfinite(candidate.score):
            raise ValueError(f"the score of {candidate.id!r} is not a finite number")
        if candidate.id not in rules.excluded and candidate.id not in pool:
            pool[candidate.id] = candidate
    slate = Slate([], [], [])
    groups: set[str] = set()
    categories: dict[str, int] = {}
    brands: dict[str, int] = {}

    def place(candidate: Candidate, probability: float, reason: str) -> None:
        slate.items.append(candidate.id)
        slate.propensities.append(probability)
        slate.reasons.append(reason)
        del pool[candidate.id]
        if candidate.group is not None:
            groups.add(candidate.group)
        if candidate.category is not None:
            categories[candidate.category] = categories.get(candidate.category, 0) + 1
        if candidate.brand is not None:
            brands[candidate.brand] = brands.get(candidate.brand, 0) + 1

    for item in rules.pinned:
        if len(slate.items) == size:
            break
        pinned = pool.get(item)
        if pinned is not None and (pinned.group is None or pinned.group not in groups):
            place(pinned, 1.0, "pinned by a rule")
    while len(slate.items) < size:
        allowed = [c for c in pool.values() if c.group is None or c.group not in groups]
        if not allowed:
            break
        unburied = [c for c in allowed if c.id not in rules.buried]
        choices = unburied or allowed
        scores = np.array([
            c.score + rules.boost.get(c.id, 0.0)
            - same_category_penalty * categories.get(c.category or "", 0) * (c.category is not None)
            - same_brand_penalty * brands.get(c.brand or "", 0) * (c.brand is not None)
            for c in choices
        ])  # fmt: skip
        # Clipped, so that a huge score plus a huge boost cannot overflow into inf or NaN.
        scores = np.clip(scores, -MAX_SCORE, MAX_SCORE)
        weights = np.exp((scores - scores.max()) / temperature)
        probabilities = (1 - floor) * weights / weights.sum() + floor / len(choices)
        probabilities /= probabilities.sum()
        index = int(rng.choice(len(choices), p=probabilities))
        chosen = choices[index]
        reason = (
            "buried by a rule: nothing else was left"
            if chosen.id in rules.buried
            else "boosted by a rule"
            if chosen.id in rules.boost
            else "ranked by score"
        )
        place(chosen, float(probabilities[index]), reason)
    return slate
