"""Off-policy evaluation on the Open Bandit Dataset (Saito et al. 2021), as `intently eval
ope --obd DIR` runs it.

The dataset logs ZOZOTOWN's fashion recommendations: 80 items, 3 positions, one week, two
logging policies (uniform random and Bernoulli Thompson sampling, "bts"). The question
evaluated is the dataset's own: what would Bernoulli TS with the production priors have
earned, judged only from the random policy's log? The truth is known: the bts log's mean
click rate. Relative values are divided by the random log's mean click rate.

Bernoulli TS on a slate of 3 (as the Open Bandit Pipeline defines it): each round, draw a
click rate for every item from its Beta(alpha, beta) prior and show the 3 highest, in
order. Its action distribution P(item at position) is estimated by simulating
`simulations` rounds with a seeded generator.

The reward model of DM and DR is the empirical click rate per (item, position) of the
random log, shrunk towards the log's overall rate by `smoothing` pseudo-impressions
(clicks are rare: tens in 10,000 rounds).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import yaml

from intently.learn.ope import ESTIMATORS, LoggedFeedback, estimate, estimate_with_interval

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
CAMPAIGNS = ("all", "men", "women")
POSITIONS = 3


class DatasetError(ValueError):
    """The dataset directory is not what `intently eval ope --obd` reads."""


@dataclass(frozen=True)
class BanditLog:
    items: Ints  # the item shown, 0-based
    positions: Ints  # 0-based
    clicks: Floats
    propensities: Floats
    n_items: int


def read_log(path: Path) -> BanditLog:
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as error:
        raise DatasetError(f"{path}: {error.strerror}") from None
    with handle:
        rows = csv.DictReader(handle)
        needed = {"item_id", "position", "click", "propensity_score"}
        if rows.fieldnames is None or not needed <= set(rows.fieldnames):
            raise DatasetError(f"{path}: needs the columns {', '.join(sorted(needed))}")
        items, positions, clicks, propensities = [], [], [], []
        for line, row in enumerate(rows, start=2):
            try:
                items.append(int(row["item_id"]))
                positions.append(int(row["position"]) - 1)
                clicks.append(float(row["click"]))
                propensities.append(float(row["propensity_score"]))
            except (TypeError, ValueError):
                raise DatasetError(f"{path}, line {line}: not a number where one is due") from None
    log = BanditLog(
        np.array(items, dtype=np.int64), np.array(positions, dtype=np.int64),
        np.array(clicks), np.array(propensities), max(items, default=-1) + 1,
    )  # fmt: skip
    if len(log.items) == 0:
        raise DatasetError(f"{path}: no logged round")
    if log.items.min() < 0:
        raise DatasetError(f"{path}: item ids must be 0 or more")
    if log.positions.min() < 0 or log.positions.max() >= POSITIONS:
        raise DatasetError(f"{path}: positions must be 1 to {POSITIONS}")
    if not np.all(np.isfinite(log.clicks)):
        raise DatasetError(f"{path}: clicks must be finite numbers")
    p = log.propensities
    if not np.all(np.isfinite(p)) or np.any(p <= 0) or np.any(p > 1):
        raise DatasetError(f"{path}: propensity scores must be in (0, 1]")
    return log


def read_priors(path: Path, campaign: str) -> tuple[Floats, Floats]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise DatasetError(f"{path}: {error.strerror}") from None
    try:
        alpha = np.array(document[campaign]["alpha"], dtype=np.float64)
        beta = np.array(document[campaign]["beta"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"{path}: no alpha and beta lists for campaign {campaign!r}") from None
    if alpha.shape != beta.shape or np.any(alpha <= 0) or np.any(beta <= 0):
        raise DatasetError(f"{path}: alpha and beta must be positive, one pair per item")
    return alpha, beta


def bernoulli_ts_distribution(
    alpha: Floats, beta: Floats, simulations: int = 100_000, seed: int = 12345
) -> Floats:
    """P(item shown at position) for Bernoulli TS on a slate of 3, by simulation."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((len(alpha), POSITIONS))
    done = 0
    while done < simulations:  # in chunks, to bound memory
        chunk = min(10_000, simulations - done)
        draws = rng.beta(alpha, beta, size=(chunk, len(alpha)))
        top = np.argsort(-draws, axis=1)[:, :POSITIONS]
        for position in range(POSITIONS):
            counts[:, position] += np.bincount(top[:, position], minlength=len(alpha))
        done += chunk
    distribution: Floats = counts / simulations
    return distribution


