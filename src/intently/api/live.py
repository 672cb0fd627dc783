"""What the dashboard's live tiles and charts read: per-second counters in a ring buffer.

The engine feeds it where it already counts: the pipeline hands it each batch of durable
events (it is an `EventSink`, beside the Prometheus metrics), the decider each decision
record (with its latency), reward and exposure (`DecisionObserver`), segment membership
each entry and exit (a listener), and the app's one-second tick a sample of the live
sessions. Nothing is read back from disk: a poll of the dashboard costs a walk over at
most `SECONDS` slots.

Each slot is one second of the engine's clock (a `ManualClock` in tests). A slot is
reused `SECONDS` later, and cleared then, so memory is bounded whatever the load: a slot
holds counts, a sparse latency histogram (api/latencies.py: a percentile read from it
is within 9% of the exact one) and the segments entered in that second.

Counts start when the process starts: the decision log is the history (placement
totals since start are in `api/live_placements.py`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from intently.act.decisions import DecisionRecord
from intently.api.latencies import latency_bucket, merge, quantile_ms
from intently.api.live_placements import PlacementStats
from intently.events.record import EventRecord
from intently.learn.rewards import Reward

if TYPE_CHECKING:
    from intently.engine import Engine
    from intently.segments.membership import Transition
    from intently.segments.registry import Segment

SECONDS = 900  # the charts' window: 15 minutes
TILE_SECONDS = 10  # rates on the tiles: the mean of the last 10 seconds (this one included)
LATENCY_SECONDS = 60  # p50 / p99 on the tiles: the decisions of the last minute


def _wall_ms() -> int:
    return int(time.time() * 1000)


class _Slot:
    """One second: what happened in it. `sessions` is -1 until the tick samples it."""

    __slots__ = ("decisions", "degraded", "entries", "events", "latency", "second", "sessions")

    def __init__(self) -> None:
        self.second = -1
        self.clear(-1)

    def clear(self, second: int) -> None:
        self.second = second
        self.events = 0
        self.decisions = 0
        self.degraded = 0
        self.sessions = -1
        self.latency: dict[int, int] | None = None
        self.entries: Counter[str] | None = None


class LiveSeries:
    """The last `SECONDS` seconds, a slot each."""

    def __init__(self, now_ms: Callable[[], int] = _wall_ms, seconds: int = SECONDS) -> None:
        self.now_ms = now_ms
        self.seconds = seconds
        self._slots = [_Slot() for _ in range(seconds)]
        # Totals since start (the tiles' context; also what tests compare with).
        self.events = 0
        self.decisions = 0
        self.degraded = 0
        self.entries: Counter[str] = Counter()

    def _slot(self, second: int) -> _Slot:
        slot = self._slots[second % self.seconds]
        if slot.second != second:
            # A second older than the slot's (the clock went back) is counted in the one
            # the slot holds: never clear newer counts for an older second.
            if slot.second > second:
                return slot
            slot.clear(second)
        return slot

    def _now_slot(self) -> _Slot:
        return self._slot(self.now_ms() // 1000)

    # -- fed by the engine ------------------------------------------------------------------

    def apply_many(self, records: Sequence[EventRecord]) -> None:
        """Events made durable (the pipeline's sinks): counted when accepted."""
        if records:
            self._now_slot().events += len(records)
            self.events += len(records)

    def decided(self, record: DecisionRecord) -> None:
        slot = self._slot(record.at_ms // 1000)  # (the decision's time is now)
        slot.decisions += 1
        self.decisions += 1
        if record.degraded is not None:
            slot.degraded += 1
            self.degraded += 1
        if slot.latency is None:
            slot.latency = {}
        bucket = latency_bucket(record.latency_us)
        slot.latency[bucket] = slot.latency.get(bucket, 0) + 1

    def segment_moved(self, segment: Segment, transition: Transition) -> None:
        if not transition.entered:
            return
        slot = self._now_slot()
        if slot.entries is None:
            slot.entries = Counter()
        slot.entries[segment.name] += 1
        self.entries[segment.name] += 1

    def sample_sessions(self, live: int) -> None:
        """The tick's sample of the live sessions (a gauge: the last sample of a second)."""
        self._now_slot().sessions = live

    # -- read by the dashboard --------------------------------------------------------------

    def _recent(self, count: int, now_second: int) -> Iterable[_Slot | None]:
        """The slots of the last `count` seconds, oldest first; None for an empty second."""
        for second in range(now_second - count + 1, now_second + 1):
            slot = self._slots[second % self.seconds]
            yield slot if slot.second == second else None

    def tiles(self) -> dict[str, Any]:
        now = self.now_ms() // 1000
        events = decisions = degraded = 0
        for slot in self._recent(TILE_SECONDS, now):
            if slot is not None:
                events += slot.events
                decisions += slot.decisions
                degraded += slot.degraded
        latency: dict[int, int] = {}
        for slot in self._recent(LATENCY_SECONDS, now):
            if slot is not None:
                merge(latency, slot.latency)
        return {
            "events_per_s": events / TILE_SECONDS,
            "decisions_per_s": decisions / TILE_SECONDS,
            "degraded_per_s": degraded / TILE_SECONDS,
            "latency_p50_ms": quantile_ms(latency, 0.5),
            "latency_p99_ms": quantile_ms(latency, 0.99),
            "latency_decisions": sum(latency.values()),
        }

    def series(self, step: int) -> dict[str, Any]:
        """The window in points of `step` seconds (aligned to multiples of it): rates per
        second over each point, p50 / p99 of its decisions, and the last sample of the live
        sessions in it (None where none was taken: the tick did not run)."""
        now = self.now_ms() // 1000
        last = now - now % step  # the current (partial) point starts here
        points = self.seconds // step
        times, events, decisions, degraded, p50, p99, sessions = [], [], [], [], [], [], []
        for start in range(last - (points - 1) * step, last + 1, step):
            counted = [0, 0, 0]
            latency: dict[int, int] = {}
            sampled: int | None = None
            for second in range(start, start + step):
                slot = self._slots[second % self.seconds]
                if slot.second != second:
                    continue
                counted[0] += slot.events
                counted[1] += slot.decisions
                counted[2] += slot.degraded
                merge(latency, slot.latency)
                if slot.sessions >= 0:
                    sampled = slot.sessions
            # The current point is partial: its rate is over the seconds it has had.
            span = min(step, now - start + 1)
            times.append(start * 1000)
            events.append(counted[0] / span)
            decisions.append(counted[1] / span)
            degraded.append(counted[2] / span)
            p50.append(quantile_ms(latency, 0.5))
            p99.append(quantile_ms(latency, 0.99))
            sessions.append(sampled)
        return {
            "step_s": step,
            "t": times,
            "events_per_s": events,
            "decisions_per_s": decisions,
            "degraded_per_s": degraded,
            "latency_p50_ms": p50,
            "latency_p99_ms": p99,
            "live_sessions": sessions,
        }

    def segment_entries(self, seconds: int) -> Counter[str]:
        """Entries per segment over the last `seconds` (at most the window)."""
        found: Counter[str] = Counter()
        for slot in self._recent(min(seconds, self.seconds), self.now_ms() // 1000):
            if slot is not None and slot.entries:
                found.update(slot.entries)
        return found


class Live:
    """What the engine feeds: an `EventSink` (events accepted), a `DecisionObserver`
    (act/decide.py: decisions, rewards, exposures) and a segment listener; it keeps the
    per-second series and the per-placement totals since start."""

    def __init__(self, now_ms: Callable[[], int] = _wall_ms) -> None:
        self.series = LiveSeries(now_ms)
        self.placements = PlacementStats()

    def apply_many(self, records: Sequence[EventRecord]) -> None:
        self.series.apply_many(records)

    def decided(self, record: DecisionRecord) -> None:
        self.series.decided(record)
        self.placements.decided(record)

    def rewarded(self, reward: Reward) -> None:
        self.placements.rewarded(reward.placement, reward.value)

    def exposed(self, placement: str, decision_id: str, at_ms: int) -> None:
        self.placements.exposed(placement)

    def segment_moved(self, segment: Segment, transition: Transition) -> None:
        self.series.segment_moved(segment, transition)

    def sample_sessions(self, live: int) -> None:
        self.series.sample_sessions(live)


def live_sessions(engine: Engine) -> int:
    """Sessions with activity within the session timeout (not yet ended by expiry)."""
    timeout_ms = engine.context.settings.session_timeout_ms
    return engine.store.live_sessions(engine.now_ms() - timeout_ms)
