"""The statistics engine agrees with independent references, and never answers NaN.

References: scipy's Welch t-test and chi-square on the raw values the summaries were made
from; the delta-method, CUPED and mSPRT formulas written out here from their sources; Monte
Carlo over the same posteriors; Holm's definition read literally; GrowthBook's own engine
(gbstats 0.8.0, run offline by tests/reference/make_gbstats_reference.py); and simulations
of A/A tests, with and without peeking.
"""

from __future__ import annotations

import doctest
import json
import math
import time
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, special
from scipy import stats as sps

from intently.experiments import bayes, sequential, stats
from intently.experiments.stats import (
    Summary,
    always_valid,
    bayesian_test,
    compare,
    holm_bonferroni,
    sample_ratio_mismatch,
    welch_test,
)

REFERENCE = Path(__file__).parent / "data" / "gbstats_reference.json"
EXACT = {"rel": 1e-9, "abs": 1e-12}


def _figures(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _figures(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _figures(item, f"{path}[{i}]")
    else:
        yield path, value


def assert_json_safe(result: Any) -> None:
    """Encodes to JSON with every number finite, and every missing figure explained by the
    `note` beside it."""
    msgspec.json.encode(result)
    builtins = msgspec.to_builtins(result)
    for path, value in _figures(builtins):
        assert not (isinstance(value, float) and not math.isfinite(value)), path
    for path, value in _walk_dicts(builtins):
        if "note" in value and not value["note"]:
            missing = [k for k, v in value.items() if v is None and k not in ("note", "cuped")]
            assert not missing, f"{path}: {missing} are None without a note"


def _walk_dicts(value: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(value, dict):
        yield path, value
        for key, item in value.items():
            yield from _walk_dicts(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk_dicts(item, f"{path}[{i}]")


def notes(result: Any) -> str:
    return " | ".join(
        str(v) for p, v in _figures(msgspec.to_builtins(result)) if p.endswith("note") and v
    )


def draw(seed: int, kind: str, n_c: int, n_t: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "proportion":
        return (rng.random(n_c) < 0.1).astype(float), (rng.random(n_t) < 0.12).astype(float)
    return rng.lognormal(2.0, 0.8, n_c), rng.lognormal(2.05, 1.0, n_t)


# -- summaries -------------------------------------------------------------------------------


def test_summary_from_values_holds_the_sums() -> None:
    rng = np.random.default_rng(0)
    y, x = rng.normal(5, 2, 500), rng.normal(3, 1, 500)
    s = Summary.from_values(y, covariates=x)
    assert s.n == 500
    assert s.total == pytest.approx(y.sum(), rel=1e-12)
    assert s.total_squares == pytest.approx((y * y).sum(), rel=1e-12)
    assert s.covariate == pytest.approx(x.sum(), rel=1e-12)
    assert s.covariate_squares == pytest.approx((x * x).sum(), rel=1e-12)
    assert s.cross == pytest.approx((x * y).sum(), rel=1e-12)
    assert Summary.proportion(10, 3) == Summary.from_values([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n": -1, "total": 0.0, "total_squares": 0.0}, "Summary.n must be >= 0"),
        ({"n": 3, "total": math.nan, "total_squares": 1.0}, "Summary.total must be finite"),
        ({"n": 3, "total": 1.0, "total_squares": math.inf}, "Summary.total_squares must be"),
        ({"n": 0, "total": 1.0, "total_squares": 1.0}, "Summary.total must be 0 when n is 0"),
    ],
)
def test_summary_refuses_impossible_sums(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Summary(**fields)


def test_from_values_needs_one_covariate_per_unit() -> None:
    with pytest.raises(ValueError, match="one value per unit"):
        Summary.from_values([1.0, 2.0], covariates=[1.0])


# -- frequentist -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mean", "proportion"])
@pytest.mark.parametrize(
    ("seed", "n_c", "n_t", "alpha"),
    [(1, 1000, 1000, 0.05), (2, 300, 2000, 0.1), (3, 20, 35, 0.01), (4, 5000, 4800, 0.05)],
)
def test_welch_equals_scipy_ttest_on_the_raw_values(
    kind: str, seed: int, n_c: int, n_t: int, alpha: float
) -> None:
    c, t = draw(seed, kind, n_c, n_t)
    result = welch_test(Summary.from_values(c), Summary.from_values(t), alpha=alpha)
    reference = sps.ttest_ind(t, c, equal_var=False)
    low, high = reference.confidence_interval(confidence_level=1 - alpha)
    assert result.statistic == pytest.approx(reference.statistic, **EXACT)
    assert result.p_value == pytest.approx(reference.pvalue, **EXACT)
    assert result.dof == pytest.approx(reference.df, **EXACT)
    assert result.absolute.value == pytest.approx(t.mean() - c.mean(), **EXACT)
    assert result.absolute.lower == pytest.approx(low, **EXACT)
    assert result.absolute.upper == pytest.approx(high, **EXACT)
    se = math.sqrt(t.var(ddof=1) / t.size + c.var(ddof=1) / c.size)
    quantile = sps.t.ppf(1 - alpha / 2, reference.df)
    assert result.absolute.upper == pytest.approx(t.mean() - c.mean() + quantile * se, **EXACT)
    assert result.significant == (reference.pvalue < alpha)


@pytest.mark.parametrize("kind", ["mean", "proportion"])
def test_relative_lift_uses_the_delta_method(kind: str) -> None:
    c, t = draw(7, kind, 3000, 2500)
    result = welch_test(Summary.from_values(c), Summary.from_values(t), alpha=0.05)
    mu_c, mu_t = c.mean(), t.mean()
    variance = t.var(ddof=1) / (t.size * mu_c**2) + mu_t**2 * c.var(ddof=1) / (c.size * mu_c**4)
    quantile = sps.t.ppf(0.975, sps.ttest_ind(t, c, equal_var=False).df)
    assert result.relative.value == pytest.approx(mu_t / mu_c - 1, **EXACT)
    assert result.relative.standard_error == pytest.approx(math.sqrt(variance), **EXACT)
    assert result.relative.lower == pytest.approx(
        mu_t / mu_c - 1 - quantile * math.sqrt(variance), **EXACT
    )
    assert result.relative.upper == pytest.approx(
        mu_t / mu_c - 1 + quantile * math.sqrt(variance), **EXACT
    )


@pytest.mark.parametrize("kind", ["mean", "proportion"])
def test_aa_tests_flag_at_the_nominal_rate(kind: str) -> None:
    """2,000 A/A tests at alpha 0.05: the share flagged is within 4 binomial standard errors."""
    rng = np.random.default_rng(11)
    runs, n = 2000, 200
    if kind == "proportion":
        values = (rng.random((runs, 2, n)) < 0.3).astype(float)
    else:
        values = rng.exponential(3.0, (runs, 2, n))
    sums, squares = values.sum(axis=2), (values * values).sum(axis=2)
    flagged = sum(
        welch_test(
            Summary(n, sums[r, 0], squares[r, 0]), Summary(n, sums[r, 1], squares[r, 1])
        ).significant
        for r in range(runs)
    )
    assert abs(flagged / runs - 0.05) < 4 * math.sqrt(0.05 * 0.95 / runs)


# -- several treatments ----------------------------------------------------------------------


def _holm_rejects(p_values: list[float], alpha: float) -> set[int]:
    """Holm's step-down procedure as stated: walk the p-values up from the smallest; reject
    while p_(k) <= alpha / (m - k + 1), stop at the first that is not."""
    m = len(p_values)
    rejected: set[int] = set()
    for k, i in enumerate(sorted(range(m), key=lambda i: p_values[i]), start=1):
        if p_values[i] > alpha / (m - k + 1):
            break
        rejected.add(i)
    return rejected


@pytest.mark.parametrize("seed", range(20))
def test_holm_adjusted_p_values_reject_exactly_what_holm_rejects(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 9))
    p_values = [float(p) for p in rng.choice([*rng.random(m) * 0.1, 0.01, 0.02], size=m)]
    adjusted = holm_bonferroni(p_values)
    assert all(a >= p for a, p in zip(adjusted, p_values, strict=True))
    # The adjusted p-value is the smallest alpha at which Holm rejects: check just below and
    # just above every threshold where a decision can change (at the threshold itself,
    # p * j / j need not round back to p).
    cuts = {p * j for p in p_values for j in range(1, m + 1)}
    for alpha in [*(c * (1 + side) for c in cuts for side in (-1e-9, 1e-9)), 0.05]:
        if 0 < alpha < 1:
            expected = _holm_rejects(p_values, alpha)
            assert {i for i, a in enumerate(adjusted) if a <= alpha} == expected, alpha


def test_holm_refuses_what_is_not_a_p_value() -> None:
    assert holm_bonferroni([]) == []
    with pytest.raises(ValueError, match="p_values must lie in"):
        holm_bonferroni([0.1, math.nan])
    with pytest.raises(ValueError, match="p_values must lie in"):
        holm_bonferroni([1.2])


def test_compare_widens_intervals_and_adjusts_p_values_for_several_treatments() -> None:
    rng = np.random.default_rng(5)
    control = Summary.from_values(rng.normal(10, 3, 2000))
    treatments = {
        name: Summary.from_values(rng.normal(10 + shift, 3, 2000))
        for name, shift in [("b", 0.0), ("c", 0.4), ("d", 0.6)]
    }
    results = compare(control, treatments, kind="mean", alpha=0.05)
    raw = [welch_test(control, t, alpha=0.05 / 3) for t in treatments.values()]
    adjusted = holm_bonferroni([r.p_value or 1.0 for r in raw])
    for result, fixed, adjusted_p in zip(results, raw, adjusted, strict=True):
        assert result.comparisons == 3
        assert result.frequentist.alpha == pytest.approx(0.05 / 3)
        assert result.frequentist.absolute == fixed.absolute  # Bonferroni: alpha / m
        assert result.adjusted_p_value == pytest.approx(adjusted_p, **EXACT)
        assert result.significant == (adjusted_p < 0.05)
    assert [r.significant for r in results] == [False, True, True]
    single = compare(control, {"b": treatments["b"]}, kind="mean", correction="none")
    assert single[0].adjusted_p_value == single[0].frequentist.p_value


# -- sample ratio mismatch -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "weights"),
    [
        ([5000, 5100], [0.5, 0.5]),
        ([5000, 5400], [1, 1]),
        ([1000, 1150, 980], [1, 1, 1]),
        ([3000, 1000], [0.7, 0.3]),
        ([700, 2100, 3500], [0.1, 0.3, 0.6]),
    ],
)
def test_srm_matches_scipy_chisquare(counts: list[int], weights: list[float]) -> None:
    result = sample_ratio_mismatch(counts, weights)
    expected = np.array(weights) / sum(weights) * sum(counts)
    reference = sps.chisquare(counts, expected)
    assert result.statistic == pytest.approx(reference.statistic, **EXACT)
    assert result.p_value == pytest.approx(reference.pvalue, **EXACT)
    assert result.dof == len(counts) - 1
    assert result.mismatch == (reference.pvalue < 0.001)
    assert_json_safe(result)


def test_srm_flags_a_clear_mismatch_only() -> None:
    assert sample_ratio_mismatch([5000, 5400], [1, 1]).mismatch  # p = 9e-5
    assert not sample_ratio_mismatch([5000, 5100], [1, 1]).mismatch


def test_srm_edge_cases_have_defined_results() -> None:
    empty = sample_ratio_mismatch([0, 0], [0.5, 0.5])
    assert (empty.p_value, empty.mismatch, empty.note) == (
        None,
        False,
        "no units yet: nothing to check",
    )
    # A switched-off variant with no units takes no part: the rest is tested among itself.
    off = sample_ratio_mismatch([5000, 0, 5100], [0.5, 0.0, 0.5])
    reference = sps.chisquare([5000, 5100], [5050, 5050])
    assert off.p_value == pytest.approx(reference.pvalue, **EXACT)
    assert off.dof == 1
    stray = sample_ratio_mismatch([5000, 3, 5100], [0.5, 0.0, 0.5])
    assert stray.mismatch
    assert stray.p_value == 0.0
    assert stray.note is not None
    assert "weight 0" in stray.note
    alone = sample_ratio_mismatch([10, 0], [1.0, 0.0])
    assert not alone.mismatch
    assert alone.p_value is None
    for result in (empty, off, stray, alone):
        assert_json_safe(result)


@pytest.mark.parametrize(
    ("counts", "weights", "message"),
    [
        ([1, 2], [1.0], "differ in length"),
        ([1, -2], [1.0, 1.0], "counts must be >= 0"),
        ([1, 2], [0.0, 0.0], "weights must be"),
        ([1, 2], [1.0, -1.0], "weights must be"),
        ([1, 2], [1.0, math.nan], "weights must be"),
    ],
)
def test_srm_refuses_bad_inputs(counts: list[int], weights: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sample_ratio_mismatch(counts, weights)


# -- CUPED -----------------------------------------------------------------------------------


def _cuped_data(seed: int, n_c: int, n_t: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x_c, x_t = rng.gamma(2.0, 5.0, n_c), rng.gamma(2.0, 5.0, n_t)
    y_c = 3.0 + 0.9 * x_c + rng.normal(0, 4.0, n_c)
    y_t = 3.6 + 0.9 * x_t + rng.normal(0, 4.0, n_t)
    return x_c, y_c, x_t, y_t


@pytest.mark.parametrize(("seed", "n_c", "n_t"), [(1, 2000, 2000), (2, 500, 1500), (3, 40, 60)])
def test_cuped_equals_a_ttest_on_the_adjusted_values(seed: int, n_c: int, n_t: int) -> None:
    x_c, y_c, x_t, y_t = _cuped_data(seed, n_c, n_t)
    control = Summary.from_values(y_c, covariates=x_c)
    treatment = Summary.from_values(y_t, covariates=x_t)
    result = welch_test(control, treatment, alpha=0.05, cuped=True)
    # theta pooled over both variants' units; each unit's Y - theta (X - pooled mean of X)
    x, y = np.concatenate([x_c, x_t]), np.concatenate([y_c, y_t])
    theta = np.cov(x, y, ddof=1)[0, 1] / x.var(ddof=1)
    adjusted_c, adjusted_t = y_c - theta * (x_c - x.mean()), y_t - theta * (x_t - x.mean())
    reference = sps.ttest_ind(adjusted_t, adjusted_c, equal_var=False)
    low, high = reference.confidence_interval(0.95)
    assert result.cuped is not None
    assert result.cuped.applied
    assert result.cuped.theta == pytest.approx(theta, **EXACT)
    assert result.control_mean == pytest.approx(adjusted_c.mean(), **EXACT)
    assert result.treatment_mean == pytest.approx(adjusted_t.mean(), **EXACT)
    assert result.statistic == pytest.approx(reference.statistic, **EXACT)
    assert result.p_value == pytest.approx(reference.pvalue, **EXACT)
    assert (result.absolute.lower, result.absolute.upper) == (
        pytest.approx(low, **EXACT),
        pytest.approx(high, **EXACT),
    )
    lift = adjusted_t.mean() / adjusted_c.mean() - 1
    assert result.relative.value == pytest.approx(lift, **EXACT)


def test_cuped_reduces_variance_when_the_covariate_correlates() -> None:
    x_c, y_c, x_t, y_t = _cuped_data(4, 3000, 3000)
    control = Summary.from_values(y_c, covariates=x_c)
    treatment = Summary.from_values(y_t, covariates=x_t)
    plain = welch_test(control, treatment)
    adjusted = welch_test(control, treatment, cuped=True)
    assert adjusted.absolute.standard_error is not None
    assert plain.absolute.standard_error is not None
    assert adjusted.absolute.standard_error < 0.6 * plain.absolute.standard_error
    assert adjusted.cuped is not None
    reduction = 1 - (adjusted.absolute.standard_error / plain.absolute.standard_error) ** 2
    assert adjusted.cuped.variance_reduction == pytest.approx(reduction, **EXACT)
    # The squared correlation bounds what a linear covariate can remove.
    rho = np.corrcoef(np.concatenate([x_c, x_t]), np.concatenate([y_c, y_t]))[0, 1]
    assert reduction == pytest.approx(rho**2, abs=0.02)


def test_cuped_without_pre_exposure_data_falls_back_and_says_so() -> None:
    c, t = draw(3, "mean", 400, 400)
    control, treatment = Summary.from_values(c), Summary.from_values(t)
    result = welch_test(control, treatment, cuped=True)
    assert result.cuped is not None
    assert not result.cuped.applied
    assert result.cuped.note is not None
    assert "no variance" in result.cuped.note
    assert msgspec.structs.replace(result, cuped=None) == welch_test(control, treatment)
    [comparison] = compare(control, {"b": treatment}, kind="mean")
    assert comparison.frequentist.cuped == result.cuped
    assert_json_safe(comparison)


def test_compare_uses_cuped_in_both_engines_when_covariates_are_present() -> None:
    x_c, y_c, x_t, y_t = _cuped_data(5, 1000, 1000)
    control = Summary.from_values(y_c, covariates=x_c)
    treatment = Summary.from_values(y_t, covariates=x_t)
    [result] = compare(control, {"b": treatment}, kind="mean", sequential_tuning=5000)
    assert result.frequentist.cuped is not None
    assert result.frequentist.cuped.applied
    assert result.control_mean == pytest.approx(y_c.mean())  # the page shows raw means
    adjusted = welch_test(control, treatment, cuped=True)
    assert adjusted.absolute.standard_error is not None
    d = adjusted.absolute.value
    assert d is not None
    assert result.bayesian.chance_to_beat_control == pytest.approx(
        special.ndtr(d / adjusted.absolute.standard_error), **EXACT
    )
    [plain] = compare(control, {"b": treatment}, kind="mean", cuped=False)
    assert plain.frequentist.cuped is None
    assert_json_safe(result)


# -- Bayesian --------------------------------------------------------------------------------


def _miller(a_c: float, b_c: float, a_t: int, b_t: float) -> float:
    """Evan Miller's closed form of P(T > C) for Beta posteriors (integer a_t)."""
    i = np.arange(a_t)
    terms = (
        special.betaln(a_c + i, b_c + b_t)
        - np.log(b_t + i)
        - special.betaln(1 + i, b_t)
        - special.betaln(a_c, b_c)
    )
    return float(np.exp(terms).sum())


@pytest.mark.parametrize(
    ("a_c", "b_c", "a_t", "b_t"),
    [
        (1, 1, 1, 1),
        (2, 30, 5, 28),
        (11, 91, 25, 77),
        (1, 1001, 3, 999),
        (101, 9901, 130, 9871),
        (1, 5, 200, 3),
        (500, 20, 3, 1),
        (2001, 18001, 2101, 17901),
    ],
)
def test_beta_chance_to_beat_equals_evan_millers_closed_form(
    a_c: int, b_c: int, a_t: int, b_t: int
) -> None:
    ours = bayes.beta_chance_to_beat(a_c, b_c, a_t, b_t)
    assert ours == pytest.approx(_miller(a_c, b_c, a_t, b_t), abs=1e-9)


def _monte_carlo(draw_c: np.ndarray, draw_t: np.ndarray) -> dict[str, tuple[float, float]]:
    """Each figure with its Monte Carlo standard error."""
    n = draw_c.size
    wins, loss_t, loss_c = (
        draw_t > draw_c,
        np.maximum(draw_c - draw_t, 0),
        np.maximum(draw_t - draw_c, 0),
    )
    return {
        "chance": (wins.mean(), wins.std() / math.sqrt(n)),
        "risk_treatment": (loss_t.mean(), loss_t.std() / math.sqrt(n)),
        "risk_control": (loss_c.mean(), loss_c.std() / math.sqrt(n)),
    }


def _agrees(result: bayes.Bayesian, draw_c: np.ndarray, draw_t: np.ndarray) -> None:
    mc = _monte_carlo(draw_c, draw_t)
    ours = {
        "chance": result.chance_to_beat_control,
        "risk_treatment": result.risk_treatment,
        "risk_control": result.risk_control,
    }
    for name, (estimate, error) in mc.items():
        assert ours[name] == pytest.approx(estimate, abs=4.5 * error + 1e-12), name
    # The lift's equal-tailed interval against the sampled quantiles of T / C - 1, with
    # distribution-free bounds: the q quantile lies between the order statistics
    # n q -/+ 4.5 sqrt(n q (1 - q)) but with probability 7e-6 (the ratio can be heavy-tailed).
    lift = np.sort(draw_t / draw_c - 1)
    n = lift.size
    for level, ours_bound in ((0.025, result.lift_lower), (0.975, result.lift_upper)):
        spread = 4.5 * math.sqrt(n * level * (1 - level))
        low, high = lift[int(n * level - spread)], lift[int(n * level + spread)]
        assert ours_bound is not None
        assert low <= ours_bound <= high, (level, low, ours_bound, high)


@pytest.mark.parametrize(
    ("n_c", "s_c", "n_t", "s_t"),
    [
        (0, 0, 0, 0),
        (10, 0, 12, 1),
        (200, 20, 200, 30),
        (1000, 100, 1100, 120),
        (20000, 2000, 20000, 2100),
        (2_000_000, 100_000, 2_000_000, 100_600),
    ],
)
def test_beta_posteriors_agree_with_monte_carlo(n_c: int, s_c: int, n_t: int, s_t: int) -> None:
    result = bayesian_test(
        Summary.proportion(n_c, s_c), Summary.proportion(n_t, s_t), kind="proportion", alpha=0.05
    )
    assert result.model == "beta"
    rng = np.random.default_rng(n_c + s_t)
    size = 2_000_000
    draw_c, draw_t = rng.beta(1 + s_c, 1 + n_c - s_c, size), rng.beta(1 + s_t, 1 + n_t - s_t, size)
    _agrees(result, draw_c, draw_t)
    assert_json_safe(result)


def test_beta_lift_interval_switches_to_fieller_only_where_it_is_exact_enough() -> None:
    """Above 10,000 successes and failures per arm the interval comes from the posteriors'
    normal approximations: compared here with the exact root finding at the switch."""
    a_c, b_c, a_t, b_t = 10_001.0, 90_001.0, 10_400.0, 89_602.0
    exact = (
        bayes.beta_lift_quantile(a_c, b_c, a_t, b_t, 0.025),
        bayes.beta_lift_quantile(a_c, b_c, a_t, b_t, 0.975),
    )
    result = bayes.beta_test(a_c - 1, 100_000, a_t - 1, 100_000, alpha=0.05)
    width = exact[1] - exact[0]
    assert result.lift_lower == pytest.approx(exact[0], abs=1e-3 * width)
    assert result.lift_upper == pytest.approx(exact[1], abs=1e-3 * width)
    assert result.lift_lower != exact[0]  # the approximation was used


@pytest.mark.parametrize(
    ("mean_c", "var_c", "n_c", "mean_t", "var_t", "n_t"),
    [
        (10.0, 9.0, 1000, 10.2, 12.0, 1000),
        (1.0, 4.0, 300, 1.3, 2.0, 500),
        (-5.0, 25.0, 2000, -4.6, 30.0, 2000),
        (3.0, 1.0, 50, 2.9, 1.5, 40),
    ],
)
def test_normal_posteriors_agree_with_monte_carlo(
    mean_c: float, var_c: float, n_c: int, mean_t: float, var_t: float, n_t: int
) -> None:
    def summary(mean: float, variance: float, n: int) -> Summary:
        return Summary(n, mean * n, variance * (n - 1) + mean * mean * n)

    result = bayesian_test(summary(mean_c, var_c, n_c), summary(mean_t, var_t, n_t), kind="mean")
    assert result.model == "normal"
    rng = np.random.default_rng(n_c)
    size = 2_000_000
    draw_c = rng.normal(mean_c, math.sqrt(var_c / n_c), size)
    draw_t = rng.normal(mean_t, math.sqrt(var_t / n_t), size)
    _agrees(result, draw_c, draw_t)
    d, s = mean_t - mean_c, math.sqrt(var_c / n_c + var_t / n_t)
    assert result.chance_to_beat_control == pytest.approx(sps.norm.cdf(d / s), **EXACT)
    loss = s * sps.norm.pdf(d / s) - d * sps.norm.cdf(-d / s)
    assert result.risk_treatment == pytest.approx(loss, **EXACT)


def test_bayesian_is_fast_at_millions_of_units() -> None:
    start = time.perf_counter()
    for shift in range(5):
        bayes.beta_test(50_000 + shift, 1_000_000, 50_500, 1_000_000, alpha=0.05)
        bayes.beta_test(500 + shift, 10_000, 530, 10_000, alpha=0.05)
    assert (time.perf_counter() - start) / 10 < 0.1  # typically 2 ms and 15 ms


# -- sequential (mSPRT) ----------------------------------------------------------------------


def _johari_half_width(estimate: float, se: float, n: int, alpha: float, rho: float) -> float:
    """Solve Lambda_n(theta) = 1 / alpha for the normal-mixture likelihood ratio of Johari,
    Pekelis & Walsh (2022) with mixture H = N(0, tau^2): Lambda_n = sqrt(s^2 / (s^2 + n tau^2))
    exp(n^2 tau^2 (estimate - theta)^2 / (2 s^2 (s^2 + n tau^2))), s^2 the per-unit variance,
    tau^2 = rho^2 s^2 (GrowthBook's parametrisation)."""
    s2 = se * se * n
    tau2 = rho * rho * s2

    def log_lambda(theta: float) -> float:
        log_root = 0.5 * math.log(s2 / (s2 + n * tau2))
        return log_root + n * n * tau2 * (estimate - theta) ** 2 / (2 * s2 * (s2 + n * tau2))

    upper = optimize.brentq(
        lambda th: log_lambda(th) + math.log(alpha), estimate, estimate + 1e3 * se, xtol=1e-15
    )
    return float(upper) - estimate


@pytest.mark.parametrize(
    ("n", "alpha", "tuning"),
    [(2000, 0.05, 5000), (30000, 0.05, 5000), (1500, 0.1, 1000), (100_000, 0.01, 20_000)],
)
def test_always_valid_interval_is_the_mixture_sprt_boundary(
    n: int, alpha: float, tuning: int
) -> None:
    c, t = draw(n, "mean", n // 2, n - n // 2)
    fixed = welch_test(Summary.from_values(c), Summary.from_values(t), alpha=alpha)
    result = always_valid(fixed, n, tuning=tuning)
    rho = math.sqrt((-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tuning)
    assert sequential.mixture_rho(alpha, tuning) == pytest.approx(rho, **EXACT)
    se, value = fixed.absolute.standard_error, fixed.absolute.value
    assert se is not None
    assert value is not None
    assert result.absolute.upper is not None
    half = _johari_half_width(value, se, n, alpha, rho)
    assert result.absolute.upper - value == pytest.approx(half, rel=1e-9)
    # ... which is GrowthBook's closed form, with V the per-unit variance of the estimate
    v = se * se * n
    closed = math.sqrt(v) * math.sqrt(
        2 * (n * rho**2 + 1) / (n**2 * rho**2) * math.log(math.sqrt(n * rho**2 + 1) / alpha)
    )
    assert half == pytest.approx(closed, rel=1e-9)
    # and its p-value is 1 / Lambda_n at theta = 0: below alpha exactly outside the interval
    s2, tau2 = v, rho * rho * v
    lam = math.sqrt(s2 / (s2 + n * tau2)) * math.exp(
        n * n * tau2 * value**2 / (2 * s2 * (s2 + n * tau2))
    )
    assert result.p_value == pytest.approx(min(1.0, 1 / lam), rel=1e-9)


def test_mixture_rho_makes_the_interval_tightest_at_the_tuning_point() -> None:
    tuning = 5000
    for alpha in (0.01, 0.05, 0.1):

        def width(rho: float, alpha: float = alpha) -> float:
            return sequential.half_width(1.0 / tuning, tuning, alpha, rho)

        best = optimize.minimize_scalar(width, bounds=(1e-4, 1.0), method="bounded")
        # eq. 161 is an approximation of the optimum: within 0.01% of the best width
        assert width(sequential.mixture_rho(alpha, tuning)) <= best.fun * (1 + 1e-4)


@pytest.mark.parametrize("n", [3, 4, 6, 10, 30, 100, 1000, 10_000, 1_000_000])
@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
def test_always_valid_interval_contains_the_fixed_horizon_one(n: int, alpha: float) -> None:
    c, t = draw(n, "mean", n, n)
    fixed = welch_test(Summary.from_values(c), Summary.from_values(t), alpha=alpha)
    result = always_valid(fixed, 2 * n, tuning=5000)
    for wide, narrow in ((result.absolute, fixed.absolute), (result.relative, fixed.relative)):
        assert wide.lower is not None
        assert narrow.lower is not None
        assert wide.upper is not None
        assert narrow.upper is not None
        assert wide.lower <= narrow.lower
        assert wide.upper >= narrow.upper
    assert result.p_value is not None
    assert fixed.p_value is not None
    assert result.p_value >= fixed.p_value
    lower, upper = result.absolute.lower, result.absolute.upper
    assert lower is not None
    assert upper is not None
    assert result.significant == (not lower <= 0 <= upper)


def test_peeking_after_every_batch_keeps_the_always_valid_error_rate() -> None:
    """A/A tests read after every one of 20 batches: the fixed-horizon interval excludes 0 at
    some peek far more often than alpha (why sequential testing exists); the always-valid one
    stays below it."""
    runs, peeks, batch, alpha = 1000, 20, 200, 0.05
    rng = np.random.default_rng(2024)
    values = rng.lognormal(1.0, 0.7, (runs, 2, peeks, batch))
    sums = np.cumsum(values.sum(axis=3), axis=2)
    squares = np.cumsum((values * values).sum(axis=3), axis=2)
    fixed_flagged = sequential_flagged = 0
    for r in range(runs):
        fixed_hit = sequential_hit = False
        for k in range(peeks):
            n = (k + 1) * batch
            control = Summary(n, sums[r, 0, k], squares[r, 0, k])
            treatment = Summary(n, sums[r, 1, k], squares[r, 1, k])
            fixed = welch_test(control, treatment, alpha=alpha)
            fixed_hit |= fixed.significant
            sequential_hit |= always_valid(fixed, 2 * n, tuning=5000).significant
        fixed_flagged += fixed_hit
        sequential_flagged += sequential_hit
    assert sequential_flagged / runs < 1.5 * alpha
    assert fixed_flagged / runs > 3 * alpha


def test_sequential_tuning_must_be_positive() -> None:
    fixed = welch_test(Summary.proportion(100, 10), Summary.proportion(100, 12))
    with pytest.raises(ValueError, match="tuning must be >= 1"):
        always_valid(fixed, 200, tuning=0)
    with pytest.raises(ValueError, match="sequential_tuning must be >= 1"):
        compare(Summary.proportion(100, 10), {}, kind="proportion", sequential_tuning=-5)


# -- edge cases ------------------------------------------------------------------------------

EMPTY = Summary(0, 0.0, 0.0)
EDGE_CASES = [
    ("control has no units", EMPTY, Summary.proportion(50, 5), "no units"),
    ("treatment has no units", Summary.proportion(50, 5), EMPTY, "no units"),
    ("no units at all", EMPTY, EMPTY, "no units"),
    ("one unit in control", Summary.proportion(1, 1), Summary.proportion(40, 9), "at least 2"),
    ("all zeros", Summary.proportion(500, 0), Summary.proportion(500, 0), "no variance"),
    ("all ones", Summary.proportion(500, 500), Summary.proportion(400, 400), "no variance"),
    ("zeros against ones", Summary.proportion(30, 0), Summary.proportion(30, 30), "no variance"),
    ("control mean 0", Summary.proportion(300, 0), Summary.proportion(300, 4), "control mean is 0"),
    ("two units each", Summary.proportion(2, 1), Summary.proportion(2, 2), ""),
    ("tiny", Summary.proportion(3, 1), Summary.proportion(2, 1), ""),
]
MEAN_EDGE_CASES = [
    (
        "mean 0 with spread",
        Summary.from_values([-1.0, 1.0, -2.0, 2.0]),
        Summary.from_values([0.5, 1.5, 2.0]),
        "control mean is 0",
    ),
    (
        "constant equal values",
        Summary.from_values([7.25] * 1000),
        Summary.from_values([7.25] * 900),
        "no variance",
    ),
    (
        "huge values",
        Summary.from_values([1e150, 3e150, 2e150]),
        Summary.from_values([2e150, 5e150]),
        "",
    ),
    (
        "tiny values",
        Summary.from_values([1e-300, 3e-300, 2e-300]),
        Summary.from_values([2e-300, 5e-300, 4e-300]),
        "",
    ),
    (
        "perfect covariate",
        Summary.from_values([1.0, 2.0, 3.0], covariates=[1.0, 2.0, 3.0]),
        Summary.from_values([2.0, 3.0, 4.0], covariates=[2.0, 3.0, 4.0]),
        "no variance",
    ),
]


@pytest.mark.parametrize(
    ("label", "control", "treatment", "why"), EDGE_CASES, ids=[c[0] for c in EDGE_CASES]
)
@pytest.mark.parametrize("kind", ["proportion", "mean"])
def test_edge_cases_have_defined_explained_results(
    label: str, control: Summary, treatment: Summary, why: str, kind: str
) -> None:
    results = compare(control, {"b": treatment}, kind=kind, sequential_tuning=5000)  # type: ignore[arg-type]
    [result] = results
    assert_json_safe(results)
    assert why in notes(result), label
    if result.frequentist.p_value is None:
        assert not result.significant
    if kind == "proportion":  # Beta posteriors exist whatever the counts
        assert result.bayesian.chance_to_beat_control is not None
        assert 0.0 <= result.bayesian.chance_to_beat_control <= 1.0


@pytest.mark.parametrize(
    ("label", "control", "treatment", "why"), MEAN_EDGE_CASES, ids=[c[0] for c in MEAN_EDGE_CASES]
)
def test_mean_edge_cases_have_defined_explained_results(
    label: str, control: Summary, treatment: Summary, why: str
) -> None:
    results = compare(control, {"b": treatment, "c": control}, kind="mean", sequential_tuning=100)
    assert_json_safe(results)
    assert why in notes(results[0]), label


def test_control_mean_zero_keeps_the_absolute_difference() -> None:
    [result] = compare(
        Summary.proportion(300, 0), {"b": Summary.proportion(300, 9)}, kind="proportion"
    )
    assert result.frequentist.absolute.value == pytest.approx(0.03)
    assert result.frequentist.p_value is not None
    assert result.frequentist.relative.value is None
    assert result.frequentist.relative.note == "the control mean is 0: relative lift is undefined"


def test_zeros_against_ones_keeps_the_exact_difference() -> None:
    result = welch_test(Summary.proportion(30, 0), Summary.proportion(30, 30))
    assert result.absolute.value == 1.0
    assert result.p_value is None
    assert result.note == "no variance in either variant: nothing to test"


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_alpha_outside_the_unit_interval_is_refused_by_name(alpha: float) -> None:
    control, treatment = Summary.proportion(100, 10), Summary.proportion(100, 12)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        compare(control, {"b": treatment}, kind="proportion", alpha=alpha)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        welch_test(control, treatment, alpha=alpha)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        bayesian_test(control, treatment, kind="mean", alpha=alpha)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\)"):
        sample_ratio_mismatch([10, 10], [1, 1], threshold=alpha)


def test_compare_refuses_what_is_not_a_proportion_or_a_kind() -> None:
    with pytest.raises(ValueError, match="b: a proportion's total must be in"):
        compare(Summary.proportion(10, 1), {"b": Summary.proportion(10, 11)}, kind="proportion")
    with pytest.raises(ValueError, match="total_squares must equal its total"):
        compare(Summary(10, 2.0, 3.0), {}, kind="proportion")
    with pytest.raises(ValueError, match="kind must be"):
        compare(Summary(10, 2.0, 3.0), {}, kind="ratio")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="correction must be"):
        compare(Summary(10, 2.0, 3.0), {}, kind="mean", correction="fdr")  # type: ignore[arg-type]
    assert compare(Summary(10, 2.0, 3.0), {}, kind="mean") == []


_sums = st.floats(min_value=-1e150, max_value=1e150, allow_nan=False)


@st.composite
def _summaries(draw_: st.DrawFn) -> Summary:
    n = draw_(st.one_of(st.integers(0, 4), st.integers(0, 10**7)))
    if n == 0:
        return EMPTY
    total, x = draw_(_sums), draw_(_sums)
    squares = draw_(st.one_of(st.floats(0, 1e300), st.just(total * total / n)))
    covariate_squares = draw_(st.one_of(st.floats(0, 1e300), st.just(x * x / n)))
    return Summary(n, total, squares, x, covariate_squares, draw_(_sums))


@st.composite
def _proportions(draw_: st.DrawFn) -> Summary:
    n = draw_(st.one_of(st.integers(0, 4), st.integers(0, 10**7)))
    return Summary.proportion(n, draw_(st.integers(0, n)))


@settings(max_examples=150, deadline=None)
@given(control=_summaries(), treatments=st.lists(_summaries(), min_size=1, max_size=3))
def test_any_sums_give_a_json_safe_answer(control: Summary, treatments: list[Summary]) -> None:
    named = {f"t{i}": t for i, t in enumerate(treatments)}
    assert_json_safe(compare(control, named, kind="mean", sequential_tuning=1000))


@settings(max_examples=60, deadline=None)
@given(control=_proportions(), treatment=_proportions())
def test_any_counts_give_a_json_safe_answer(control: Summary, treatment: Summary) -> None:
    results = compare(control, {"b": treatment}, kind="proportion", sequential_tuning=1000)
    assert_json_safe(results)
    assert results[0].bayesian.chance_to_beat_control is not None


def test_docstring_examples_run() -> None:
    for module in (stats,):
        failures, tried = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert tried > 0
        assert failures == 0


# -- GrowthBook's engine ---------------------------------------------------------------------

GBSTATS: dict[str, Any] = json.loads(REFERENCE.read_text())
TIGHT = {"rel": 1e-9, "abs": 1e-12}


def _summary(d: dict[str, float]) -> Summary:
    return Summary(
        int(d["n"]),
        d["total"],
        d["total_squares"],
        d.get("covariate", 0.0),
        d.get("covariate_squares", 0.0),
        d.get("cross", 0.0),
    )


def _same_as_gbstats(ours: stats.Estimate, theirs: dict[str, Any]) -> None:
    assert ours.value == pytest.approx(theirs["expected"], **TIGHT)
    assert ours.standard_error == pytest.approx(theirs["stddev"], **TIGHT)
    assert [ours.lower, ours.upper] == pytest.approx(theirs["ci"], **TIGHT)


def _cases(section: str) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = GBSTATS[section]
    return cases


@pytest.mark.parametrize("case", _cases("frequentist"), ids=lambda c: c["name"])
def test_frequentist_agrees_with_gbstats(case: dict[str, Any]) -> None:
    control, treatment = _summary(case["control"]), _summary(case["treatment"])
    cuped = "theta" in case
    ours = welch_test(control, treatment, alpha=case["alpha"], cuped=cuped)
    absolute, relative = case["gbstats"]["absolute"], case["gbstats"]["relative"]
    _same_as_gbstats(ours.absolute, absolute)
    # gbstats' p-value of a relative result is the relative statistic's; ours is Welch's
    # on the difference, which is its absolute run.
    assert ours.p_value == pytest.approx(absolute["p_value"], **TIGHT)
    if not cuped:
        _same_as_gbstats(ours.relative, relative)
        return
    assert ours.cuped is not None
    assert ours.cuped.theta == pytest.approx(case["theta"], **TIGHT)
    # Convention: gbstats divides the adjusted difference by the unadjusted control mean; we
    # take the ratio of the adjusted means. Reproduce theirs from our difference:
    control_mean = control.total / control.n
    assert ours.absolute.value is not None
    assert ours.absolute.value / control_mean == pytest.approx(relative["expected"], **TIGHT)


@pytest.mark.parametrize(
    "case", [c for c in _cases("frequentist") if c["kind"] == "proportion"], ids=lambda c: c["name"]
)
def test_gbstats_proportion_statistic_differs_only_by_its_variance(case: dict[str, Any]) -> None:
    """gbstats' ProportionStatistic takes p (1 - p) as the variance (denominator n), not
    Welch's n - 1: a Summary whose sum of squares gives that variance reproduces it."""
    theirs = case["gbstats_proportion_statistic"]

    def with_gbstats_variance(d: dict[str, float]) -> Summary:
        n, total = int(d["n"]), d["total"]
        p = total / n
        return Summary(n, total, total * total / n + (n - 1) * p * (1 - p))

    ours = welch_test(
        with_gbstats_variance(case["control"]),
        with_gbstats_variance(case["treatment"]),
        alpha=case["alpha"],
    )
    _same_as_gbstats(ours.absolute, theirs["absolute"])
    _same_as_gbstats(ours.relative, theirs["relative"])
    assert ours.p_value == pytest.approx(theirs["absolute"]["p_value"], **TIGHT)


@pytest.mark.parametrize("case", _cases("sequential"), ids=lambda c: c["name"])
def test_sequential_agrees_with_gbstats(case: dict[str, Any]) -> None:
    control, treatment = _summary(case["control"]), _summary(case["treatment"])
    fixed = welch_test(control, treatment, alpha=case["alpha"])
    ours = always_valid(fixed, control.n + treatment.n, tuning=case["tuning"])
    _same_as_gbstats(ours.absolute, case["gbstats"]["absolute"])
    _same_as_gbstats(ours.relative, case["gbstats"]["relative"])
    assert ours.p_value == pytest.approx(case["gbstats"]["absolute"]["p_value"], **TIGHT)


@pytest.mark.parametrize("case", _cases("srm"), ids=lambda c: str(c["counts"]))
def test_srm_agrees_with_gbstats(case: dict[str, Any]) -> None:
    result = sample_ratio_mismatch(case["counts"], case["weights"])
    assert result.p_value == pytest.approx(case["p_value"], **TIGHT)


def test_the_gbstats_reference_covers_each_kind() -> None:
    assert GBSTATS["gbstats_version"] == "0.8.0"
    names = [c["name"] for c in GBSTATS["frequentist"]]
    assert all(any(n.startswith(kind) for n in names) for kind in ("mean", "proportion", "cuped"))


def test_every_pair_of_variants_is_compared_independently() -> None:
    """compare's results for one treatment do not depend on which others are present,
    beyond the Bonferroni alpha and Holm's adjustment."""
    rng = np.random.default_rng(9)
    control = Summary.from_values(rng.normal(1, 1, 500))
    treatments = {k: Summary.from_values(rng.normal(1.1, 1, 500)) for k in "bcd"}
    everything = {
        r.variant: r for r in compare(control, treatments, kind="mean", correction="none")
    }
    for pair in combinations("bcd", 2):
        some = compare(control, {k: treatments[k] for k in pair}, kind="mean", correction="none")
        for result in some:
            assert result == everything[result.variant]
