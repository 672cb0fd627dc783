"""The statistics engine of experiments: compare each treatment with control for one metric.

Everything works from per-variant sufficient statistics (`Summary`: count, sum, sum of
squares), which the results query aggregates in SQL. Results are JSON-safe: a figure that
cannot be computed is None, and a `note` says why; no NaN or infinity is ever returned.

- Frequentist: Welch's t-test (Welch-Satterthwaite degrees of freedom, sample variances with
  n - 1) for means and proportions alike, so it equals `scipy.stats.ttest_ind(equal_var=False)`
  on the raw values; relative lift's variance by the delta method, as GrowthBook's engine
  (docs.growthbook.io/statistics/details):
  Var(lift) = var_t / (n_t mu_c^2) + mu_t^2 var_c / (n_c mu_c^4).
- Several treatments: Holm-Bonferroni adjusted p-values; intervals at alpha / m (Bonferroni).
- Bayesian: see `bayes.py`; sequential (always-valid mSPRT intervals): see `sequential.py`.
- CUPED (Deng et al. 2013; docs.growthbook.io/statistics/cuped-technical): theta =
  Cov(X, Y) / Var(X) over the units of both variants of a comparison.
- Sample ratio mismatch: chi-square goodness of fit against the configured weights.

Example:
    >>> control = Summary.proportion(n=1000, successes=100)
    >>> [result] = compare(control, {"b": Summary.proportion(n=1000, successes=130)},
    ...                    kind="proportion")
    >>> round(result.frequentist.p_value, 4), result.significant
    (0.0355, True)
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt
from scipy import special

from intently.experiments import sequential
from intently.experiments.bayes import Bayesian, beta_test, normal_test

__all__ = [
    "DEFAULT_SEQUENTIAL_TUNING",
    "SRM_THRESHOLD",
    "Bayesian",
    "Comparison",
    "Cuped",
    "Estimate",
    "Frequentist",
    "Kind",
    "SampleRatio",
    "Sequential",
    "Summary",
    "always_valid",
    "bayesian_test",
    "compare",
    "holm_bonferroni",
    "sample_ratio_mismatch",
    "welch_test",
]

Kind = Literal["proportion", "mean"]
Correction = Literal["holm-bonferroni", "none"]
SRM_THRESHOLD = 0.001
# GrowthBook's default N*: the number of units at which always-valid intervals are tightest.
DEFAULT_SEQUENTIAL_TUNING = 5000
# A variance under this share of the mean square is rounding in sums over a million units,
# not spread in the data: SQL sums lose about n * 1e-16 of their value.
_ZERO_VARIANCE = 1e-10

_NO_UNITS = "a variant has no units yet: nothing to compare"
_TOO_FEW = "each variant needs at least 2 units to estimate its variance"
_NO_VARIANCE = "no variance in either variant: nothing to test"
_ZERO_CONTROL = "the control mean is 0: relative lift is undefined"
_OVERFLOW = "the sums are too large to compute with in floating point"


class Summary(msgspec.Struct, frozen=True):
    """One variant's metric over its units (visitors): count, sum and sum of squares of the
    per-unit values; for CUPED also the pre-exposure covariate's sums.

    Proportions are the same thing with 0/1 values: total_squares == total.

    >>> Summary.from_values([0.0, 2.0, 4.0], covariates=[1.0, 1.0, 3.0])
    Summary(n=3, total=6.0, total_squares=20.0, covariate=5.0, covariate_squares=11.0, cross=14.0)
    """

    n: int
    total: float  # sum of y
    total_squares: float  # sum of y^2
    covariate: float = 0.0  # sum of x (pre-exposure value of the same metric)
    covariate_squares: float = 0.0  # sum of x^2
    cross: float = 0.0  # sum of x*y

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"Summary.n must be >= 0, got {self.n}")
        for name in ("total", "total_squares", "covariate", "covariate_squares", "cross"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"Summary.{name} must be finite, got {value!r}")
            if self.n == 0 and value != 0:
                raise ValueError(f"Summary.{name} must be 0 when n is 0, got {value!r}")

    @classmethod
    def from_values(cls, values: npt.ArrayLike, covariates: npt.ArrayLike | None = None) -> Summary:
        """Summarise per-unit values (and their pre-exposure covariates, for CUPED)."""
        y = np.asarray(values, dtype=np.float64).ravel()
        n, total, squares = int(y.size), float(y.sum()), float(y @ y)
        if covariates is None:
            return cls(n, total, squares)
        x = np.asarray(covariates, dtype=np.float64).ravel()
        if x.shape != y.shape:
            raise ValueError(f"covariates must have one value per unit: {x.size} != {y.size}")
        return cls(n, total, squares, float(x.sum()), float(x @ x), float(x @ y))

    @classmethod
    def proportion(cls, n: int, successes: int) -> Summary:
        """A 0/1 metric: `successes` of `n` units converted."""
        return cls(n=n, total=float(successes), total_squares=float(successes))


class Estimate(msgspec.Struct, frozen=True):
    """An effect of treatment over control: value, standard error and interval [lower, upper]."""

    value: float | None
    standard_error: float | None = None
    lower: float | None = None
    upper: float | None = None
    note: str | None = None


class Cuped(msgspec.Struct, frozen=True):
    """How CUPED adjusted a comparison; `applied` is False when it fell back to raw values."""

    applied: bool
    theta: float | None = None
    variance_reduction: float | None = None  # share of the difference's variance removed
    note: str | None = None


class Frequentist(msgspec.Struct, frozen=True):
    """Welch's t-test of treatment against control at level 1 - alpha.

    `significant` is p_value < alpha, i.e. the absolute interval excludes 0. With CUPED the
    means are the adjusted ones.
    """

    alpha: float
    control_mean: float | None
    treatment_mean: float | None
    absolute: Estimate
    relative: Estimate
    statistic: float | None = None
    dof: float | None = None
    p_value: float | None = None
    significant: bool = False
    cuped: Cuped | None = None
    note: str | None = None


class Sequential(msgspec.Struct, frozen=True):
    """Always-valid (mSPRT) intervals and p-value: safe to read at every peek."""

    alpha: float
    tuning: int
    absolute: Estimate
    relative: Estimate
    p_value: float | None = None
    significant: bool = False
    note: str | None = None


class Comparison(msgspec.Struct, frozen=True):
    """One treatment against control for one metric: everything a results page shows.

    `frequentist` is at alpha / comparisons (Bonferroni) so its intervals hold jointly;
    `significant` is adjusted_p_value (Holm-Bonferroni) < alpha, which can be True while the
    Bonferroni interval still touches 0: Holm is the more powerful of the two.
    """

    variant: str
    kind: Kind
    alpha: float
    comparisons: int
    control_n: int
    treatment_n: int
    control_mean: float | None  # unadjusted
    treatment_mean: float | None
    frequentist: Frequentist
    adjusted_p_value: float | None
    significant: bool
    bayesian: Bayesian
    sequential: Sequential | None = None


class SampleRatio(msgspec.Struct, frozen=True):
    """Chi-square goodness of fit of the units per variant against the configured weights."""

    observed: tuple[int, ...]
    expected: tuple[float, ...]
    statistic: float | None = None
    dof: int | None = None
    p_value: float | None = None
    mismatch: bool = False
    note: str | None = None


class _Arm(NamedTuple):
    n: int
    mean: float
    variance: float  # sample variance (n - 1); 0.0 below 2 units


def welch_test(
    control: Summary, treatment: Summary, *, alpha: float = 0.05, cuped: bool = False
) -> Frequentist:
    """Welch's t-test of treatment against control, CUPED-adjusted when asked and possible."""
    _check_alpha(alpha)
    arms = _arm(control), _arm(treatment)
    info = None
    if cuped:
        arms, info = _cuped(control, treatment)
    result = _welch(*arms, alpha)
    if info is not None and info.applied:
        raw = _welch(_arm(control), _arm(treatment), alpha)
        info = _with_reduction(info, raw, result)
    return msgspec.structs.replace(result, cuped=info)


