"""The normal-mixture mSPRT behind always-valid confidence intervals.

Johari, Pekelis & Walsh, "Always valid inference: continuous monitoring of A/B tests"
(Operations Research 70(3), 2022; arXiv:1512.04922): with a N(0, tau^2) mixture over the
effect, the likelihood ratio of an estimate whose variance is V/N after N units is

    Lambda_N = sqrt(V / (V + N tau^2)) * exp(N^2 tau^2 (estimate - theta)^2 / (2 V (V + N tau^2)))

and the values theta with Lambda_N < 1/alpha form an interval that covers the truth at every
N at once, so results can be read at every peek. GrowthBook writes tau^2 = rho^2 V and picks rho
to make the interval tightest at N = N* ("sequential testing" in its docs; gbstats'
`SequentialTwoSidedTTest`, which cites eqs. 9, 155 and 161 of Waudby-Smith et al.,
"Time-uniform central limit theory and asymptotic confidence sequences", arXiv:2103.06476v7).
These functions are that arithmetic only; `stats.py` applies it to a comparison.
"""

from __future__ import annotations

import math

__all__ = ["half_width", "mixture_rho", "p_value"]


def mixture_rho(alpha: float, tuning: float) -> float:
    """The mixture's rho that makes the interval tightest at `tuning` (N*) units.

    Waudby-Smith et al. eq. 161, as in GrowthBook: rho^2 = (-2 ln a + ln(1 - 2 ln a)) / N*.
    """
    minus_two_log_alpha = -2.0 * math.log(alpha)
    return math.sqrt((minus_two_log_alpha + math.log(minus_two_log_alpha + 1.0)) / tuning)


def half_width(variance: float, n: int, alpha: float, rho: float) -> float:
    """Half-width of the always-valid interval for an estimate with `variance` after `n` units.

    Waudby-Smith et al. eq. 9, as in GrowthBook, with V = variance * n (the per-unit variance):
    sqrt(V) * sqrt(2 (n rho^2 + 1) / (n^2 rho^2) * ln(sqrt(n rho^2 + 1) / alpha)).
    """
    n_rho2 = n * rho * rho
    per_unit = variance * n
    return math.sqrt(
        per_unit * 2.0 * (n_rho2 + 1.0) / (n * n_rho2) * math.log(math.sqrt(n_rho2 + 1.0) / alpha)
    )


def p_value(estimate: float, variance: float, n: int, rho: float) -> float:
    """Always-valid p-value of `estimate` = 0: 1 / Lambda_n, capped at 1 (eq. 155).

    It is below alpha exactly when the interval of `half_width` excludes 0. Worked in logs so
    a large statistic cannot overflow the exponential.
    """
    n_rho2 = n * rho * rho
    log_lambda = n_rho2 * estimate * estimate / (2.0 * variance * (n_rho2 + 1.0))
    log_lambda -= 0.5 * math.log(n_rho2 + 1.0)
    return math.exp(-log_lambda) if log_lambda > 0.0 else 1.0
