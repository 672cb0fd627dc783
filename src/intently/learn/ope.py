"""Off-policy evaluation: what a new policy would have earned, from decisions logged under
another one, before it goes live.

Every logged decision i holds its reward r_i and the propensity p_i with which the logging
(behaviour) policy chose its action; the candidate (evaluation) policy gives that action
probability e_i, so w_i = e_i / p_i re-weights it. With a reward model q(x, a) and the
candidate's whole distribution over actions:

- IPS: mean(w r) (unbiased when every action the candidate may take had p > 0);
- SNIPS: sum(w r) / sum(w) (self-normalised: a little bias, much less variance);
- DM: mean over decisions of sum_a e(a | x_i) q(x_i, a) (the model's opinion; biased as
  the model is wrong);
- DR: DM + mean(w (r - q(x_i, a_i))) (unbiased if either the propensities or the model
  are right; Dudik et al. 2011).

Confidence intervals are bootstrap percentile intervals over decisions, from a seeded
generator, so a report is reproducible; for DM and DR the reward model is fitted again on
each resample, so the interval includes the model's own uncertainty.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
ESTIMATORS = ("ips", "snips", "dm", "dr")


@dataclass(frozen=True)
class LoggedFeedback:
    """Logged decisions, aligned by index.

    `rewards`, `propensities`: what happened under the logging policy, and its probability
    of the action it took. `target`: the candidate's probability of that same action.
    `model_logged`: the reward model's estimate for the logged action. `model_expected`:
    sum over actions of the candidate's probability times the model's estimate (its
    expected reward under the model), per decision."""

    rewards: Floats
    propensities: Floats
    target: Floats
    model_logged: Floats | None = None
    model_expected: Floats | None = None

    def __post_init__(self) -> None:
        n = len(self.rewards)
        arrays = [self.propensities, self.target, self.model_logged, self.model_expected]
        if any(a is not None and len(a) != n for a in arrays):
            raise ValueError("every array must have one entry per logged decision")
        if n == 0:
            raise ValueError("no logged decision to evaluate")
        if not np.all(np.isfinite(self.rewards)):
            raise ValueError("rewards must be finite numbers")
        if np.any(self.propensities <= 0) or np.any(self.propensities > 1):
            raise ValueError("logged propensities must be in (0, 1]")
        if np.any(self.target < 0) or np.any(self.target > 1):
            raise ValueError("the candidate's probabilities must be in [0, 1]")


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float


def estimate(feedback: LoggedFeedback, estimator: str) -> float:
    """One estimator's value on all the logged decisions."""
    return _value(feedback, estimator, np.arange(len(feedback.rewards)))


def _value(feedback: LoggedFeedback, estimator: str, rows: npt.NDArray[np.intp]) -> float:
    r = feedback.rewards[rows]
    w = feedback.target[rows] / feedback.propensities[rows]
    if estimator == "ips":
        return float(np.mean(w * r))
    if estimator == "snips":
        total = w.sum()
        return float((w * r).sum() / total) if total > 0 else 0.0
    if feedback.model_logged is None or feedback.model_expected is None:
        raise ValueError(f"{estimator} needs a reward model")
    direct = feedback.model_expected[rows]
    if estimator == "dm":
        return float(np.mean(direct))
    if estimator == "dr":
        return float(np.mean(direct + w * (r - feedback.model_logged[rows])))
    raise ValueError(f"unknown estimator {estimator!r}: one of {', '.join(ESTIMATORS)}")


def estimate_with_interval(
    feedback: LoggedFeedback,
    estimator: str,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 12345,
    refit: Callable[[npt.NDArray[np.intp]], LoggedFeedback] | None = None,
) -> Estimate:
    """The estimate and a bootstrap percentile interval. With a reward model (DM, DR),
    pass `refit`: the feedback of a resample of the decisions (their row numbers), with
    the model fitted again on that resample; otherwise the interval would ignore the
    model's own error (a model fitted once on all the data looks certain)."""
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    rng = np.random.default_rng(seed)
    n = len(feedback.rewards)
    values = []
    for _ in range(resamples):
        rows = rng.integers(0, n, n)
        if refit is None:
            values.append(_value(feedback, estimator, rows))
        else:
            sample = refit(rows)
            values.append(_value(sample, estimator, np.arange(n)))
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return Estimate(estimate(feedback, estimator), float(low), float(high))
