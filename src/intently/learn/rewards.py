"""Rewards: what happened after a decision, returned to the decision that caused it.

A decision showed items (products, or offers) to a visitor at a placement. Within the
attribution window (30 minutes by default) the visitor's later events are matched to it:

- an event that names the decision (`decision_id` in its properties) goes to it, if the
  event comes from the same visitor (a decision id is no licence to credit it);
- otherwise, the most recent open decision of the same visitor that showed the event's
  item gets it (last touch).

A visitor is known by several keys (the device, `a:<anonymousId>`, and the profile id
once known): a decision made for a logged-in user and a click from the browser they use
meet through the profile, a decision made while anonymous and a click after login meet
through the device.

Each placement defines what counts: a click, an add to cart, a conversion (an order
holding a shown item), or revenue (the order lines of shown items). A reward is reported
as soon as it happens, so policies learn online; a decision still without a positive
reward when its window closes is reported once with reward 0, so a policy also learns
what did not work. Events about decisions that are unknown or closed are counted and
otherwise ignored.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from msgspec import Struct

Outcome = Literal["click", "add_to_cart", "conversion"]
RewardKind = Literal["click", "add_to_cart", "conversion", "revenue"]

DEFAULT_WINDOW_MS = 30 * 60_000
_STALE_SLACK = 1024  # closing entries of closed decisions tolerated beyond 2 per open


# Open decisions are many (up to `Attribution.max_open`) and live for minutes. Untracked
# by the garbage collector (gc=False: a decision holds only strings and numbers, so it can
# be in no reference cycle): as tracked objects they piled up in the young generation,
# which then walked all of them in one pass (docs/architecture.md, "Young objects").
class Decision(Struct, gc=False):
    decision_id: str
    visitor: str  # the main key: the device ("a:<anonymousId>") or the profile id
    placement: str
    items: Sequence[str]
    at_ms: int
    reward: RewardKind = "click"
    rewarded: float = 0.0  # the sum reported so far
    closed: bool = False
    aliases: tuple[str, ...] = ()  # other keys of the same visitor
    # Made by another worker (learn/bus.py): credited here, closed silently (its maker
    # reports the zero reward).
    foreign: bool = False

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.visitor, *self.aliases)


class Reward(Struct, frozen=True):  # (a Struct: made on every close, 0.07 us, not 0.6)
    decision_id: str
    placement: str
    item: str | None  # the shown item the reward is about; None for "nothing happened"
    value: float
    at_ms: int


@dataclass(frozen=True)
class Observed:
    """What an event tells about outcomes: its visitor, time and kind, the items it is
    about (with the revenue of each, for orders) and the decision it names, if any."""

    visitor: str
    at_ms: int
    outcome: Outcome
    items: Sequence[tuple[str, float]]  # (item, revenue of its line; 0 for non-orders)
    decision_id: str | None = None
    aliases: tuple[str, ...] = ()  # other keys of the same visitor

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.visitor, *self.aliases)


@dataclass
class Attribution:
    on_reward: Callable[[Reward], None]
    window_ms: int = DEFAULT_WINDOW_MS
    # Open decisions are held in memory for their whole window; past this many the
    # oldest is closed early (reported as if its window had ended), so memory is bounded
    # under any load (3,000 decisions/s for 30 minutes would be 5.4 million).
    max_open: int = 500_000
    max_open_per_visitor: int = 100
    decisions: dict[str, Decision] = field(default_factory=dict)
    unattributed: int = 0  # events naming a decision that is unknown or closed
    closed_early: int = 0  # decisions closed before their window ended (max_open)
    # Per visitor key, its open decisions oldest first (a dict as an ordered set: one is
    # taken out in O(1) when it closes, which happens to every decision).
    _open_by_visitor: dict[str, dict[str, None]] = field(default_factory=dict)
    # (closes at, id), soonest first. Every window is as long, so decisions close in the
    # order they were made: a queue, appended to at its end (a heap push walked ~17 levels
    # of a list of 100,000s, a cache miss each). A decision made "before" the last one (the
    # clock went back) goes to a small heap beside it; closing takes the sooner of the two.
    _closing: deque[tuple[int, str]] = field(default_factory=deque)
    _behind: list[tuple[int, str]] = field(default_factory=list)

    def decided(self, decision: Decision) -> None:
        if decision.decision_id in self.decisions:
            raise ValueError(f"decision {decision.decision_id!r} is already recorded")
        self.decisions[decision.decision_id] = decision
        by_visitor = self._open_by_visitor
        for key in decision.keys:
            open_ids = by_visitor.get(key)
            if open_ids is None:  # (not setdefault: that makes a dict every time)
                open_ids = by_visitor[key] = {}
            open_ids[decision.decision_id] = None
            if len(open_ids) > self.max_open_per_visitor:
                # A visitor asking again and again (a bot, a loop) must not make every
                # event of theirs scan a long list: their oldest decision closes early.
                self.closed_early += 1
                self._close(next(iter(open_ids)), decision.at_ms)
        closing = self._closing
        entry = (decision.at_ms + self.window_ms, decision.decision_id)
        if not closing or closing[-1] <= entry:
            closing.append(entry)
        else:
            heapq.heappush(self._behind, entry)
        if len(closing) + len(self._behind) > 2 * len(self.decisions) + _STALE_SLACK:
            # Most entries are of decisions closed early (a visitor past their bound):
            # dropped now, rather than held until their window would have ended.
            self._closing = deque(entry for entry in closing if entry[1] in self.decisions)
            self._behind = [entry for entry in self._behind if entry[1] in self.decisions]
            heapq.heapify(self._behind)
        while len(self.decisions) > self.max_open:
            soonest = self._next_to_close()
            if soonest is None:
                break
            closes_at, oldest_id = soonest
            if oldest_id in self.decisions:
                self.closed_early += 1
                self._close(oldest_id, min(closes_at, decision.at_ms))

    def observe(self, event: Observed) -> list[Reward]:
        """Attribute one event; returns (and reports) the rewards it produced. Windows
        close by `close_until` (the server's clock), never by an event's own time, which
        the client sets."""
        if event.decision_id is not None:
            named = self.decisions.get(event.decision_id)
            if (
                named is None
                or named.closed
                or not self._within(named, event.at_ms)
                or not set(named.keys) & set(event.keys)
            ):
                self.unattributed += 1
                return []
            targets = [named]
        else:
            targets = self._last_touch(event)
        rewards = []
        for decision in targets:
            for item, value in self._values(decision, event):
                reward = Reward(decision.decision_id, decision.placement, item, value, event.at_ms)
                decision.rewarded += value
                rewards.append(reward)
                self.on_reward(reward)
        return rewards

    def close_until(self, now_ms: int) -> list[Reward]:
        """Close the decisions whose window ended by `now_ms`; those never rewarded are
        reported with reward 0."""
        zeros = []
        while (soonest := self._next_to_close(now_ms)) is not None:
            closes_at, decision_id = soonest
            zero = self._close(decision_id, closes_at)
            if zero is not None:
                zeros.append(zero)
        return zeros

    def _next_to_close(self, by_ms: int | None = None) -> tuple[int, str] | None:
        """Take the entry that closes soonest (of those closing by `by_ms`, if given)."""
        closing, behind = self._closing, self._behind
        if behind and (not closing or behind[0] < closing[0]):
            if by_ms is None or behind[0][0] <= by_ms:
                return heapq.heappop(behind)
        elif closing and (by_ms is None or closing[0][0] <= by_ms):
            return closing.popleft()
        return None

    def _close(self, decision_id: str, at_ms: int) -> Reward | None:
        """Close one decision (if still open); its zero reward, if it earned nothing."""
        decision = self.decisions.pop(decision_id, None)
        if decision is None:
            return None
        decision.closed = True
        self._unlist(decision)
        if decision.rewarded > 0 or decision.foreign:
            return None
        zero = Reward(decision_id, decision.placement, None, 0.0, at_ms)
        self.on_reward(zero)
        return zero

    def forget(self, keys: Iterable[str]) -> list[str]:
        """Drop the open decisions of a visitor (an erasure): no reward, not even a zero,
        is reported for them. Returns their ids."""
        dropped = {
            decision_id for key in keys for decision_id in self._open_by_visitor.get(key, ())
        }
        for decision_id in dropped:
            decision = self.decisions.pop(decision_id, None)
            if decision is not None:
                decision.closed = True
                self._unlist(decision)
        return sorted(dropped)

    def _unlist(self, decision: Decision) -> None:
        for key in decision.keys:
            open_ids = self._open_by_visitor.get(key)
            if open_ids is not None:
                open_ids.pop(decision.decision_id, None)
                if not open_ids:
                    del self._open_by_visitor[key]

    def _within(self, decision: Decision, at_ms: int) -> bool:
        return decision.at_ms <= at_ms < decision.at_ms + self.window_ms

    def _last_touch(self, event: Observed) -> list[Decision]:
        """The most recent open decision that showed any of the items: on the event's own
        device first, then on the person's other devices (through the profile)."""
        items = {item for item, _ in event.items}
        for key in event.keys:
            for decision_id in reversed(self._open_by_visitor.get(key, {})):
                decision = self.decisions[decision_id]
                if self._within(decision, event.at_ms) and items & set(decision.items):
                    return [decision]
        return []

    @staticmethod
    def _values(decision: Decision, event: Observed) -> list[tuple[str | None, float]]:
        """The rewards `event` is worth to `decision`, by its reward definition."""
        shown: list[tuple[str | None, float]] = [
            (item, revenue) for item, revenue in event.items if item in decision.items
        ]
        if event.decision_id is not None and not shown:
            # An event naming the decision about something it did not list (an offer's
            # own click, a checkout with a coupon): it counts for the decision as a whole.
            shown = [(None, sum(revenue for _, revenue in event.items))]
        kind = decision.reward
        if kind == "revenue":
            if event.outcome != "conversion":
                return []
            return [(item, revenue) for item, revenue in shown if math.isfinite(revenue)]
        if kind != event.outcome:
            return []
        return [(shown[0][0], 1.0)] if shown else []
