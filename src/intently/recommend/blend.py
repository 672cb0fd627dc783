"""Next items from a session kNN and sequential rules together.

The kNN sees the whole session and finds what similar sessions went on to view; the rules
see only the last view and what tends to follow it directly. Each score is scaled by its
own best (so 1.0 is each one's top), then they are added with their weights.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from collections.abc import Set as AbstractSet

import numpy as np

from intently.recommend.sequential import SequentialRules
from intently.recommend.session_knn import SessionKNN


def next_items(
    knn: SessionKNN,
    rules: SequentialRules | None,
    current: Sequence[str],
    count: int,
    *,
    rules_weight: float = 0.5,
    neighbours_weight: float = 1.0,
    exclude_session: Hashable | None = None,
    allowed: AbstractSet[str] | None = None,
) -> list[tuple[str, float]]:
    """The `count` best next items for a session that viewed `current`, best first.
    `knn` also numbers the items (rules about items it never saw are not used)."""
    if neighbours_weight:
        scored, votes = knn.votes(current, exclude_session)
        best = votes.max(initial=0.0)
        if best > 0:
            votes = votes * (neighbours_weight / best)
    else:
        scored, votes = np.empty(0, dtype=np.intp), np.empty(0)
    followers = rules.scores(list(current)) if rules is not None and rules_weight else {}
    if followers:
        top = max(followers.values())
        numbered = [
            (index, rules_weight * score / top)
            for item, score in followers.items()
            if (index := knn.index_of(item)) is not None
        ]
        if numbered:
            both = np.concatenate([scored, np.array([i for i, _ in numbered], dtype=np.intp)])
            values = np.concatenate([votes, np.array([v for _, v in numbered])])
            scored, inverse = np.unique(both, return_inverse=True)
            votes = np.bincount(inverse, weights=values, minlength=len(scored)).astype(
                np.float64, copy=False
            )
            voted = votes != 0
            scored, votes = scored[voted], votes[voted]
    return knn.rank(scored, votes, count, allowed)
