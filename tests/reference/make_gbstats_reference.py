"""Write tests/data/gbstats_reference.json: GrowthBook's engine (gbstats) on a few summaries.

gbstats pins numpy<2 and pandas 1.5, so it cannot live in intently's venv; run this from a
scratch one, then commit the JSON it writes (tests/test_experiment_stats.py reads it):

    python3 -m venv /tmp/gbvenv && /tmp/gbvenv/bin/pip install gbstats==0.8.0
    /tmp/gbvenv/bin/python tests/reference/make_gbstats_reference.py

Inputs are per-variant sums drawn with fixed numpy seeds; outputs are gbstats' own figures.
Conventions that differ from intently's are recorded, not hidden, and the test reproduces them:
- ProportionStatistic's variance is p (1 - p) (denominator n); intently uses n - 1 (Welch).
  Each proportion case is also run as SampleMeanStatistic on the same 0/1 sums.
- The p-value of a relative result is that of the relative statistic; intently's p-value is the
  absolute difference's (Welch's), so p-values are compared with gbstats' absolute runs.
- With CUPED the relative lift's denominator is the unadjusted control mean.
- gbstats' sequential p-value and interval are the mSPRT's alone; intently never lets them be
  tighter than the fixed-horizon ones (they are not, in these cases).
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import numpy as np
from gbstats.frequentist.tests import (
    FrequentistConfig,
    SequentialConfig,
    SequentialTwoSidedTTest,
    TwoSidedTTest,
)
from gbstats.models.statistics import (
    ProportionStatistic,
    RegressionAdjustedStatistic,
    SampleMeanStatistic,
    compute_theta,
)
from gbstats.utils import check_srm

OUT = Path(__file__).resolve().parent.parent / "data" / "gbstats_reference.json"


def sums(y: np.ndarray, x: np.ndarray | None = None) -> dict[str, float]:
    summary = {"n": int(y.size), "total": float(y.sum()), "total_squares": float(y @ y)}
    if x is not None:
        summary |= {
            "covariate": float(x.sum()),
            "covariate_squares": float(x @ x),
            "cross": float(x @ y),
        }
    return summary


def mean_stat(s: dict[str, float]) -> SampleMeanStatistic:
    return SampleMeanStatistic(n=int(s["n"]), sum=s["total"], sum_squares=s["total_squares"])


def result(test: Any) -> dict[str, Any]:
    r = test.compute_result()
    return {
        "expected": r.expected,
        "ci": list(r.ci),
        "p_value": r.p_value,
        "stddev": r.uplift.stddev,
        "error": r.error_message,
    }


def run(make_a: Any, make_b: Any, alpha: float, tuning: float | None = None) -> dict[str, Any]:
    """gbstats' figures for absolute and relative differences (fresh statistics each run)."""
    out = {}
    for difference in ("absolute", "relative"):
        if tuning is None:
            config = FrequentistConfig(alpha=alpha, difference_type=difference)
            out[difference] = result(TwoSidedTTest(make_a(), make_b(), config))
        else:
            config = SequentialConfig(
                alpha=alpha, difference_type=difference, sequential_tuning_parameter=tuning
            )
            out[difference] = result(SequentialTwoSidedTTest(make_a(), make_b(), config))
    return out


def main() -> None:
    cases: list[dict[str, Any]] = []
    for seed, (n_a, n_b, mu_b, sd_b, alpha) in enumerate(
        [
            (1000, 1000, 10.3, 3.0, 0.05),
            (250, 4000, 9.5, 5.0, 0.1),
            (20000, 19000, 10.05, 3.2, 0.01),
        ]
    ):
        rng = np.random.default_rng(seed)
        a, b = sums(rng.normal(10.0, 3.0, n_a)), sums(rng.normal(mu_b, sd_b, n_b))
        cases.append(
            {
                "name": f"mean-{seed}",
                "kind": "mean",
                "alpha": alpha,
                "control": a,
                "treatment": b,
                "gbstats": run(lambda a=a: mean_stat(a), lambda b=b: mean_stat(b), alpha),
            }
        )
    for seed, (n_a, p_a, n_b, p_b) in enumerate([(5000, 0.1, 5000, 0.112), (800, 0.3, 1200, 0.27)]):
        rng = np.random.default_rng(100 + seed)
        a = sums((rng.random(n_a) < p_a).astype(float))
        b = sums((rng.random(n_b) < p_b).astype(float))
        proportion = run(
            lambda a=a: ProportionStatistic(n=a["n"], sum=a["total"]),
            lambda b=b: ProportionStatistic(n=b["n"], sum=b["total"]),
            0.05,
        )
        as_mean = run(lambda a=a: mean_stat(a), lambda b=b: mean_stat(b), 0.05)
        cases.append(
            {
                "name": f"proportion-{seed}",
                "kind": "proportion",
                "alpha": 0.05,
                "control": a,
                "treatment": b,
                "gbstats": as_mean,
                "gbstats_proportion_statistic": proportion,
            }
        )

    for seed, (n_a, n_b) in enumerate([(3000, 3000), (700, 1500)]):
        rng = np.random.default_rng(200 + seed)
        x_a, x_b = rng.normal(10, 3, n_a), rng.normal(10, 3, n_b)
        y_a = 2.0 + 0.8 * x_a + rng.normal(0, 1.5, n_a)
        y_b = 2.3 + 0.8 * x_b + rng.normal(0, 1.5, n_b)
        a, b = sums(y_a, x_a), sums(y_b, x_b)

        def adjusted(s: dict[str, float]) -> RegressionAdjustedStatistic:
            pre = SampleMeanStatistic(
                n=int(s["n"]), sum=s["covariate"], sum_squares=s["covariate_squares"]
            )
            return RegressionAdjustedStatistic(
                n=int(s["n"]),
                post_statistic=mean_stat(s),
                pre_statistic=pre,
                post_pre_sum_of_products=s["cross"],
                theta=0,
            )

        theta = compute_theta(adjusted(a), adjusted(b))
        cases.append(
            {
                "name": f"cuped-{seed}",
                "kind": "mean",
                "alpha": 0.05,
                "control": a,
                "treatment": b,
                "theta": theta,
                "gbstats": run(lambda a=a: adjusted(a), lambda b=b: adjusted(b), 0.05),
            }
        )

    sequential = []
    for seed, (n_a, n_b, tuning, alpha) in enumerate(
        [(2000, 2000, 5000, 0.05), (15000, 14000, 5000, 0.05), (600, 700, 1000, 0.1)]
    ):
        rng = np.random.default_rng(300 + seed)
        a, b = sums(rng.normal(5.0, 2.0, n_a)), sums(rng.normal(5.08, 2.0, n_b))
        sequential.append(
            {
                "name": f"sequential-{seed}",
                "alpha": alpha,
                "tuning": tuning,
                "control": a,
                "treatment": b,
                "gbstats": run(lambda a=a: mean_stat(a), lambda b=b: mean_stat(b), alpha, tuning),
            }
        )

    srm = [
        {"counts": counts, "weights": weights, "p_value": check_srm(counts, weights)}
        for counts, weights in [
            ([5000, 5100], [0.5, 0.5]),
            ([1000, 1150, 980], [1, 1, 1]),
            ([3000, 1000], [0.7, 0.3]),
            ([500, 540], [0.5, 0.5]),
        ]
    ]

    reference = {
        "generator": "tests/reference/make_gbstats_reference.py",
        "gbstats_version": importlib.metadata.version("gbstats"),
        "frequentist": cases,
        "sequential": sequential,
        "srm": srm,
    }
    OUT.write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
