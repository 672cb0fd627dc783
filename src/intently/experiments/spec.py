"""Experiment definitions: what is compared, on which placements, for whom, measured how.

An experiment runs on one or more placements. Its variants share the traffic by weight;
each is either the placement as defined (no override: the usual control), another policy,
another content set, a whole other placement definition, or the placement's default
content alone. Visitors are assigned by a hash of the experiment's salt and their profile
id (experiments/assign.py), within the experiment's range of its layer: experiments on
one layer take disjoint ranges, so a visitor is in at most one of them.

Metrics are computed from the event stream, per visitor, from their first exposure until
the metric's window closes. The built-in ones, and custom ones (a count, a sum of a
property, or whether a visitor did it at all):

| metric | kind | a visitor's value |
|---|---|---|
| conversion_rate | proportion | 1 if they completed an order |
| click_through | proportion | 1 if they clicked a product, promotion or element |
| revenue_per_visitor | mean | the revenue of their orders |
| average_order_value | mean | their revenue / their orders, over visitors who ordered |
| pages_per_session | mean | their page views / the sessions they started (at least 1) |
"""

from __future__ import annotations

import builtins
import math
import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from intently.act.placements import PlacementSpec, PolicySpec
from intently.configfile import ConfigError
from intently.events.schema import Id, Name

MAX_VARIANTS = 20
RESERVED_ID = "holdout"  # the global holdout, whose results are read as an experiment's
MAX_METRICS = 16
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

Status = Literal["draft", "running", "stopped"]
BuiltinMetric = Literal[
    "conversion_rate", "click_through", "revenue_per_visitor", "average_order_value",
    "pages_per_session",
]  # fmt: skip
BUILTIN_METRICS: tuple[str, ...] = BuiltinMetric.__args__  # type: ignore[attr-defined]
Aggregate = Literal["count", "sum", "unique"]
# How long after a visitor's first exposure their events still count (GrowthBook's
# conversion window defaults to three days too).
DEFAULT_WINDOW_HOURS = 72.0


