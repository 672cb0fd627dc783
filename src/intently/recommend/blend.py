"""Next items from a session kNN and sequential rules together.

The kNN sees the whole session and finds what similar sessions went on to view; the rules
see only the last view and what tends to follow it directly. Each score is scaled by its
own best (so 1.0 is each one's top), then they are added with their weights.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from collections.abc import Set as AbstractSet

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
    if rules_weight < 0 or neighbours_weight < 0:
        raise ValueError("the weights cannot be negative")
    votes = knn.vote_map(current, exclude_session) if neighbours_weight else {}
    # The votes are scaled (their best to `neighbours_weight`) as they are ranked, not
    # before: only the `count` kept need it. The rules' scores join them unscaled.
    best = max(votes.values(), default=0.0)
    scale = neighbours_weight / best if best > 0 else 1.0
    followers = rules.scores(list(current)) if rules is not None and rules_weight else {}
    if followers:
        top = max(followers.values())
        for item, score in followers.items():
            index = knn.index_of(item)
            if index is not None:
                votes[index] = votes.get(index, 0.0) + rules_weight * score / top / scale
    return knn.rank(votes, count, allowed, scale=scale)
