"""Session-based kNN (V-SKNN), learned online: every product view updates it at once.

The next item of a session is predicted from past sessions that share its items, weighted
so that what the visitor did last counts most (Ludewig & Jannach, "Evaluation of
session-based recommendation algorithms", 2018; the "vector multiplication" kNN):

1. the current session's items get position weights, quadratic in their position (the
   last item 1.0, the first (1/L)^2; an item viewed twice weighs as its last view);
2. candidate neighbours are the past sessions holding any of them, the `sample` most
   recent of those (recency = a session's last event). To bound the work they are looked
   for among the `sample` sessions that most recently met each item;
3. a candidate's similarity is the sum of the weights of the current items it holds (read
   from its own items); the `k` most similar are the neighbours;
4. each neighbour votes for all its items with its similarity, divided by how far back in
   the current session its most recent shared item is (1 for the last item, 1/2 for the one
   before: "div" decay), and a vote is raised by `idf_weight` times the item's inverse
   document frequency (rare items say more about a session than popular ones).

The index is append-only arrays: a session's distinct items, and for each item the
sessions that met it, in that order. Learning is an append; nothing is retrained. Memory
is bounded by `max_sessions`: sessions live in a ring and the oldest is forgotten when a
new one needs its slot (its entries in item lists are skipped, and trimmed once they pile
up); a forgotten session that comes back starts afresh.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections.abc import Hashable, Sequence
from collections.abc import Set as AbstractSet
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Indexes = npt.NDArray[np.intp]
_TRIM_AT = 1024
# Below these sizes the neighbours are found and scored in plain Python: numpy's fixed
# cost per call (dozens of calls) outweighs the work for a handful of neighbours, which
# is the common case at decision time. Both paths compute the same votes (tested).
_SMALL_ENTRIES = 2048
_SMALL_CANDIDATES = 256


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
        # Per item: the sessions (global numbers) that met it, in that order, and how many
        # live sessions hold it (for idf).
        self._item_sessions: list[array[int]] = []
        self._holders = array("q")
        # log(n) for n = 0 .. the most holders an item has had (log 0 taken as log 1: no
        # item voted for has none), so scoring reads idf from a table instead of calling log.
        self._logs = [0.0]
        # Per live session (slot = number modulo max_sessions): its distinct items, its
        # last event time and its key.
        self._session_items: list[list[int]] = []
        self._session_last = array("d")
        self._session_key: list[Hashable] = []
        self._session_number: dict[Hashable, int] = {}
        self.sessions_seen = 0  # sessions ever started (the next session's number)

    @property
    def live_sessions(self) -> int:
        return min(self.sessions_seen, self.max_sessions)

    def _oldest_live(self) -> int:
        return self.sessions_seen - self.max_sessions

    # -- learning --------------------------------------------------------------------------

    def observe(self, session: Hashable, item: str, at: float) -> None:
        """`session` viewed `item` at time `at` (any monotonic unit, e.g. epoch ms)."""
        number = self._session_number.get(session)
        if number is None:
            number = self._start(session)
        slot = number % self.max_sessions
        if at > self._session_last[slot]:
            self._session_last[slot] = at
        index = self._item_index.get(item)
        if index is None:
            index = self._item_index[item] = len(self.items)
            self.items.append(item)
            self._item_sessions.append(array("q"))
            self._holders.append(0)
        held = self._session_items[slot]
        if index not in held:
            held.append(index)
            self._holders[index] += 1
            if self._holders[index] == len(self._logs):
                self._logs.append(math.log(len(self._logs)))
            sessions = self._item_sessions[index]
            sessions.append(number)
            # Trimmed once most entries are forgotten sessions: amortised O(1) per view.
            if len(sessions) >= _TRIM_AT and len(sessions) > 2 * self._holders[index]:
                self._trim(sessions)

    def forget(self, session: Hashable) -> None:
        """Drop a session (a person's erasure): it no longer votes, and its key is gone."""
        number = self._session_number.pop(session, None)
        if number is not None:
            slot = number % self.max_sessions
            self._clear(slot)
            self._session_key[slot] = None

    def _start(self, session: Hashable) -> int:
        number = self.sessions_seen
        self.sessions_seen += 1
        slot = number % self.max_sessions
        if number < self.max_sessions:
            self._session_items.append([])
            self._session_last.append(-math.inf)
            self._session_key.append(session)
        else:  # the slot of the oldest session: forget it
            old_key = self._session_key[slot]
            if self._session_number.get(old_key) == number - self.max_sessions:
                del self._session_number[old_key]
            self._clear(slot)
            self._session_key[slot] = session
        self._session_number[session] = number
        return number

    def _clear(self, slot: int) -> None:
        for index in self._session_items[slot]:
            self._holders[index] -= 1
        self._session_items[slot] = []
        self._session_last[slot] = -math.inf

    def _trim(self, sessions: array[int]) -> None:
        """Drop the forgotten sessions from an item's list (it keeps its order)."""
        oldest = self._oldest_live()
        sessions[:] = array("q", (n for n in sessions if n >= oldest))

    # -- snapshots (learn/snapshot.py) -------------------------------------------------------

    def learned(self) -> dict[str, Any]:
        """The whole index as plain values (session keys: strings, numbers or tuples of
        them; a tuple comes back from msgpack as a list, and is made a tuple again)."""
        return {
            "items": self.items,
            "item_sessions": [sessions.tobytes() for sessions in self._item_sessions],
            "session_items": self._session_items,
            "session_last": self._session_last.tobytes(),
            "session_key": self._session_key,
            "sessions_seen": self.sessions_seen,
        }

    def restore(self, learned: dict[str, Any]) -> None:
        """Take the index `learned()` gave (of a kNN with the same `max_sessions`);
        raises ValueError if it is not one."""
        try:
            items = [str(item) for item in learned["items"]]
            item_sessions = [array("q", bytes(raw)) for raw in learned["item_sessions"]]
            session_items = [[int(i) for i in held] for held in learned["session_items"]]
            session_last = array("d", bytes(learned["session_last"]))
            keys: list[Hashable] = [
                tuple(key) if isinstance(key, list) else key for key in learned["session_key"]
            ]
            seen = int(learned["sessions_seen"])
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise ValueError(f"not a session kNN's index: {error!r}") from None
        slots = min(seen, self.max_sessions)
        if not (len(item_sessions) == len(items) and len(session_items) == len(session_last)
                == len(keys) == slots):  # fmt: skip
            raise ValueError("a session kNN's index whose parts do not fit together")
        if any(i < 0 or i >= len(items) for held in session_items for i in held):
            raise ValueError("a session kNN's index naming items it does not have")
        if any(n < 0 or n >= seen for sessions in item_sessions for n in sessions):
            raise ValueError("a session kNN's index naming sessions it never started")
        holders = array("q", bytes(8 * len(items)))
        for held in session_items:
            for i in held:
                holders[i] += 1
        self.items, self._item_sessions = items, item_sessions
        self._item_index = {item: i for i, item in enumerate(items)}
        self._holders, self._session_items = holders, session_items
        self._session_last, self._session_key = session_last, keys
        self.sessions_seen = seen
        # A slot's number is the latest one that maps to it below `seen`.
        oldest = seen - slots
        self._session_number = {
            key: oldest + (slot - oldest) % self.max_sessions
            for slot, key in enumerate(keys) if key is not None
        }  # fmt: skip
        self._logs = [0.0] + [math.log(n) for n in range(1, max(holders, default=0) + 1)]

    # -- recommending ----------------------------------------------------------------------

    def index_of(self, item: str) -> int | None:
        return self._item_index.get(item)

    def scores(
        self, current: Sequence[str], exclude_session: Hashable | None = None
    ) -> dict[str, float]:
        """Every item the neighbours vote for, with its score (higher is better)."""
        items = self.items
        return {items[i]: v for i, v in self.vote_map(current, exclude_session).items()}

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
        return self.rank(self.vote_map(current, exclude_session), count, allowed)

    def rank(
        self,
        votes: dict[int, float],
        count: int,
        allowed: AbstractSet[str] | None = None,
        *,
        scale: float = 1.0,
    ) -> list[tuple[str, float]]:
        """The best `count` of the item numbers voted for, as (item, score times
        `scale`): highest score first, equal scores by item number (stable and
        deterministic). Items whose vote is 0 are not recommended."""
        items = self.items
        if len(votes) > 8 * count:  # thousands (the numpy path's sizes): a heap of tuples
            keyed = [(-v, i) for i, v in votes.items() if v]
            if allowed is not None:
                keyed = [(v, i) for v, i in keyed if items[i] in allowed]
            return [(items[i], -negated * scale) for negated, i in heapq.nsmallest(count, keyed)]
        # A few dozen: two sorts of the numbers, in C, make no tuple per item (by number,
        # then by vote; sorts are stable, also reversed, so equal votes stay by number).
        ranked: list[tuple[str, float]] = []
        for i in sorted(sorted(votes), key=votes.__getitem__, reverse=True):
            vote = votes[i]
            if vote and (allowed is None or items[i] in allowed):
                ranked.append((items[i], vote * scale))
                if len(ranked) == count:
                    break
        return ranked

    def vote_map(
        self, current: Sequence[str], exclude_session: Hashable | None = None
    ) -> dict[int, float]:
        """The votes, by item number: what deciding reads (a few dozen items, where dict
        arithmetic costs less than numpy's fixed cost per call)."""
        known = self._known(current)
        if not known:
            return {}
        small = self._votes_small(known, len(current), exclude_session)
        if small is not None:
            return small
        scored, votes = self._votes_numpy(known, len(current), exclude_session)
        return dict(zip(scored.tolist(), votes.tolist(), strict=True))

    def _known(self, current: Sequence[str]) -> dict[int, tuple[float, int]]:
        """The current items the index knows: number -> (position weight, position)."""
        length = len(current)
        known: dict[int, tuple[float, int]] = {}
        for at, item in enumerate(current):
            index = self._item_index.get(item)
            if index is not None:  # the last view of an item sets its weight
                known[index] = (((at + 1) / length) ** 2, at)
        return known

    def _votes_numpy(
        self, known: dict[int, tuple[float, int]], length: int, exclude_session: Hashable | None
    ) -> tuple[Indexes, Floats]:
        """Votes with numpy, for many neighbours. Sparse throughout: the work grows with
        the neighbours' items, not the catalog."""
        nothing = np.empty(0, dtype=np.intp), np.empty(0)
        shared = np.fromiter(sorted(known), dtype=np.intp, count=len(known))
        shared_weight = np.array([known[i][0] for i in shared.tolist()])
        shared_position = np.array([known[i][1] for i in shared.tolist()], dtype=np.int64)
        candidates = self._candidates(shared, exclude_session)
        if len(candidates) == 0:
            return nothing
        # Each candidate read from its own items: similarity, and its most recent shared
        # item's position in the current session.
        slots = candidates % self.max_sessions
        members = [self._session_items[slot] for slot in slots]
        sizes = np.fromiter(map(len, members), dtype=np.int64, count=len(members))
        items = np.fromiter(chain.from_iterable(members), dtype=np.intp, count=int(sizes.sum()))
        owner = np.repeat(np.arange(len(members)), sizes)
        found = np.searchsorted(shared, items)
        found[found == len(shared)] = 0
        hit = shared[found] == items
        weight = np.where(hit, shared_weight[found], 0.0)
        position = np.where(hit, shared_position[found], -1)
        similarity = np.bincount(owner, weights=weight, minlength=len(members))
        nearest = np.full(len(members), -1, dtype=np.int64)
        np.maximum.at(nearest, owner, position)
        chosen = np.arange(len(members))
        if len(chosen) > self.k:  # the most similar
            chosen = np.argpartition(-similarity, self.k - 1)[: self.k]
        # A neighbour's vote fades with how far back its most recent shared item is.
        strength = np.zeros(len(members))
        strength[chosen] = similarity[chosen] / (length - nearest[chosen])
        scored, inverse = np.unique(items, return_inverse=True)
        # (astype: bincount of nothing is an integer array, whatever the weights)
        votes: Floats = np.bincount(inverse, weights=strength[owner], minlength=len(scored)).astype(
            np.float64, copy=False
        )
        voted = votes != 0
        scored, votes = scored[voted], votes[voted]
        if self.idf_weight:
            holders = np.frombuffer(self._holders, dtype=np.int64)[scored]
            idf = np.log(self.live_sessions / np.maximum(holders, 1))
            votes *= 1.0 + self.idf_weight * idf
        return scored, votes

    def _votes_small(
        self, known: dict[int, tuple[float, int]], length: int, exclude_session: Hashable | None
    ) -> dict[int, float] | None:
        """The votes in plain Python when few sessions met the current items (None when
        too many: the numpy path answers)."""
        item_sessions = self._item_sessions
        if sum(len(item_sessions[i]) for i in known) > _SMALL_ENTRIES:
            return None
        oldest = self._oldest_live()
        excluded = (
            self._session_number.get(exclude_session) if exclude_session is not None else None
        )
        # Each candidate's similarity and most recent shared position, read from the
        # items' lists as they are walked: exact while no list is cut to `sample` (each
        # live session is then listed under every current item it holds).
        found: dict[int, tuple[float, int]] = {}
        complete = True
        wrapped = oldest > 0  # the ring has forgotten sessions: their numbers are skipped
        for index, (weight, position) in known.items():
            if wrapped:
                live = [n for n in item_sessions[index] if n >= oldest and n != excluded]
            else:  # (copies and scans in C; a session is listed once per item)
                live = item_sessions[index].tolist()
                if excluded is not None and excluded in live:
                    live.remove(excluded)
            if len(live) > self.sample:
                live, complete = live[-self.sample :], False
            for number in live:
                seen = found.get(number)
                found[number] = (
                    (weight, position)
                    if seen is None
                    else (seen[0] + weight, position if position > seen[1] else seen[1])
                )
        if len(found) > min(_SMALL_CANDIDATES, self.k, self.sample):
            return None
        votes: dict[int, float] = {}
        get = votes.get
        max_sessions, session_items = self.max_sessions, self._session_items
        current_items = known.keys()
        for number, (similarity, nearest) in found.items():
            members = session_items[number % max_sessions]
            if not complete:  # read from its own items (a set operation, in C)
                similarity, nearest = 0.0, -1
                for item in current_items & members:
                    weight, position = known[item]
                    similarity += weight
                    if position > nearest:
                        nearest = position
            strength = similarity / (length - nearest)
            if strength:
                for item in members:
                    votes[item] = get(item, 0.0) + strength
        if self.idf_weight:
            holders, logs, idf_weight = self._holders, self._logs, self.idf_weight
            log_live = math.log(self.live_sessions)
            return {
                item: vote * (1.0 + idf_weight * (log_live - logs[holders[item]]))
                for item, vote in votes.items()
                if vote
            }
        return {item: vote for item, vote in votes.items() if vote}

    def _candidates(self, shared: Indexes, exclude_session: Hashable | None) -> Indexes:
        """The `sample` most recent live sessions among those that most recently met each
        shared item (the excluded session aside)."""
        oldest = self._oldest_live()
        excluded = (
            self._session_number.get(exclude_session) if exclude_session is not None else None
        )
        parts = []
        for index in shared:
            # Entries are in the order sessions met the item, not in session order: a
            # forgotten session may sit anywhere, so every entry is checked.
            sessions = np.frombuffer(self._item_sessions[index], dtype=np.int64)
            live = sessions[sessions >= oldest]
            if excluded is not None:
                live = live[live != excluded]
            parts.append(live[-self.sample :])
        candidates = np.unique(np.concatenate(parts))
        if len(candidates) > self.sample:
            last = np.frombuffer(self._session_last, dtype=np.float64)
            recency = last[candidates % self.max_sessions]
            candidates = candidates[np.argpartition(-recency, self.sample - 1)[: self.sample]]
        return candidates
