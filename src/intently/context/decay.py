"""Recency-decayed scores, kept with forward decay.

A score that halves every `half_life` would need every entry rewritten as time passes.
Forward decay stores each contribution scaled *up* by its age relative to a fixed base
time, `w * 2**((t - base) / half_life)`, so adding is one multiplication and one addition,
and reading at `now` divides by `2**((now - base) / half_life)`. All entries of a map share
the base, so ratios between them need no decay at all. When the exponent grows large the
map is rebased (every entry scaled down once) to stay far from float overflow.
"""

from __future__ import annotations

import heapq

# 2**600 is about 4e180: far from the float limit (1.8e308) even summed many times over.
_MAX_EXPONENT = 600.0


class DecayedScores:
    """Operations on a `dict[str, float]` of forward-decayed scores with base `base_ms`.

    The dict and the base live in the owner's struct (so they are saved with it); this
    class only holds the half-life and the bound on entries.

    >>> scores, hour = {}, 3_600_000
    >>> decay = DecayedScores(half_life_ms=hour, max_entries=10)
    >>> base = decay.add(scores, 0, "shoes", 1.0, at_ms=0)
    >>> base = decay.add(scores, base, "bags", 1.0, at_ms=hour)
    >>> [(k, round(v, 3)) for k, v in decay.top(scores, base, now_ms=hour, count=2)]
    [('bags', 1.0), ('shoes', 0.5)]
    """

    __slots__ = ("half_life_ms", "max_entries")

    def __init__(self, half_life_ms: float, max_entries: int) -> None:
        self.half_life_ms = half_life_ms
        self.max_entries = max_entries

    def add(
        self, scores: dict[str, float], base_ms: int, key: str, weight: float, at_ms: int
    ) -> int:
        """Add `weight` for `key` at `at_ms`; returns the (possibly new) base."""
        exponent = (at_ms - base_ms) / self.half_life_ms
        if exponent > _MAX_EXPONENT:
            base_ms = self.rebase(scores, base_ms, at_ms)
            exponent = 0.0
        scores[key] = scores.get(key, 0.0) + weight * 2.0**exponent
        if len(scores) > self.max_entries:
            # Forget the weakest interest: all entries share the base, so raw values compare.
            del scores[min(scores, key=scores.__getitem__)]
        return base_ms

    def rebase(self, scores: dict[str, float], base_ms: int, new_base_ms: int) -> int:
        factor = 2.0 ** (-(new_base_ms - base_ms) / self.half_life_ms)
        for key in scores:
            scores[key] *= factor
        return new_base_ms

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

    def merge_into(
        self,
        into: dict[str, float],
        into_base_ms: int,
        other: dict[str, float],
        other_base_ms: int,
    ) -> int:
        """Add `other` (with its own base) into `into`; returns `into`'s (new) base."""
        if (other_base_ms - into_base_ms) / self.half_life_ms > _MAX_EXPONENT:
            into_base_ms = self.rebase(into, into_base_ms, other_base_ms)
        factor = 2.0 ** ((other_base_ms - into_base_ms) / self.half_life_ms)
        for key, raw in other.items():
            into[key] = into.get(key, 0.0) + raw * factor
        while len(into) > self.max_entries:
            del into[min(into, key=into.__getitem__)]
        return into_base_ms
