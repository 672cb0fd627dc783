"""Off-policy evaluation on the engine's own decision log, and the promotion gate.

Before a candidate policy replaces the live one at a placement, it is judged on the
decisions the live one logged: each logged decision holds the visitor's features, the
eligible offers, the one shown with its propensity, and (once its attribution window
closed or it was rewarded) its reward. The candidate, starting from nothing, is replayed
through them in time order: it gives its probability for every eligible offer before it
learns the logged reward (so it is judged only on what it could have known), and the
estimators of learn/ope.py weigh the rewards by its probabilities over the logged ones.

The gate promotes the candidate only when the lower end of its confidence interval is
above the live policy's own value (the mean reward it earned, on the same decisions):
evidence that it is better, not a hope.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from intently.act.decide import MODELLED_OUT, policy_of
from intently.act.decisions import DecisionLogReader, DecisionRecord
from intently.act.features import FeatureHasher, Vector
from intently.act.placements import PolicySpec
from intently.act.policies import Policy, learnable
from intently.learn.ope import ESTIMATORS, LoggedFeedback, estimate_with_interval

MIN_DECISIONS = 100
Floats = npt.NDArray[np.float64]


class NotEnoughEvidence(ValueError):
    pass


@dataclass(frozen=True)
class Logged:
    """One usable logged decision."""

    actions: list[str]
    action: str
    propensity: float
    reward: float
    context: Vector | None


def usable_decisions(
    reader: DecisionLogReader, placement: str, dimensions: int, closed_by_ms: int
) -> list[Logged]:
    """The placement's decisions a policy chose (not a fallback, not a pin), of one
    offer among several, whose attribution window closed by `closed_by_ms` (their reward
    is final: an open one would count its clicks but not yet its misses)."""
    records = reader.decisions(placement=placement)
    return usable(records, reader.rewards(), dimensions, closed_by_ms)


def usable(
    records: Iterable[DecisionRecord],
    rewards: Mapping[str, float],
    dimensions: int,
    closed_by_ms: int,
) -> list[Logged]:
    """`usable_decisions` over given records and rewards (one pass can serve many)."""
    hasher = FeatureHasher(dimensions)
    found = []
    for record in records:
        if record.at_ms > closed_by_ms:
            continue
        reward = rewards.get(record.decision_id)
        # (A sum of huge revenues can overflow to infinity: no policy can learn it.)
        if reward is None or not math.isfinite(reward) or not _chosen_by_a_policy(record):
            continue
        if record.reward_kind != "revenue":
            reward = min(1.0, reward)  # one success, however many clicks
        context = None
        if record.personalized:
            context = hasher.vector(
                {k: v for k, v in record.features.items() if k not in MODELLED_OUT}
            )
        found.append(
            Logged(record.candidates, record.items[0], record.propensities[0], reward, context)
        )
    return found


def _chosen_by_a_policy(record: DecisionRecord) -> bool:
    return (
        record.degraded is None
        and record.policy not in ("fallback", "slate")
        and len(record.items) == 1
        and 0 < record.propensities[0] < 1
        and record.items[0] in record.candidates
    )


@dataclass(frozen=True)
class Replayed:
    feedback: LoggedFeedback
    distributions: list[Floats]  # the candidate's whole distribution at each decision
    policy: Policy  # the candidate as it stands after the log (to go live warm)


def replay(candidate: PolicySpec, logged: Sequence[Logged]) -> Replayed:
    """The candidate's probabilities along the log, learning as it goes, with a per-offer
    mean-reward model (smoothed towards the overall mean) for DM and DR."""
    policy = policy_of(candidate, seed=0)
    rewards = np.array([x.reward for x in logged])
    target = np.empty(len(logged))
    distributions = []
    for i, decision in enumerate(logged):
        probabilities = policy.distribution(decision.actions, decision.context)
        distributions.append(probabilities)
        target[i] = probabilities[decision.actions.index(decision.action)]
        policy.update(decision.action, learnable(policy, decision.reward), decision.context)
    feedback = _with_model(logged, rewards, target, distributions, np.arange(len(logged)))
    return Replayed(feedback, distributions, policy)


def _with_model(
    logged: Sequence[Logged],
    rewards: Floats,
    target: Floats,
    distributions: list[Floats],
    rows: npt.NDArray[np.intp],
) -> LoggedFeedback:
    """The feedback of `rows`, with the reward model fitted on those rows only."""
    overall = float(rewards[rows].mean())
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    for row in rows:
        action = logged[row].action
        totals[action] = totals.get(action, 0.0) + rewards[row]
        counts[action] = counts.get(action, 0) + 1

    def model(action: str) -> float:
        return (totals.get(action, 0.0) + overall) / (counts.get(action, 0) + 1)

    model_logged = np.array([model(logged[row].action) for row in rows])
    model_expected = np.array([
        float(distributions[row] @ np.array([model(a) for a in logged[row].actions]))
        for row in rows
    ])  # fmt: skip
    propensities = np.array([logged[row].propensity for row in rows])
    return LoggedFeedback(rewards[rows], propensities, target[rows], model_logged, model_expected)


@dataclass(frozen=True)
class Judgement:
    report: dict[str, Any]
    promote: bool
    policy: Policy  # the candidate, trained on the log


def judge(
    reader: DecisionLogReader,
    placement: str,
    candidate: PolicySpec,
    *,
    closed_by_ms: int,
    estimator: str = "snips",
    confidence: float = 0.95,
    resamples: int = 500,
) -> Judgement:
    """Every estimator for the candidate, the live policy's value, and the verdict."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}: one of {', '.join(ESTIMATORS)}")
    logged = usable_decisions(reader, placement, candidate.dimensions, closed_by_ms)
    if len(logged) < MIN_DECISIONS:
        raise NotEnoughEvidence(
            f"placement {placement!r} has {len(logged)} logged decisions with a known reward "
            f"that a policy chose among several offers; the gate needs {MIN_DECISIONS}"
        )
    replayed = replay(candidate, logged)
    feedback, distributions = replayed.feedback, replayed.distributions
    rewards = feedback.rewards
    live = float(rewards.mean())

    def refit(rows: npt.NDArray[np.intp]) -> LoggedFeedback:
        return _with_model(logged, rewards, feedback.target, distributions, rows)

    estimates = {}
    for name in ESTIMATORS:
        found = estimate_with_interval(
            feedback, name, confidence, resamples, refit=refit if name in ("dm", "dr") else None
        )
        estimates[name] = {"value": found.value, "low": found.low, "high": found.high}
    gate = estimates[estimator]
    promote = gate["low"] > live
    verdict = (
        f"promote: the {estimator} lower bound {gate['low']:.4f} beats the live policy's {live:.4f}"
        if promote
        else f"keep the live policy: the {estimator} lower bound {gate['low']:.4f} does not "
        f"beat its {live:.4f}"
    )
    report = {
        "placement": placement,
        "decisions": len(logged),
        "live_value": live,
        "candidate": estimates,
        "gate_estimator": estimator,
        "confidence": confidence,
        "promote": promote,
        "verdict": verdict,
    }
    return Judgement(report, promote, replayed.policy)
