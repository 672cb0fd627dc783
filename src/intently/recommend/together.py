"""Items that go together, and items trending now, learned online.

`CoOccurrence` counts pairs of items seen in the same session ("viewed together") or in
the same order ("bought together"): when a session views B, every distinct item among its
last `window` views counts one more pair with B, both ways. Each item keeps its `max_neighbours`
strongest partners (when a new partner comes to a full list, the weakest other one goes,
so new pairs can get in).

`Trending` is popularity with exponential time decay: a view at time t adds 2^((t - base) /
half_life) to its item (forward decay: old scores never need rescaling, until the
exponent grows large, when every score is rebased at once).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import Any

from intently.recommend.sequential import checked_pairs

_MAX_EXPONENT = 600.0


class CoOccurrence:
    def __init__(self, max_neighbours: int = 200, window: int = 5) -> None:
        if max_neighbours <= 0 or window <= 0:
            raise ValueError("max_neighbours and window must be positive")
        self.max_neighbours = max_neighbours
        self.window = window
        self.pairs: dict[str, dict[str, float]] = {}

    def learn(self, earlier: Sequence[str], item: str) -> None:
        """A session whose last views were `earlier` now views `item`: it pairs with each
        distinct item of the last `window` views (older ones say little, and would make a
        long session cost a pair per view it ever made)."""
        add = self._add
        for other in set(earlier[-self.window :]):
            if other != item:
                add(other, item)
                add(item, other)

    def learn_basket(self, items: Sequence[str]) -> None:
        """Items bought in one order: every pair of distinct items counts once."""
        distinct = list(dict.fromkeys(items))
        for i, first in enumerate(distinct):
            for second in distinct[i + 1 :]:
                self._add(first, second)
                self._add(second, first)

    def _add(self, item: str, partner: str) -> None:
        partners = self.pairs.get(item)
        if partners is None:
            partners = self.pairs[item] = {}
        partners[partner] = partners.get(partner, 0.0) + 1.0
        if len(partners) > self.max_neighbours:
            weakest = min((p for p in partners if p != partner), key=partners.__getitem__)
            del partners[weakest]

    def learned(self) -> dict[str, dict[str, float]]:
        return self.pairs

    def restore(self, pairs: dict[str, dict[str, float]]) -> None:
        self.pairs = checked_pairs(pairs, "co-occurrence counts")

    def scores(self, current: Sequence[str], count: int) -> list[tuple[str, float]]:
        """Items that go with those of `current` (summed over them), best first, ties by
        name; items of `current` themselves are left out."""
        held = set(current)
        totals: dict[str, float] = {}
        for item in held:
            for partner, pairs in self.pairs.get(item, {}).items():
                if partner not in held:
                    totals[partner] = totals.get(partner, 0.0) + pairs
        return heapq.nsmallest(count, totals.items(), key=lambda kv: (-kv[1], kv[0]))


class Trending:
    def __init__(self, half_life_ms: float = 6 * 3600 * 1000.0) -> None:
        if half_life_ms <= 0:
            raise ValueError("half_life_ms must be positive")
        self.half_life_ms = half_life_ms
        self.base_ms: float | None = None
        self.raw: dict[str, float] = {}

    def learn(self, item: str, at_ms: float) -> None:
        if self.base_ms is None:
            self.base_ms = at_ms
        exponent = (at_ms - self.base_ms) / self.half_life_ms
        if exponent > _MAX_EXPONENT:  # rebase every score, so the numbers stay finite
            factor = 2.0 ** (-exponent)
            self.raw = {key: value * factor for key, value in self.raw.items()}
            self.base_ms, exponent = at_ms, 0.0
        self.raw[item] = self.raw.get(item, 0.0) + 2.0**exponent

    def learned(self) -> dict[str, Any]:
        return {"base_ms": self.base_ms, "raw": self.raw}

    def restore(self, learned: dict[str, Any]) -> None:
        base, raw = learned.get("base_ms"), learned.get("raw")
        finite = (base is None or (isinstance(base, (int, float)) and math.isfinite(base))) and (
            isinstance(raw, dict)
            and all(isinstance(n, (int, float)) and 0 <= n < math.inf for n in raw.values())
        )
        if not finite:
            raise ValueError("not trending counts: {base_ms, raw: {item: finite count >= 0}}")
        assert isinstance(raw, dict)
        self.base_ms = None if base is None else float(base)
        self.raw = {str(item): float(count) for item, count in raw.items()}

    def score(self, item: str, now_ms: float) -> float:
        """The item's decayed count at `now_ms` (1.0 per view made at `now_ms`)."""
        if self.base_ms is None:
            return 0.0
        return float(self.raw.get(item, 0.0) * 2.0 ** ((self.base_ms - now_ms) / self.half_life_ms))

    def top(self, count: int, now_ms: float) -> list[tuple[str, float]]:
        """The `count` items trending most at `now_ms`, best first, ties by name."""
        best = heapq.nsmallest(count, self.raw.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(item, self.score(item, now_ms)) for item, _ in best]
