"""Session-based kNN (V-SKNN), learned online: every product view updates it at once.

The next item of a session is predicted from past sessions that share its items, weighted
so that what the visitor did last counts most (Ludewig & Jannach, "Evaluation of
session-based recommendation algorithms", 2018; the "vector multiplication" kNN):

1. the current session's items get position weights, quadratic in their position (the
   last item 1.0, the first (1/L)^2);
2. candidate neighbours are the past sessions holding any of them, the `sample` most
   recent of those (recency = a session's last event; to bound the work, they are chosen
   among the `sample` sessions that most recently met each item);
3. a candidate's similarity is the sum of the weights of the current items it holds; the
   `k` most similar are the neighbours;
4. each neighbour votes for all its items with its similarity, divided by how far back in
   the current session its most recent shared item is (1 for the last item, 1/2 for the one
   before: "div" decay), and a vote is raised by `idf_weight` times the item's inverse
   document frequency (rare items say more about a session than popular ones).

The index is a set of append-only arrays: a session's distinct items, and for each item the
sessions that hold it, in the order they met it. Learning is an append; nothing is
retrained. Memory is bounded by `max_sessions`: the oldest sessions are forgotten first
(their entries are skipped, and trimmed from an item's list once it holds many of them).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Hashable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from itertools import chain

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]


class SessionKNN:
    """An online V-SKNN recommender over item ids (strings)."""

    def __init__(
        self,
        k: int = 500,
        sample: int = 5000,
        idf_weight: float = 5.0,
        max_sessions: int = 1_000_000,
    ) -> None:
        if k <= 0 or sample <= 0 or max_sessions <= 0:
            raise ValueError("k, sample and max_sessions must be positive")
        self.k = k
        self.sample = sample
        self.idf_weight = idf_weight
        self.max_sessions = max_sessions
        self._item_index: dict[str, int] = {}
        self.items: list[str] = []
        # Per item: the sessions (global numbers) holding it, in the order they met it.
        self._item_sessions: list[array[int]] = []
        # Per live session (by number modulo max_sessions): its distinct items, and its
        # last event time.
        self._session_items: list[list[int]] = []
        self._session_last = array("d")
        self._session_number: dict[Hashable, int] = {}
        self._session_key: list[Hashable] = []
        self.sessions_seen = 0  # sessions ever started (the next session's number)

    # -- learning --------------------------------------------------------------------------

    def observe(self, session: Hashable, item: str, at: float) -> None:
        """`session` viewed `item` at time `at` (any monotonic unit, e.g. epoch ms)."""
        number = self._session_number.get(session)
        if number is None or number < self.sessions_seen - self.max_sessions:
            number = self._start(session)
        slot = number % self.max_sessions
        if at > self._session_last[slot]:
            self._session_last[slot] = at
        index = self._item_index.get(item)
        if index is None:
            index = self._item_index[item] = len(self.items)
            self.items.append(item)
            self._item_sessions.append(array("q"))
        held = self._session_items[slot]
        if index not in held:
            held.append(index)
            sessions = self._item_sessions[index]
            sessions.append(number)
            if len(sessions) >= 1024 and sessions[0] < self.sessions_seen - self.max_sessions:
                self._trim(sessions)

    def _start(self, session: Hashable) -> int:
        number = self.sessions_seen
        self.sessions_seen += 1
        if number < self.max_sessions:
            self._session_items.append([])
            self._session_last.append(-math.inf)
            self._session_key.append(session)
        else:  # the slot of the oldest session: forget it
            slot = number % self.max_sessions
            self._session_number.pop(self._session_key[slot], None)
            self._session_items[slot] = []
            self._session_last[slot] = -math.inf
            self._session_key[slot] = session
        self._session_number[session] = number
        return number

    def _trim(self, sessions: array[int]) -> None:
        oldest_live = self.sessions_seen - self.max_sessions
        first_live = next((i for i, n in enumerate(sessions) if n >= oldest_live), len(sessions))
        del sessions[:first_live]

    # -- recommending ----------------------------------------------------------------------

    def index_of(self, item: str) -> int | None:
        return self._item_index.get(item)

    def scores(
        self, current: Sequence[str], exclude_session: Hashable | None = None
    ) -> dict[str, float]:
        """Every item the neighbours vote for, with its score (higher is better)."""
        scored, votes = self.votes(current, exclude_session)
        return {self.items[i]: float(votes[i]) for i in scored}

    def recommend(
        self,
        current: Sequence[str],
        count: int,
        exclude_session: Hashable | None = None,
        allowed: AbstractSet[str] | None = None,
    ) -> list[tuple[str, float]]:
        """The `count` best items for a session that viewed `current` (oldest first), best
        first; ties by the order items were first seen; only `allowed` items if given.
        Items already in `current` may be recommended again (visitors go back to them)."""
        scored, votes = self.votes(current, exclude_session)
        return self.rank(scored, votes, count, allowed)

    def rank(
        self,
        scored: npt.NDArray[np.intp],
        votes: Floats,
        count: int,
        allowed: AbstractSet[str] | None = None,
    ) -> list[tuple[str, float]]:
        """The best `count` of the `scored` item numbers by `votes`, as (item, score)."""
        if allowed is not None:
            items = self.items
            scored = scored[[items[i] in allowed for i in scored]]
        if len(scored) == 0:
            return []
        # Highest score first; equal scores by item number (stable and deterministic).
        order = scored[np.lexsort((scored, -votes[scored]))][:count]
        return [(self.items[i], float(votes[i])) for i in order]

    def votes(
        self, current: Sequence[str], exclude_session: Hashable | None = None
    ) -> tuple[npt.NDArray[np.intp], Floats]:
        """The numbers of the items voted for, and every item's votes (by number)."""
        length = len(current)
        weight: dict[int, float] = {}
        last_position: dict[int, int] = {}
        for position, item in enumerate(current):
            index = self._item_index.get(item)
            if index is not None:  # the last occurrence of an item sets its weight
                weight[index] = ((position + 1) / length) ** 2
                last_position[index] = position
        empty = np.empty(0, dtype=np.intp), np.zeros(len(self.items))
        if not weight:
            return empty
        excluded = (
            self._session_number.get(exclude_session) if exclude_session is not None else None
        )
        # Each item's most recent sessions (one more if one of them may be excluded): the
        # sample is taken among them.
        tail = self.sample + (excluded is not None)
        parts = [np.frombuffer(self._item_sessions[i], dtype=np.int64)[-tail:] for i in weight]
        sessions = np.concatenate(parts)
        sizes = [len(part) for part in parts]
        weights = np.repeat(np.fromiter(weight.values(), dtype=np.float64), sizes)
        positions = np.repeat(np.fromiter(last_position.values(), dtype=np.int64), sizes)
        keep = sessions >= self.sessions_seen - self.max_sessions
        if excluded is not None:
            keep &= sessions != excluded
        if not keep.all():
            sessions, weights, positions = sessions[keep], weights[keep], positions[keep]
        if len(sessions) == 0:
            return empty
        candidates, where = np.unique(sessions, return_inverse=True)
        similarity = np.bincount(where, weights=weights)
        nearest = np.full(len(candidates), -1, dtype=np.int64)
        np.maximum.at(nearest, where, positions)
        chosen = np.arange(len(candidates))
        if len(candidates) > self.sample:  # the most recent sessions
            last = np.frombuffer(self._session_last, dtype=np.float64)
            recency = last[candidates % self.max_sessions]
            chosen = np.argpartition(-recency, self.sample - 1)[: self.sample]
        if len(chosen) > self.k:  # the most similar of them
            chosen = chosen[np.argpartition(-similarity[chosen], self.k - 1)[: self.k]]
        # A neighbour's vote fades with how far back its most recent shared item is.
        strength = similarity[chosen] / (length - nearest[chosen])
        members = [self._session_items[n % self.max_sessions] for n in candidates[chosen]]
        sizes = [len(m) for m in members]
        items = np.fromiter(chain.from_iterable(members), dtype=np.int64)
        each = np.repeat(strength, sizes)
        votes: Floats = np.bincount(items, weights=each, minlength=len(self.items)).astype(
            np.float64, copy=False
        )
        scored = np.flatnonzero(votes)
        if self.idf_weight:
            votes[scored] *= 1.0 + self.idf_weight * self._idf(scored)
        return scored, votes

    def _idf(self, items: Iterable[int]) -> Floats:
        """log(sessions / sessions holding the item), over the sessions remembered."""
        live = min(self.sessions_seen, self.max_sessions)
        oldest = self.sessions_seen - self.max_sessions
        counts = np.fromiter(
            (_live_count(self._item_sessions[i], oldest) for i in items), dtype=np.float64
        )
        return np.log(live / np.maximum(counts, 1.0))


def _live_count(sessions: array[int], oldest_live: int) -> int:
    if not sessions or sessions[0] >= oldest_live:
        return len(sessions)
    return sum(1 for n in sessions if n >= oldest_live)
