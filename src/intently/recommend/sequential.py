"""Sequential rules, learned online: "after A, visitors view B next (or soon after)".

For every view of B, each of the session's previous `steps` views A (5 by default: on a
validation split 3, 5 and 10 did equally well, and fewer cost less) adds a rule A -> B
weighted by how close they were: 1/d^2 for B coming d views after A (Ludewig & Jannach
2018, "SR", with the "quadratic" weighting of the published rsc15 configuration). The
next item after a session's last view A is scored by the rules A -> *.
Each item keeps at most `max_rules` targets (the weakest other one forgotten when a new
one comes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


class SequentialRules:
    def __init__(self, steps: int = 5, max_rules: int = 200) -> None:
        if steps <= 0 or max_rules <= 0:
            raise ValueError("steps and max_rules must be positive")
        self.steps = steps
        self.max_rules = max_rules
        self.rules: dict[str, dict[str, float]] = {}
        self._weights = [1.0 / distance**2 for distance in range(1, steps + 1)]

    def learn(self, earlier_views: Sequence[str], item: str) -> None:
        """A session that viewed `earlier_views` (oldest first) now views `item`."""
        # A -> A counts too: visitors do view an item again (a quarter of the next clicks
        # in YOOCHOOSE); a placement that must not show the item in view excludes it.
        rules, max_rules = self.rules, self.max_rules
        recent = earlier_views[-self.steps :]
        for weight, earlier in zip(self._weights, reversed(recent), strict=False):
            targets = rules.get(earlier)
            if targets is None:
                targets = rules[earlier] = {}
            targets[item] = targets.get(item, 0.0) + weight
            if len(targets) > max_rules:
                # The weakest other target goes: a new rule starts weak and would
                # otherwise never get in.
                weakest = min((t for t in targets if t != item), key=targets.__getitem__)
                del targets[weakest]

    def learned(self) -> dict[str, dict[str, float]]:
        return self.rules

    def restore(self, rules: dict[str, dict[str, float]]) -> None:
        self.rules = checked_pairs(rules, "sequential rules")

    def scores(self, current: Sequence[str]) -> dict[str, float]:
        """The rules from the session's last view (none for an empty session)."""
        if not current:
            return {}
        return self.rules.get(current[-1], {})


def checked_pairs(pairs: object, what: str) -> dict[str, dict[str, float]]:
    """A snapshot's {item: {other item: weight}}, checked."""
    if not isinstance(pairs, dict) or not all(
        isinstance(item, str) and isinstance(others, dict)
        and all(
            isinstance(o, str) and isinstance(w, (int, float)) and 0 <= w < math.inf
            for o, w in others.items()
        )
        for item, others in pairs.items()
    ):  # fmt: skip
        raise ValueError(f"not {what}: they map items to {{item: finite weight >= 0}}")
    return {item: {o: float(w) for o, w in others.items()} for item, others in pairs.items()}
