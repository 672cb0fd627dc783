"""An experiment's results: its exposures, the sample ratio check, and each metric's
comparisons of every variant with control (experiments/stats.py), from the running
totals the experiment log keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from msgspec import Struct

from intently.experiments.spec import HOLDOUT_METRICS, ExperimentSpec, MetricSpec
from intently.experiments.stats import (
    DEFAULT_SEQUENTIAL_TUNING,
    Comparison,
    SampleRatio,
    Summary,
    compare,
)
from intently.experiments.stats import sample_ratio_mismatch as check_ratio
from intently.experiments.tracking import Totals


class VariantResult(Struct):
    id: str
    weight: float
    units: int  # visitors exposed
    multiple_exposures: int  # of them, exposed to another variant too: left out


class MetricResult(Struct):
    name: str
    kind: str
    window_hours: float
    control: str
    # Per variant: visitors with a value, and their mean (None without visitors).
    units: dict[str, int]
    means: dict[str, float | None]
    comparisons: list[Comparison]


class Results(Struct):
    experiment: str
    status: str
    started_ms: int | None
    stopped_ms: int | None
    control: str
    alpha: float
    variants: list[VariantResult]
    sample_ratio: SampleRatio
    metrics: list[MetricResult]


@dataclass(frozen=True)
class Design:
    """What results need of an experiment (or of a holdout, measured the same way)."""

    id: str
    status: str
    started_ms: int | None
    stopped_ms: int | None
    variants: Sequence[tuple[str, float]]  # id, weight; in order
    control: str
    metrics: Sequence[MetricSpec]
    alpha: float = 0.05
    sequential_tuning: int | None = None


HOLDOUT_ARMS = ("holdout", "personalized")  # the control, and everyone else


def holdout_design(holdout_id: str, share: float) -> Design:
    """A holdout, measured as an experiment: held out (control) against personalized."""
    return Design(
        holdout_id, "running" if share > 0 else "stopped", None, None,
        ((HOLDOUT_ARMS[0], share), (HOLDOUT_ARMS[1], 1.0 - share)), HOLDOUT_ARMS[0],
        HOLDOUT_METRICS, sequential_tuning=DEFAULT_SEQUENTIAL_TUNING,
    )  # fmt: skip


def experiment_design(
    experiment_id: str, spec: ExperimentSpec, started_ms: int | None, stopped_ms: int | None
) -> Design:
    return Design(
        experiment_id, spec.status, started_ms, stopped_ms,
        tuple((v.id, v.weight) for v in spec.variants), spec.control_id, spec.metrics,
        spec.alpha, spec.sequential_tuning,
    )  # fmt: skip


def summary_of(totals: Totals | None) -> Summary:
    """A metric's totals as the statistics engine takes them. Totals are kept by adding
    and taking away: a variant left with no visitors may hold rounding dust, not zeros."""
    if totals is None or round(totals[0]) <= 0:
        return Summary(0, 0.0, 0.0)
    n, total, squares, x, x_squares, cross = totals
    return Summary(round(n), total, max(squares, 0.0), x, max(x_squares, 0.0), cross)


def results(
    design: Design,
    exposures: dict[str, tuple[int, int]],
    totals: dict[tuple[str, str], Totals],
) -> Results:
    ids = [variant for variant, _ in design.variants]
    variants = [
        VariantResult(variant, weight, *exposures.get(variant, (0, 0)))
        for variant, weight in design.variants
    ]
    ratio = check_ratio([v.units for v in variants], [weight for _, weight in design.variants])
    metrics = []
    for metric in design.metrics:
        summaries = {variant: summary_of(totals.get((variant, metric.name))) for variant in ids}
        if metric.kind == "proportion":  # (0/1 values: their squares are themselves)
            summaries = {
                v: msgspec.structs.replace(s, total_squares=s.total) for v, s in summaries.items()
            }
        control = summaries[design.control]
        treatments = {v: s for v, s in summaries.items() if v != design.control}
        comparisons = compare(
            control, treatments, kind=metric.kind, alpha=design.alpha,
            sequential_tuning=design.sequential_tuning,
        )  # fmt: skip
        result = MetricResult(
            name=metric.name, kind=metric.kind, window_hours=metric.window_hours,
            control=design.control, units={v: s.n for v, s in summaries.items()},
            means={v: (s.total / s.n if s.n else None) for v, s in summaries.items()},
            comparisons=comparisons,
        )  # fmt: skip
        metrics.append(result)
    return Results(
        experiment=design.id, status=design.status, started_ms=design.started_ms,
        stopped_ms=design.stopped_ms, control=design.control, alpha=design.alpha,
        variants=variants, sample_ratio=ratio, metrics=metrics,
    )  # fmt: skip
