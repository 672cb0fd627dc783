"""Per-placement totals since the process started, kept as decisions, rewards and
exposures happen (the decider reports each: act/decide.py `DecisionObserver`).

The decision log holds the same facts; reading them back on every poll of the
dashboard would decode every decision again. `from_log` computes the same totals from
the log, from scratch: the tests compare the two over the same decisions.

Definitions (docs/dashboard.md):
- decisions: every decision made for the placement, degraded ones (the fallback
  answered) included; `with_content`: those that showed at least one item or offer
  (only those can be rewarded);
- exposures: viewable impressions reported by the client ("Decision Viewed") for an
  open decision of the same visitor;
- rewards: reward records with a positive value (a click, for a placement rewarded by
  clicks); rewards per exposure = rewards / exposures. Not a click-through rate: a
  decision clicked twice has two reward records, a revenue placement one per order line,
  and decisions made without a browser (render, triggers, the Python client) have no
  exposure, so it can pass 1. Distinct rewarded decisions would need a set of ids per
  placement, which these in-memory totals do not keep;
- mean reward: the sum of rewards over decisions with content (those whose attribution
  window is still open may yet earn theirs).

An erasure removes a person's decisions from the log but not from these counts (they
hold no personal data); the two then differ by the erased decisions.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from intently.act.decisions import DecisionLogReader, DecisionRecord
from intently.api.latencies import latency_bucket, quantile_ms


@dataclass
class Totals:
    decisions: int = 0
    degraded: int = 0
    with_content: int = 0
    exposures: int = 0
    rewards: int = 0
    reward_sum: float = 0.0
    served_by: Counter[str] = field(default_factory=Counter)  # the records' policy names
    latency: dict[int, int] = field(default_factory=dict)  # api/live.py buckets
    last_policy: str | None = None
    last_version: str | None = None

    def view(self) -> dict[str, Any]:
        return {
            "decisions": self.decisions,
            "degraded": self.degraded,
            "degraded_share": self.degraded / self.decisions if self.decisions else None,
            "with_content": self.with_content,
            "exposures": self.exposures,
            "rewards": self.rewards,
            "rewards_per_exposure": self.rewards / self.exposures if self.exposures else None,
            "reward_sum": self.reward_sum,
            "mean_reward": self.reward_sum / self.with_content if self.with_content else None,
            "served_by": dict(self.served_by),
            "last_policy": self.last_policy,
            "last_version": self.last_version,
            "latency_p50_ms": quantile_ms(self.latency, 0.5),
            "latency_p99_ms": quantile_ms(self.latency, 0.99),
        }


class PlacementStats:
    def __init__(self) -> None:
        self.by_placement: dict[str, Totals] = {}

    def _of(self, placement: str) -> Totals:
        totals = self.by_placement.get(placement)
        if totals is None:
            totals = self.by_placement[placement] = Totals()
        return totals

    def decided(self, record: DecisionRecord) -> None:
        totals = self._of(record.placement)
        totals.decisions += 1
        if record.degraded is not None:
            totals.degraded += 1
        if record.items:
            totals.with_content += 1
        totals.served_by[record.policy] += 1
        totals.last_policy, totals.last_version = record.policy, record.policy_version
        bucket = latency_bucket(record.latency_us)
        totals.latency[bucket] = totals.latency.get(bucket, 0) + 1

    def rewarded(self, placement: str, value: float) -> None:
        totals = self._of(placement)
        totals.reward_sum += value
        if value > 0:
            totals.rewards += 1

    def exposed(self, placement: str) -> None:
        self._of(placement).exposures += 1


def from_log(reader: DecisionLogReader) -> PlacementStats:
    """The same totals, from scratch, from everything in a decision log."""
    stats = PlacementStats()
    placement_of: dict[str, str] = {}
    for record in reader.decisions():
        stats.decided(record)
        placement_of[record.decision_id] = record.placement
    for decision_id, value in reader.reward_values():
        placement = placement_of.get(decision_id)
        if placement is not None:
            stats.rewarded(placement, value)
    for decision_id, count in reader.exposures().items():
        placement = placement_of.get(decision_id)
        if placement is not None:
            for _ in range(count):
                stats.exposed(placement)
    return stats
