"""Metrics from the event stream: what an event adds to a visitor's metric, the visitor's
value, and their value before exposure (the covariate CUPED uses).

A visitor's state for a metric is two numbers, a numerator and a denominator, that
events add to; their value is computed from both (docs: experiments/spec.py's table).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from intently.context.facts import Facts
from intently.context.profile import Profile
from intently.experiments.spec import MetricSpec

CLICKS = frozenset({"Product Clicked", "Promotion Clicked", "Element Clicked", "Clicked"})

Accumulator = tuple[float, float]  # numerator, denominator


def _clicked(facts: Facts) -> bool:
    return facts.clicked is not None or facts.kind in CLICKS


def contribution(metric: MetricSpec, facts: Facts, session_started: bool) -> Accumulator | None:
    """What one event adds to a visitor's (numerator, denominator); None for nothing."""
    event = metric.event
    if event is not None:
        if facts.kind != event:
            return None
        if metric.aggregate != "sum":
            return (1.0, 0.0)
        value = (facts.properties or {}).get(metric.property or "")
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None  # a sum adds numbers: an event without one adds nothing
        number = float(value)
        return (number, 0.0) if math.isfinite(number) else None
    match metric.name:
        case "conversion_rate":
            return (1.0, 0.0) if facts.order_revenue is not None else None
        case "click_through":
            return (1.0, 0.0) if _clicked(facts) else None
        case "revenue_per_visitor":
            return (facts.order_revenue, 0.0) if facts.order_revenue is not None else None
        case "average_order_value":
            return (facts.order_revenue, 1.0) if facts.order_revenue is not None else None
        case "pages_per_session":
            page = 1.0 if facts.page_path is not None else 0.0
            started = 1.0 if session_started else 0.0
            return (page, started) if page or started else None
    return None


def value(metric: MetricSpec, numerator: float, denominator: float) -> float | None:
    """A visitor's value of the metric; None when it is not defined for them (the
    average order value of a visitor who did not order)."""
    if metric.event is not None:
        if metric.aggregate == "unique":
            return 1.0 if numerator > 0 else 0.0
        return numerator
    match metric.name:
        case "conversion_rate" | "click_through":
            return 1.0 if numerator > 0 else 0.0
        case "average_order_value":
            return numerator / denominator if denominator > 0 else None
        case "pages_per_session":
            return numerator / max(denominator, 1.0)
    return numerator


def covariate(metric: MetricSpec, profile: Profile | None) -> float:
    """The visitor's value of the metric before exposure, from their profile (0 for a
    new visitor, and for sums of properties, which profiles do not keep)."""
    if profile is None:
        return 0.0
    counts = profile.counts
    event = metric.event
    if event is not None:
        if metric.aggregate == "sum":
            return 0.0
        count = float(counts.get(event, 0))
        return min(count, 1.0) if metric.aggregate == "unique" else count
    match metric.name:
        case "conversion_rate":
            return 1.0 if profile.purchases > 0 else 0.0
        case "click_through":
            return 1.0 if any(counts.get(kind, 0) for kind in CLICKS) else 0.0
        case "revenue_per_visitor":
            return profile.revenue
        case "average_order_value":
            return profile.revenue / profile.purchases if profile.purchases else 0.0
        case "pages_per_session":
            return counts.get("page", 0) / max(profile.sessions, 1)
    return 0.0


def contributions(
    metrics: Sequence[MetricSpec], facts: Facts, session_started: bool
) -> list[Accumulator | None] | None:
    """Each metric's contribution of one event; None when it adds to none of them."""
    found = [contribution(m, facts, session_started) for m in metrics]
    return found if any(x is not None for x in found) else None
