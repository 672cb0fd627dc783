"""Recency-decayed scores, kept with forward decay.

A score that halves every `half_life` would need every entry rewritten as time passes.
Forward decay stores each contribution scaled *up* by its age relative to a fixed base
time, `w * 2**((t - base) / half_life)`, so adding is one multiplication and one addition,
and reading at `now` divides by `2**((now - base) / half_life)`. All entries share the
base, so ratios between them need no decay at all. When the exponent grows large the
maps are rebased (every entry scaled down once) to stay far from float overflow.
"""

from __future__ import annotations

import heapq
from sys import intern
from typing import Protocol

# 2**600 is about 4e180: far from the float limit (1.8e308) even summed many times over.
_MAX_EXPONENT = 600.0


class Affinities(Protocol):
    """A session or a profile: category and brand scores (None until the first) that
    share one base time."""

    affinity_base_ms: int
    categories: dict[str, float] | None
    brands: dict[str, float] | None


class DecayedScores:
    """Forward-decayed category and brand scores of an `Affinities` owner.

    The maps and the base live in the owner's struct (so they are saved with it); this
    class only holds the half-life and the bound on entries per map.

    >>> from types import SimpleNamespace
    >>> hour = 3_600_000
    >>> owner = SimpleNamespace(affinity_base_ms=0, categories=None, brands=None)
    >>> decay = DecayedScores(half_life_ms=hour, max_entries=10)
    >>> decay.add(owner, "shoes", None, 1.0, at_ms=0)
    >>> decay.add(owner, "bags", None, 1.0, at_ms=hour)
    >>> [(k, round(v, 3)) for k, v in decay.top(owner.categories, 0, now_ms=hour, count=2)]
    [('bags', 1.0), ('shoes', 0.5)]
    """

    __slots__ = ("half_life_ms", "max_entries")

    def __init__(self, half_life_ms: float, max_entries: int) -> None:
        self.half_life_ms = half_life_ms
        self.max_entries = max_entries

    def add(
        self, owner: Affinities, category: str | None, brand: str | None, weight: float, at_ms: int
    ) -> None:
        """Add `weight` of interest in `category` and `brand` (either may be None)."""
        if category is None and brand is None:
            return
        exponent = (at_ms - owner.affinity_base_ms) / self.half_life_ms
        if exponent > _MAX_EXPONENT:
            self._rebase(owner, at_ms)
            exponent = 0.0  # the base is now `at_ms`
        scaled = weight * 2.0**exponent
        if category is not None:
            if owner.categories is None:
                owner.categories = {}
            self._add(owner.categories, category, scaled)
        if brand is not None:
            if owner.brands is None:
                owner.brands = {}
            self._add(owner.brands, brand, scaled)

    def merge(self, into: Affinities, other: Affinities) -> None:
        """Add `other`'s scores (with its own base) into `into`'s."""
        if (other.affinity_base_ms - into.affinity_base_ms) / self.half_life_ms > _MAX_EXPONENT:
            self._rebase(into, other.affinity_base_ms)
        factor = 2.0 ** ((other.affinity_base_ms - into.affinity_base_ms) / self.half_life_ms)
        for source, name in ((other.categories, "categories"), (other.brands, "brands")):
            if not source:
                continue
            target: dict[str, float] | None = getattr(into, name)
            if target is None:
                target = {}
                setattr(into, name, target)
            for key, raw in source.items():
                target[key] = target.get(key, 0.0) + raw * factor
            while len(target) > self.max_entries:
                del target[min(target, key=target.__getitem__)]

    def _add(self, scores: dict[str, float], key: str, scaled: float) -> None:
        held = scores.get(key)
        if held is not None:
            scores[key] = held + scaled
            return
        scores[intern(key)] = scaled  # a new key: shared with every other owner's
        if len(scores) > self.max_entries:
            # Forget the weakest interest: all entries share the base, so raw values compare.
            del scores[min(scores, key=scores.__getitem__)]

    def _rebase(self, owner: Affinities, new_base_ms: int) -> None:
        # Both maps share the base: rebasing one alone would skew the other.
        factor = 2.0 ** (-(new_base_ms - owner.affinity_base_ms) / self.half_life_ms)
        for scores in (owner.categories, owner.brands):
            for key in scores or ():
                scores[key] *= factor  # type: ignore[index]
        owner.affinity_base_ms = new_base_ms

    def value(self, scores: dict[str, float], base_ms: int, key: str, now_ms: int) -> float:
        raw = scores.get(key, 0.0)
        return raw * 2.0 ** (-(now_ms - base_ms) / self.half_life_ms) if raw else 0.0

    def top(
        self, scores: dict[str, float], base_ms: int, now_ms: int, count: int
    ) -> list[tuple[str, float]]:
        """The `count` strongest entries at `now_ms`, strongest first (ties by key)."""
        factor = 2.0 ** (-(now_ms - base_ms) / self.half_life_ms)
        best = heapq.nsmallest(count, scores.items(), key=lambda item: (-item[1], item[0]))
        return [(key, raw * factor) for key, raw in best]