class VariantSpec(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One arm. Without an override it serves the placement as defined (a control)."""

    id: Id
    weight: Annotated[float, Meta(ge=0, le=1)]
    policy: PolicySpec | None = None  # another policy (a bandit learning on its own)
    offers: list[Id] | None = None  # another content set (offer placements)
    placement: PlacementSpec | None = None  # another definition altogether
    default_content: bool = False  # the placement's default content, nothing personal
    description: Annotated[str, Meta(max_length=500)] | None = None


class MetricSpec(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A metric: a built-in `name`, or a custom one counting `event`s."""

    name: Name
    event: Name | None = None  # custom: the track event's name
    aggregate: Aggregate = "count"
    property: Name | None = None  # custom `sum`: the numeric property added up
    window_hours: Annotated[float, Meta(gt=0, le=24 * 365)] = DEFAULT_WINDOW_HOURS

    # (`builtins.property`: the field above, named as the API names it, hides the builtin)
    @builtins.property
    def kind(self) -> Literal["proportion", "mean"]:
        if self.event is None:
            return "proportion" if self.name in ("conversion_rate", "click_through") else "mean"
        return "proportion" if self.aggregate == "unique" else "mean"

    @builtins.property
    def window_ms(self) -> int:
        return int(self.window_hours * 3_600_000)


def _default_metrics() -> list[MetricSpec]:
    return [
        MetricSpec(name) for name in ("conversion_rate", "click_through", "revenue_per_visitor")
    ]


class ExperimentSpec(Struct, forbid_unknown_fields=True, omit_defaults=True):
    placements: Annotated[list[Id], Meta(min_length=1, max_length=20)]
    variants: Annotated[list[VariantSpec], Meta(min_length=2, max_length=MAX_VARIANTS)]
    status: Status = "draft"
    name: Annotated[str, Meta(max_length=200)] | None = None
    description: Annotated[str, Meta(max_length=2000)] | None = None
    # The first variant is the control unless another is named.
    control: Id | None = None
    # Mutually exclusive experiments share a layer and take disjoint ranges of it.
    layer: Id | None = None  # None: a layer of its own
    range: Annotated[list[float], Meta(min_length=2, max_length=2)] = msgspec.field(
        default_factory=lambda: [0.0, 1.0]
    )
    salt: Annotated[str, Meta(min_length=1, max_length=200)] | None = None  # None: the id
    segment: Name | None = None  # targeting: only visitors in this segment
    metrics: Annotated[list[MetricSpec], Meta(min_length=1, max_length=MAX_METRICS)] = (
        msgspec.field(default_factory=_default_metrics)
    )
    # When a visitor counts as exposed: when a decision shows them a variant, or only
    # once the client reports it viewed (`Decision Viewed` naming the decision_id).
    exposure: Literal["decision", "viewable"] = "decision"
    alpha: Annotated[float, Meta(gt=0, lt=1)] = 0.05
    # Sequential testing (always-valid intervals, safe to peek at): the sample size at
    # which the interval is tightest. None: fixed-horizon intervals only.
    sequential_tuning: Annotated[int, Meta(ge=10, le=1_000_000_000)] | None = 5000

    @property
    def control_id(self) -> str:
        return self.control if self.control is not None else self.variants[0].id


# What the holdouts measure.
HOLDOUT_METRICS = tuple(
    MetricSpec(name) for name in ("conversion_rate", "click_through", "revenue_per_visitor")
)

# What may change while an experiment runs: anything else would move visitors between
# variants, or change what a variant means, mid-measurement.
MUTABLE_WHILE_RUNNING = frozenset({"status", "name", "description", "alpha", "sequential_tuning"})


def check(experiment_id: str, spec: ExperimentSpec) -> None:
    """Raise `ConfigError` naming the field (as a JSON pointer) of what is wrong."""
    if not _ID.match(experiment_id):
        raise ConfigError(f"/id: experiment id {experiment_id!r} must match {_ID.pattern}")
    if experiment_id == RESERVED_ID:
        raise ConfigError(f"/id: {RESERVED_ID!r} is the global holdout's id")
    total = math.fsum(v.weight for v in spec.variants)
    if abs(total - 1.0) > 1e-9:
        raise ConfigError(f"/variants: the weights sum to {total:g}; they must sum to 1")
    seen: set[str] = set()
    for i, variant in enumerate(spec.variants):
        if variant.id in seen:
            raise ConfigError(f"/variants/{i}/id: variant {variant.id!r} is named twice")
        seen.add(variant.id)
        if variant.weight == 0:
            raise ConfigError(
                f"/variants/{i}/weight: variant {variant.id!r} gets no traffic; "
                "remove it or give it a weight"
            )
        overrides = [
            name for name, given in (
                ("policy", variant.policy is not None), ("offers", variant.offers is not None),
                ("placement", variant.placement is not None),
                ("default_content", variant.default_content),
            ) if given
        ]  # fmt: skip
        if len(overrides) > 1:
            raise ConfigError(
                f"/variants/{i}: give one of policy, offers, placement or default_content, "
                f"not {' and '.join(overrides)}"
            )
    if spec.control is not None and spec.control not in seen:
        raise ConfigError(f"/control: there is no variant {spec.control!r}")
    low, high = spec.range
    if not 0.0 <= low < high <= 1.0:
        raise ConfigError("/range: it must be [start, end) with 0 <= start < end <= 1")
    for i, variant in enumerate(spec.variants):
        if variant.offers is not None and not variant.offers:
            raise ConfigError(f"/variants/{i}/offers: name at least one offer")
    if len(set(spec.placements)) != len(spec.placements):
        raise ConfigError("/placements: a placement is named twice")
    names: set[str] = set()
    for i, metric in enumerate(spec.metrics):
        if metric.name in names:
            raise ConfigError(f"/metrics/{i}/name: metric {metric.name!r} is named twice")
        names.add(metric.name)
        if metric.event is None and metric.name not in BUILTIN_METRICS:
            raise ConfigError(
                f"/metrics/{i}: {metric.name!r} is not a built-in metric "
                f"({', '.join(BUILTIN_METRICS)}); a custom metric names its event"
            )
        if metric.event is not None and metric.name in BUILTIN_METRICS:
            raise ConfigError(f"/metrics/{i}/name: {metric.name!r} is a built-in metric's name")
        if metric.aggregate == "sum" and metric.property is None:
            raise ConfigError(f"/metrics/{i}/property: a sum names the property it adds up")