def always_valid(
    fixed: Frequentist, n: int, *, tuning: int = DEFAULT_SEQUENTIAL_TUNING
) -> Sequential:
    """Widen a fixed-horizon result into always-valid (mSPRT) intervals after `n` units in all.

    The interval is never narrower than the fixed-horizon one (with few units Welch's t
    quantile can exceed the mixture's bound), and the p-value is never smaller, so the two
    stay consistent: p_value < alpha exactly when the absolute interval excludes 0.
    """
    if tuning < 1:
        raise ValueError(f"sequential tuning must be >= 1, got {tuning}")
    if fixed.p_value is None:
        return Sequential(fixed.alpha, tuning, fixed.absolute, fixed.relative, note=fixed.note)
    rho = sequential.mixture_rho(fixed.alpha, tuning)
    absolute = _widen(fixed.absolute, n, fixed.alpha, rho)
    value, se = fixed.absolute.value, fixed.absolute.standard_error
    assert value is not None  # a p-value comes with a value and a standard error
    assert se is not None
    mixture_p = sequential.p_value(value, se * se, n, rho)
    p = max(fixed.p_value, mixture_p)
    relative = _widen(fixed.relative, n, fixed.alpha, rho)
    return Sequential(fixed.alpha, tuning, absolute, relative, p, significant=p < fixed.alpha)