def reward_model(log: BanditLog, n_items: int, smoothing: float = 100.0) -> Floats:
    """Click rate per (item, position) for `n_items` items, shrunk towards the overall
    rate (an item never shown gets the overall rate)."""
    overall = log.clicks.mean()
    clicks = np.zeros((n_items, POSITIONS))
    shown = np.zeros((n_items, POSITIONS))
    np.add.at(clicks, (log.items, log.positions), log.clicks)
    np.add.at(shown, (log.items, log.positions), 1.0)
    impressions = shown + smoothing
    model: Floats = np.divide(
        clicks + smoothing * overall, impressions,
        out=np.full_like(clicks, overall), where=impressions > 0,
    )  # fmt: skip
    return model


def check_distribution(distribution: Floats, log: BanditLog) -> None:
    if distribution.ndim != 2 or distribution.shape[1] != POSITIONS:
        raise DatasetError(f"an action distribution has one column per position ({POSITIONS})")
    if distribution.shape[0] < log.n_items:
        raise DatasetError("the action distribution has fewer items than the log")
    if not np.all(np.isfinite(distribution)) or np.any(distribution < 0):
        raise DatasetError("an action distribution holds probabilities")
    if not np.allclose(distribution.sum(axis=0), 1.0, atol=1e-6):
        raise DatasetError("each position's probabilities must sum to 1")


def feedback_for(log: BanditLog, distribution: Floats, model: Floats) -> LoggedFeedback:
    """The logged rounds, judged for a policy with the (item x position) `distribution`
    (the model has a row for every item of the distribution)."""
    target = distribution[log.items, log.positions]
    # The candidate's expected reward under the model, at the position of each round.
    expected = (distribution * model).sum(axis=0)[log.positions]
    return LoggedFeedback(
        rewards=log.clicks,
        propensities=log.propensities,
        target=target,
        model_logged=model[log.items, log.positions],
        model_expected=expected,
    )


def evaluate_obd(
    directory: Path, campaign: str = "all", simulations: int = 100_000, resamples: int = 1000
) -> dict[str, object]:
    """The report of `intently eval ope --obd`, as a dict ready for JSON."""
    if campaign not in CAMPAIGNS:
        raise DatasetError(f"unknown campaign {campaign!r}: one of {', '.join(CAMPAIGNS)}")
    random_log = read_log(directory / "random" / campaign / f"{campaign}.csv")
    bts_log = read_log(directory / "bts" / campaign / f"{campaign}.csv")
    alpha, beta = read_priors(directory / "prior_bts.yaml", campaign)
    baseline = float(random_log.clicks.mean())
    truth = float(bts_log.clicks.mean())
    if baseline <= 0 or truth <= 0:
        raise DatasetError("the logs have no reward at all: there is nothing to compare")
    report: dict[str, object] = {
        "campaign": campaign,
        "rounds": len(random_log.items),
        "random_log_mean_reward": baseline,
        "ground_truth_bts_mean_reward": truth,
    }
    shipped = directory / f"bts_action_dist_{campaign}.csv"
    if shipped.exists():
        try:
            distribution = np.loadtxt(shipped, delimiter=",", comments="#", ndmin=2)
        except ValueError as error:
            raise DatasetError(f"{shipped}: {error}") from None
        check_distribution(distribution, random_log)
        model = reward_model(random_log, len(distribution))
        feedback = feedback_for(random_log, distribution, model)
        report["shipped_action_distribution"] = _relative(feedback, baseline, ("ips", "snips"))
    simulated = bernoulli_ts_distribution(alpha, beta, simulations)
    check_distribution(simulated, random_log)
    model = reward_model(random_log, len(simulated))
    feedback = feedback_for(random_log, simulated, model)

    def refit(rows: npt.NDArray[np.intp]) -> LoggedFeedback:
        sample = BanditLog(random_log.items[rows], random_log.positions[rows],
                           random_log.clicks[rows], random_log.propensities[rows],
                           random_log.n_items)  # fmt: skip
        return feedback_for(sample, simulated, reward_model(sample, len(simulated)))

    report["simulated_action_distribution"] = {
        "simulations": simulations,
        **_relative(feedback, baseline, ("ips", "snips")),
    }
    estimates = {}
    for name in ESTIMATORS:
        found = estimate_with_interval(
            feedback, name, resamples=resamples, refit=refit if name in ("dm", "dr") else None
        )
        estimates[name] = {
            "value": found.value,
            "ci95": [found.low, found.high],
            "relative": found.value / baseline,
            "relative_error": abs(found.value - truth) / truth,
        }
    report["estimators"] = estimates
    return report


def _relative(
    feedback: LoggedFeedback, baseline: float, names: tuple[str, ...]
) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in names:
        value = estimate(feedback, name)
        out[name] = value
        out[f"{name}_relative"] = value / baseline
    return out
