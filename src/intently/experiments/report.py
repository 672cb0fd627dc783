"""`intently experiments report ID`: an experiment's results as a table in the terminal,
read from a data dir (also one a running engine uses).

Definitions are read as the engine reads them: the configuration file, then those made
by the API (kept in `experiments.json`); the global holdout is `holdout`, a placement's
`holdout:<placement>` (its share from the placements file or API definitions).
"""

from __future__ import annotations

import math

import msgspec

from intently.act.placements import PlacementSpec
from intently.config import Settings
from intently.configfile import ConfigError, read_mapping
from intently.experiments.registry import GLOBAL_HOLDOUT, Stored
from intently.experiments.results import (
    Design,
    Results,
    experiment_design,
    holdout_design,
    results,
)
from intently.experiments.spec import ExperimentSpec
from intently.experiments.stats import Comparison, Estimate
from intently.experiments.tables import PostgresTables
from intently.experiments.tracking import ExperimentLogReader


def design_of(experiment_id: str, settings: Settings) -> Design | None:
    """The design of an experiment or holdout defined in the data dir's settings."""
    if experiment_id == GLOBAL_HOLDOUT or experiment_id.startswith("holdout:"):
        share = settings.holdout_share
        if experiment_id != GLOBAL_HOLDOUT:
            found = _placement_holdout(experiment_id.split(":", 1)[1], settings)
            if found is None:
                return None
            share = found
        return holdout_design(experiment_id, share)
    stored = _stored(settings).get(experiment_id)
    if stored is None:
        return None
    return experiment_design(experiment_id, stored.spec, stored.started_ms, stored.stopped_ms)


def _stored(settings: Settings) -> dict[str, Stored]:
    found: dict[str, Stored] = {}
    if settings.experiments_file is not None:
        raw = read_mapping(settings.experiments_file, "experiments", "experiments")
        for eid, value in raw.items():
            try:
                found[str(eid)] = Stored(msgspec.convert(value, ExperimentSpec))
            except msgspec.ValidationError as error:
                raise ConfigError(f"{settings.experiments_file}: {eid!r}: {error}") from None
    api = settings.data_dir / "experiments.json"
    if api.exists():
        found.update(msgspec.json.decode(api.read_bytes(), type=dict[str, Stored]))
    return found


def _placement_holdout(placement_id: str, settings: Settings) -> float | None:
    specs: dict[str, PlacementSpec] = {}
    if settings.placements_file is not None:
        raw = read_mapping(settings.placements_file, "placements", "placements")
        specs.update({str(k): msgspec.convert(v, PlacementSpec) for k, v in raw.items()})
    api = settings.data_dir / "placements.json"
    if api.exists():
        specs.update(msgspec.json.decode(api.read_bytes(), type=dict[str, PlacementSpec]))
    found = specs.get(placement_id)
    return None if found is None else found.holdout


def load_results(experiment_id: str, settings: Settings) -> Results | None:
    design = design_of(experiment_id, settings)
    if design is None:
        return None
    reader = ExperimentLogReader(
        settings.experiments_path
        if settings.database is None
        else PostgresTables(settings.database, settings.worker)
    )
    try:
        return results(design, reader.exposures(design.id), reader.totals(design.id))
    finally:
        reader.close()


# -- the table ------------------------------------------------------------------------------


_VARIANTS = ["variant", "weight", "visitors", "seen two variants"]
_COMPARISON = ["variant", "visitors", "mean", "change [CI]", "relative [CI]", "p (adjusted)",
               "chance to win", "always-valid relative [CI]"]  # fmt: skip


def render(found: Results) -> str:
    variants = [
        [v.id, f"{v.weight:.1%}", f"{v.units:,}", f"{v.multiple_exposures:,}"]
        for v in found.variants
    ]
    lines = [
        f"Experiment {found.experiment} ({found.status}); control: {found.control}; "
        f"alpha {found.alpha:g}",
        "",
        _table(_VARIANTS, variants),
    ]
    ratio = found.sample_ratio
    if ratio.p_value is None:
        lines.append(f"Sample ratio: {ratio.note}")
    else:
        verdict = "MISMATCH: do not trust these results" if ratio.mismatch else "as configured"
        lines.append(f"Sample ratio: chi-square p = {_p(ratio.p_value)} ({verdict})")
    for metric in found.metrics:
        lines += ["", f"{metric.name} ({metric.kind}, window {metric.window_hours:g} h)"]
        control = metric.control
        rows = [
            [control, f"{metric.units[control]:,}", _mean(metric.means[control], metric.kind),
             "(control)", "", "", "", ""]
        ]  # fmt: skip
        notes: list[str] = []
        rows.extend(_row(comparison, metric.kind, notes) for comparison in metric.comparisons)
        lines.append(_table(_COMPARISON, rows))
        lines += [f"  note: {note}" for note in dict.fromkeys(notes)]
    return "\n".join(lines)


def _row(comparison: Comparison, kind: str, notes: list[str]) -> list[str]:
    fixed = comparison.frequentist
    said = (fixed.note, fixed.absolute.note, fixed.relative.note, comparison.bayesian.note)
    notes.extend(note for note in said if note)
    mark = " *" if comparison.significant else ""
    sequential = comparison.sequential
    return [
        comparison.variant,
        f"{comparison.treatment_n:,}",
        _mean(comparison.treatment_mean, kind),
        _interval(fixed.absolute, points=kind == "proportion"),
        _interval(fixed.relative, percent=True),
        (_p(comparison.adjusted_p_value) + mark) if comparison.adjusted_p_value is not None
        else "-",
        "-" if comparison.bayesian.chance_to_beat_control is None
        else f"{comparison.bayesian.chance_to_beat_control:.1%}",
        "-" if sequential is None else _interval(sequential.relative, percent=True),
    ]  # fmt: skip


def _mean(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2%}" if kind == "proportion" else f"{value:,.4g}"


def _interval(estimate: Estimate, *, percent: bool = False, points: bool = False) -> str:
    if estimate.value is None:
        return "-"

    def show(x: float | None) -> str:
        if x is None or not math.isfinite(x):
            return "?"
        if percent:
            return f"{x:+.1%}"
        if points:
            return f"{x * 100:+.2f} pp"
        return f"{x:+,.4g}"

    return f"{show(estimate.value)} [{show(estimate.lower)}, {show(estimate.upper)}]"


def _p(value: float) -> str:
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        cells = [cell.ljust(width) for cell, width in zip(cells, widths, strict=True)]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