def bayesian_test(
    control: Summary, treatment: Summary, *, kind: Kind, alpha: float = 0.05
) -> Bayesian:
    """Chance to beat control, risks and the lift's credible interval (`bayes.py`)."""
    _check_alpha(alpha)
    if _check_kind(kind) == "proportion":
        _check_proportion("control", control)
        _check_proportion("treatment", treatment)
        return beta_test(control.total, control.n, treatment.total, treatment.n, alpha=alpha)
    return _bayes_normal(_arm(control), _arm(treatment), alpha)


def holm_bonferroni(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values: reject H_i at level alpha when adjusted[i] <= alpha.

    Holm (1979): sorted ascending, adjusted p_(k) = max over j <= k of min(1, (m - j + 1) p_(j)).
    """
    for p in p_values:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p_values must lie in [0, 1], got {p!r}")
    m = len(p_values)
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def sample_ratio_mismatch(
    counts: Sequence[int], weights: Sequence[float], *, threshold: float = SRM_THRESHOLD
) -> SampleRatio:
    """Check observed units per variant against configured weights; mismatch when p < threshold.

    A variant with weight 0 takes no part in the test while it has no units, and is a
    mismatch outright once it has any (traffic reaches a variant that should get none).
    """
    _check_alpha(threshold, "threshold")
    if len(counts) != len(weights):
        raise ValueError(f"counts and weights differ in length: {len(counts)} != {len(weights)}")
    if any(c < 0 for c in counts):
        raise ValueError(f"counts must be >= 0, got {list(counts)}")
    if any(not math.isfinite(w) or w < 0 for w in weights) or not sum(weights) > 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {list(weights)}")
    total, weight = sum(counts), sum(weights)
    observed = tuple(int(c) for c in counts)
    expected = tuple(w / weight * total for w in weights)
    if total == 0:
        return SampleRatio(observed, expected, note="no units yet: nothing to check")
    stray = [i for i, (c, w) in enumerate(zip(counts, weights, strict=True)) if w == 0 and c > 0]
    if stray:
        note = f"variants at positions {stray} have weight 0 but received units"
        return SampleRatio(observed, expected, p_value=0.0, mismatch=True, note=note)
    used = [i for i, w in enumerate(weights) if w > 0]
    if len(used) < 2:
        return SampleRatio(
            observed, expected, note="only one variant has weight: no ratio to check"
        )
    statistic = sum((observed[i] - expected[i]) ** 2 / expected[i] for i in used)
    p = float(special.chdtrc(len(used) - 1, statistic))
    return SampleRatio(observed, expected, statistic, len(used) - 1, p, p < threshold)


def compare(
    control: Summary,
    treatments: Mapping[str, Summary],
    *,
    kind: Kind,
    alpha: float = 0.05,
    cuped: bool = True,
    sequential_tuning: int | None = None,
    correction: Correction = "holm-bonferroni",
) -> list[Comparison]:
    """Compare every treatment with control: frequentist (CUPED when covariates are present),
    Bayesian, and always-valid intervals when `sequential_tuning` (N*) is given.

    With m treatments and `correction` "holm-bonferroni", intervals are at alpha / m and
    p-values are Holm-adjusted; the Bayesian figures are not adjusted (credible level 1 - alpha).
    """
    _check_alpha(alpha)
    _check_kind(kind)
    if correction not in ("holm-bonferroni", "none"):
        raise ValueError(f"correction must be 'holm-bonferroni' or 'none', got {correction!r}")
    if sequential_tuning is not None and sequential_tuning < 1:
        raise ValueError(f"sequential_tuning must be >= 1, got {sequential_tuning}")
    if kind == "proportion":
        for name, summary in [("control", control), *treatments.items()]:
            _check_proportion(name, summary)
    m = len(treatments) if correction == "holm-bonferroni" else 1
    each_alpha = alpha / max(m, 1)
    frequentist = {
        name: welch_test(control, treatment, alpha=each_alpha, cuped=cuped)
        for name, treatment in treatments.items()
    }
    # An untested comparison counts as p = 1: Holm then stays as strict as its m promises.
    p_values = [1.0 if f.p_value is None else f.p_value for f in frequentist.values()]
    adjusted = holm_bonferroni(p_values) if correction == "holm-bonferroni" else p_values
    results = []
    for (name, treatment), adjusted_p in zip(treatments.items(), adjusted, strict=True):
        fixed = frequentist[name]
        if fixed.cuped is not None and fixed.cuped.applied:
            # The Beta model cannot use the covariate: the adjusted means get normal posteriors.
            bayesian = _bayes_normal(*_cuped(control, treatment)[0], alpha)
        else:
            bayesian = bayesian_test(control, treatment, kind=kind, alpha=alpha)
        seq = None
        if sequential_tuning is not None:
            seq = always_valid(fixed, control.n + treatment.n, tuning=sequential_tuning)
        tested = fixed.p_value is not None
        comparison = Comparison(
            variant=name,
            kind=kind,
            alpha=alpha,
            comparisons=m,
            control_n=control.n,
            treatment_n=treatment.n,
            control_mean=_mean(control),
            treatment_mean=_mean(treatment),
            frequentist=fixed,
            adjusted_p_value=adjusted_p if tested else None,
            significant=tested and adjusted_p < alpha,
            bayesian=bayesian,
            sequential=seq,
        )
        results.append(comparison)
    return results


# -- internals -------------------------------------------------------------------------------


def _check_alpha(alpha: float, name: str = "alpha") -> None:
    if not 0.0 < alpha < 1.0:  # also refuses NaN
        raise ValueError(f"{name} must be in (0, 1), got {alpha!r}")


def _check_kind(kind: str) -> Kind:
    if kind == "proportion":
        return "proportion"
    if kind == "mean":
        return "mean"
    raise ValueError(f"kind must be 'proportion' or 'mean', got {kind!r}")


def _check_proportion(name: str, summary: Summary) -> None:
    if not 0.0 <= summary.total <= summary.n:
        raise ValueError(f"{name}: a proportion's total must be in [0, n], got {summary.total!r}")
    if not math.isclose(summary.total_squares, summary.total, rel_tol=1e-9, abs_tol=1e-9):
        raise ValueError(f"{name}: a proportion's total_squares must equal its total (0/1 values)")


def _mean(summary: Summary) -> float | None:
    return summary.total / summary.n if summary.n else None


def _variance(n: int, total: float, squares: float) -> float:
    if n < 2:
        return 0.0
    raw = (squares - total / n * total) / (n - 1)
    if not math.isfinite(raw):
        return math.inf  # overflowed: the callers report it rather than test on it
    return raw if raw > _ZERO_VARIANCE * squares / n else 0.0


def _covariance(n: int, total_x: float, total_y: float, cross: float) -> float:
    return (cross - total_x / n * total_y) / (n - 1) if n >= 2 else 0.0


def _arm(summary: Summary) -> _Arm:
    n = summary.n
    mean = summary.total / n if n else 0.0
    return _Arm(n, mean, _variance(n, summary.total, summary.total_squares))


def _cuped(control: Summary, treatment: Summary) -> tuple[tuple[_Arm, _Arm], Cuped]:
    """Adjusted arms: y - theta (x - pooled x); variance Var y - 2 theta Cov + theta^2 Var x."""
    raw = _arm(control), _arm(treatment)
    n = control.n + treatment.n
    if control.n < 2 or treatment.n < 2:
        return raw, Cuped(applied=False, note=f"not adjusted: {_TOO_FEW}")
    total_x = control.covariate + treatment.covariate
    var_x = _variance(n, total_x, control.covariate_squares + treatment.covariate_squares)
    if var_x == 0.0:
        note = "not adjusted: the pre-exposure covariate has no variance (no pre-exposure data?)"
        return raw, Cuped(applied=False, note=note)
    total_y = control.total + treatment.total
    theta = _covariance(n, total_x, total_y, control.cross + treatment.cross) / var_x
    pooled_x = total_x / n
    adjusted = []
    for s, arm in zip((control, treatment), raw, strict=True):
        x_var = _variance(s.n, s.covariate, s.covariate_squares)
        cov = _covariance(s.n, s.covariate, s.total, s.cross)
        variance = max(arm.variance - 2.0 * theta * cov + theta * theta * x_var, 0.0)
        adjusted.append(_Arm(s.n, arm.mean - theta * (s.covariate / s.n - pooled_x), variance))
    if not all(math.isfinite(v) for a in adjusted for v in a[1:]) or not math.isfinite(theta):
        return raw, Cuped(applied=False, note=f"not adjusted: {_OVERFLOW}")
    return (adjusted[0], adjusted[1]), Cuped(applied=True, theta=theta)


def _with_reduction(info: Cuped, raw: Frequentist, adjusted: Frequentist) -> Cuped:
    """The share of the difference's variance that CUPED removed, or a note why there is none."""
    before = raw.absolute.standard_error
    after = 0.0 if adjusted.note == _NO_VARIANCE else adjusted.absolute.standard_error
    if not before:
        why = raw.note or "the metric has no variance"
    elif after is None:
        why = adjusted.note or _OVERFLOW
    else:
        ratio = after / before
        reduction = 1.0 - ratio * ratio
        if math.isfinite(reduction):
            return msgspec.structs.replace(info, variance_reduction=reduction)
        why = _OVERFLOW
    return msgspec.structs.replace(info, note=f"no variance reduction to report: {why}")


def _welch(control: _Arm, treatment: _Arm, alpha: float) -> Frequentist:
    if control.n == 0 or treatment.n == 0:
        means = (control.mean if control.n else None, treatment.mean if treatment.n else None)
        empty = Estimate(None, note=_NO_UNITS)
        return Frequentist(alpha, *means, empty, empty, note=_NO_UNITS)
    diff = treatment.mean - control.mean
    lift = treatment.mean / control.mean - 1.0 if control.mean != 0 else None
    lift = lift if lift is not None and math.isfinite(lift) else None
    se2_c, se2_t = control.variance / control.n, treatment.variance / treatment.n
    se2 = se2_c + se2_t
    note = _TOO_FEW if control.n < 2 or treatment.n < 2 else None
    # Below the smallest normal float a variance is 0 for every purpose here (and squaring a
    # standard error that small would underflow).
    note = note or (_NO_VARIANCE if se2 < sys.float_info.min else None)
    if not (math.isfinite(diff) and math.isfinite(se2)):
        note, diff, lift = _OVERFLOW, math.nan, None
    if note is not None:
        absolute = Estimate(diff if math.isfinite(diff) else None, note=note)
        relative = Estimate(lift, note=_ZERO_CONTROL if control.mean == 0 else note)
        if lift is None and control.mean != 0:
            relative = Estimate(None, note=_OVERFLOW)
        return Frequentist(alpha, control.mean, treatment.mean, absolute, relative, note=note)
    se = math.sqrt(se2)
    # Welch-Satterthwaite, written in shares of se2 so that no square can underflow.
    share_c, share_t = se2_c / se2, se2_t / se2
    dof = 1.0 / (share_c * share_c / (control.n - 1) + share_t * share_t / (treatment.n - 1))
    statistic = diff / se
    p = float(2.0 * special.stdtr(dof, -abs(statistic)))
    quantile = float(special.stdtrit(dof, 1.0 - alpha / 2.0))
    lower, upper = diff - quantile * se, diff + quantile * se
    if not all(math.isfinite(v) for v in (statistic, lower, upper)):
        overflow = Estimate(None, note=_OVERFLOW)
        return Frequentist(alpha, control.mean, treatment.mean, overflow, overflow, note=_OVERFLOW)
    absolute = Estimate(diff, se, lower, upper)
    relative = _relative(control, treatment, quantile)
    means = control.mean, treatment.mean
    return Frequentist(alpha, *means, absolute, relative, statistic, dof, p, p < alpha)


def _relative(control: _Arm, treatment: _Arm, quantile: float) -> Estimate:
    """Relative lift with its delta-method standard error and interval (GrowthBook's formula)."""
    if control.mean == 0:
        return Estimate(None, note=_ZERO_CONTROL)
    var_c, var_t = control.variance / control.n, treatment.variance / treatment.n
    return _lift(control.mean, var_c, treatment.mean, var_t, quantile)


def _lift(mean_c: float, var_c: float, mean_t: float, var_t: float, quantile: float) -> Estimate:
    """T / C - 1 from the means and their variances: Var = (var_t + ratio^2 var_c) / mean_c^2."""
    ratio = mean_t / mean_c
    se = math.sqrt(var_t + ratio * ratio * var_c) / abs(mean_c)
    lift = ratio - 1.0
    bounds = lift - quantile * se, lift + quantile * se
    if not all(math.isfinite(v) for v in (lift, se, *bounds)):
        return Estimate(None, note=_OVERFLOW)
    return Estimate(lift, se, *bounds)


def _widen(fixed: Estimate, n: int, alpha: float, rho: float) -> Estimate:
    if fixed.value is None or fixed.standard_error is None or fixed.upper is None:
        return fixed
    se = fixed.standard_error
    half = max(sequential.half_width(se * se, n, alpha, rho), fixed.upper - fixed.value)
    bounds = fixed.value - half, fixed.value + half
    if not all(math.isfinite(v) for v in bounds):
        return Estimate(fixed.value, se, note=_OVERFLOW)
    return Estimate(fixed.value, se, *bounds)


def _bayes_normal(control: _Arm, treatment: _Arm, alpha: float) -> Bayesian:
    if control.n < 2 or treatment.n < 2:
        return Bayesian("normal", note=_NO_UNITS if not (control.n and treatment.n) else _TOO_FEW)
    return normal_test(
        control.mean,
        control.variance / control.n,
        treatment.mean,
        treatment.variance / treatment.n,
        alpha=alpha,
    )
