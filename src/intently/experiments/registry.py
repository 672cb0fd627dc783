"""The experiments defined (config file and API), and the arm of each decision.

Definitions come from the operator's YAML file (`experiments:` mapping ids to
definitions) and from the API (`PUT /v1/experiments/{id}`, kept in the data dir); an API
definition replaces a configured one of the same id. A definition is checked against the
placements it names when it is made: a variant's override must be a placement definition
that would be accepted on its own.

Rules that keep the measurement honest:
- experiments that share a placement share a layer, with disjoint ranges: a decision is
  in at most one experiment;
- while an experiment runs, only its status, name, description and statistics settings
  change (anything else would move visitors between variants mid-measurement); a
  stopped experiment stays stopped (a new one measures a new phase).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from msgspec import Struct

from intently.act.placements import Placement, PlacementRegistry, PlacementSpec, prepare
from intently.configfile import ConfigError, read_mapping, save_atomically
from intently.context.profile import Profile
from intently.experiments.assign import Arm, Bucketer, Holdout, Variants
from intently.experiments.results import HOLDOUT_ARMS
from intently.experiments.spec import (
    MUTABLE_WHILE_RUNNING,
    RESERVED_ID,
    ExperimentSpec,
    VariantSpec,
    check,
)
from intently.segments.fields import FieldCatalog

GLOBAL_HOLDOUT = RESERVED_ID  # the global holdout's id, measured like an experiment


class ExperimentConflict(ConfigError):
    """A valid definition that the experiment's state refuses (it runs, or has stopped)."""


class Stored(Struct, omit_defaults=True):
    """An API definition as kept in the data dir, with when it started and stopped."""

    spec: ExperimentSpec
    started_ms: int | None = None
    stopped_ms: int | None = None


@dataclass
class Experiment:
    id: str
    spec: ExperimentSpec
    source: str  # "config" or "api"
    variants: Variants
    started_ms: int | None = None
    stopped_ms: int | None = None
    # A variant's version of a placement, by (variant, the placement's version).
    _versions: dict[tuple[str, str], Placement | None] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.spec.status == "running"

    def variant(self, variant_id: str) -> VariantSpec:
        return next(v for v in self.spec.variants if v.id == variant_id)

    def placement_for(
        self, variant_id: str, base: Placement, fields: FieldCatalog
    ) -> Placement | None:
        """The placement as `variant_id` serves it; None when it serves it as defined."""
        key = (variant_id, base.version)
        if key not in self._versions:
            self._versions[key] = _overridden(self.id, self.variant(variant_id), base, fields)
        return self._versions[key]

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id, "source": self.source, "started_ms": self.started_ms,
            "stopped_ms": self.stopped_ms, **msgspec.to_builtins(self.spec),
        }  # fmt: skip


def _overridden(
    experiment_id: str, variant: VariantSpec, base: Placement, fields: FieldCatalog
) -> Placement | None:
    spec: PlacementSpec
    if variant.placement is not None:
        spec = variant.placement
    elif variant.policy is not None:
        spec = msgspec.structs.replace(base.spec, policy=variant.policy)
    elif variant.offers is not None:
        if base.spec.kind != "offers":
            raise ConfigError(
                f"variant {variant.id!r}: placement {base.id!r} shows items; "
                "an offers override needs an offer placement"
            )
        spec = msgspec.structs.replace(base.spec, offers=variant.offers)
    else:
        return None  # as defined (default content is served by the decider)
    try:
        placement = prepare(base.id, spec, "experiment", fields)
    except ConfigError as error:
        raise ConfigError(f"variant {variant.id!r} on placement {base.id!r}: {error}") from None
    # The variant's policy learns on its own: a bandit inside a variant is trained by
    # the variant's decisions only.
    key = f"{experiment_id}/{variant.id}/".encode() + placement.policy_key
    return dataclasses.replace(placement, policy_key=key)


def _variants(experiment_id: str, spec: ExperimentSpec) -> Variants:
    cumulative, total = [], 0.0
    for variant in spec.variants:
        total += variant.weight
        cumulative.append(total)
    cumulative[-1] = 1.0
    layer = spec.layer if spec.layer is not None else experiment_id
    return Variants(
        experiment=experiment_id,
        ids=tuple(v.id for v in spec.variants),
        cumulative=tuple(cumulative),
        layer=Bucketer("layer:" + layer),
        low=spec.range[0],
        high=spec.range[1],
        split=Bucketer(spec.salt if spec.salt is not None else experiment_id),
    )


class ExperimentRegistry:
    def __init__(
        self, placements: PlacementRegistry, fields: FieldCatalog, data_dir: Path,
        config_file: Path | None, now_ms: int = 0,
    ) -> None:  # fmt: skip
        self.placements = placements
        self.fields = fields
        self._api_file = data_dir / "experiments.json"
        # The configured experiments as last started: when each started and stopped, and
        # what they were (a running one's file must not change what it measures).
        self._config_state = data_dir / "experiments-configured.json"
        self._experiments: dict[str, Experiment] = {}
        if self._api_file.exists():
            stored = msgspec.json.decode(self._api_file.read_bytes(), type=dict[str, Stored])
            for eid, kept in stored.items():
                experiment = Experiment(eid, kept.spec, "api", _variants(eid, kept.spec))
                experiment.started_ms, experiment.stopped_ms = kept.started_ms, kept.stopped_ms
                self._experiments[eid] = experiment
        if config_file is not None:
            self._load_config(config_file, now_ms)
        self._index()

    def _load_config(self, path: Path, now_ms: int) -> None:
        before = {}
        if self._config_state.exists():
            before = msgspec.json.decode(self._config_state.read_bytes(), type=dict[str, Stored])
        for eid, value in read_mapping(path, "experiments", "experiments").items():
            if not isinstance(eid, str):
                raise ConfigError(f"{path}: experiment id {eid!r} must be text")
            try:
                if eid in self._experiments:
                    raise ConfigError("an experiment of this id was defined by the API")
                spec = msgspec.convert(value, ExperimentSpec)
                experiment = self._prepare(eid, spec, "config")
                kept = before.get(eid)
                if kept is not None:
                    previous = Experiment(eid, kept.spec, "config", _variants(eid, kept.spec))
                    _check_change(previous, spec)
                    experiment.started_ms, experiment.stopped_ms = kept.started_ms, kept.stopped_ms
            except (msgspec.ValidationError, ConfigError) as exc:
                raise ConfigError(f"{path}: experiment {eid!r}: {exc}") from None
            _lifecycle(experiment, now_ms)
            self._experiments[eid] = experiment
        save_atomically(
            self._config_state,
            {e.id: Stored(e.spec, e.started_ms, e.stopped_ms)
             for e in self._experiments.values() if e.source == "config"},
        )  # fmt: skip

    def __iter__(self) -> Iterator[Experiment]:
        return iter(list(self._experiments.values()))

    def get(self, experiment_id: str) -> Experiment | None:
        return self._experiments.get(experiment_id)

    def on_placement(self, placement_id: str) -> tuple[Experiment, ...]:
        """The running experiments on a placement."""
        return self._by_placement.get(placement_id, ())

    def define(self, experiment_id: str, spec: ExperimentSpec, now_ms: int) -> Experiment:
        """Add or change an experiment by API; raises `ConfigError` ("/field: why"), and
        then nothing changes."""
        return self.install(self.prepare_definition(experiment_id, spec, now_ms))

    def prepare_definition(
        self, experiment_id: str, spec: ExperimentSpec, now_ms: int
    ) -> Experiment:
        """The experiment `define` would install, checked (raises `ConfigError`), not yet
        installed: shared with the other workers first, when there are others."""
        current = self._experiments.get(experiment_id)
        if current is not None and current.source == "config":
            raise ExperimentConflict(
                f"experiment {experiment_id!r} comes from the configuration file; change it there"
            )
        experiment = self._prepare(experiment_id, spec, "api")
        if current is not None:
            _check_change(current, spec)
            experiment.started_ms, experiment.stopped_ms = current.started_ms, current.stopped_ms
        _lifecycle(experiment, now_ms)
        return experiment

    def install(self, experiment: Experiment) -> Experiment:
        self._experiments[experiment.id] = experiment
        self._index()
        self._save()
        return experiment

    def adopt(self, experiment_id: str, stored: Stored) -> Experiment:
        """Another worker's definition, as it was installed there (when it started and
        stopped included); raises `ConfigError` when it cannot be served here."""
        experiment = self._prepare(experiment_id, stored.spec, "api")
        experiment.started_ms, experiment.stopped_ms = stored.started_ms, stored.stopped_ms
        return self.install(experiment)

    def forget(self, experiment_id: str) -> bool:
        """Remove an API definition another worker deleted (it stopped it there first;
        this worker may not have seen it stopped, only deleted)."""
        current = self._experiments.get(experiment_id)
        if current is None or current.source != "api":
            return False
        del self._experiments[experiment_id]
        self._index()
        self._save()
        return True

    def deletable(self, experiment_id: str) -> bool:
        """Whether `delete` would remove it: False when there is no API definition of
        that id; raises `ExperimentConflict` for a running one."""
        current = self._experiments.get(experiment_id)
        if current is None or current.source != "api":
            return False
        if current.running:
            raise ExperimentConflict(f"experiment {experiment_id!r} is running; stop it first")
        return True

    def delete(self, experiment_id: str) -> bool:
        """Remove an API definition (not a running one: stop it first). False when there
        is no API definition of that id; raises `ConfigError` for a running one."""
        return self.deletable(experiment_id) and self.forget(experiment_id)

    def check_placement(self, placement: Placement) -> None:
        """Raise `ExperimentConflict` if a running experiment's variant would not be a
        valid definition of `placement` as it is about to become."""
        for experiment in self.on_placement(placement.id):
            for variant in experiment.spec.variants:
                try:
                    _overridden(experiment.id, variant, placement, self.fields)
                except ConfigError as error:
                    raise ExperimentConflict(
                        f"experiment {experiment.id!r} runs on this placement: {error}"
                    ) from None

    def _prepare(self, experiment_id: str, spec: ExperimentSpec, source: str) -> Experiment:
        check(experiment_id, spec)
        experiment = Experiment(experiment_id, spec, source, _variants(experiment_id, spec))
        for i, placement_id in enumerate(spec.placements):
            base = self.placements.get(placement_id)
            if base is None:
                raise ConfigError(f"/placements/{i}: there is no placement {placement_id!r}")
            for variant in spec.variants:
                experiment.placement_for(variant.id, base, self.fields)  # raises if invalid
        if spec.status != "stopped":
            self._check_layers(experiment)
        return experiment

    def _check_layers(self, new: Experiment) -> None:
        spec = new.spec
        layer = spec.layer or new.id
        for other in self._experiments.values():
            if other.id == new.id or other.spec.status == "stopped":
                continue
            other_layer = other.spec.layer or other.id
            shared = sorted(set(spec.placements) & set(other.spec.placements))
            if shared and other_layer != layer:
                raise ConfigError(
                    f"/layer: experiment {other.id!r} also runs on {shared[0]!r}, in layer "
                    f"{other_layer!r}: experiments on one placement share a layer"
                )
            if other_layer == layer:
                low, high = spec.range
                other_low, other_high = other.spec.range
                if low < other_high and other_low < high:
                    raise ConfigError(
                        f"/range: [{low:g}, {high:g}) overlaps experiment {other.id!r}'s "
                        f"[{other_low:g}, {other_high:g}) in layer {layer!r}"
                    )

    def _index(self) -> None:
        by_placement: dict[str, list[Experiment]] = {}
        for experiment in self._experiments.values():
            if experiment.running:
                for placement_id in experiment.spec.placements:
                    by_placement.setdefault(placement_id, []).append(experiment)
        self._by_placement = {p: tuple(found) for p, found in by_placement.items()}
        # Those whose metrics events still add to: running, or stopped (a visitor's
        # window may still be open).
        self.measuring = tuple(e for e in self._experiments.values() if e.spec.status != "draft")

    def _save(self) -> None:
        api = {
            e.id: Stored(e.spec, e.started_ms, e.stopped_ms)
            for e in self._experiments.values() if e.source == "api"
        }  # fmt: skip
        save_atomically(self._api_file, api)


def _lifecycle(experiment: Experiment, now_ms: int) -> None:
    """Note when the experiment started and stopped, if it just did."""
    status = experiment.spec.status
    if status in ("running", "stopped") and experiment.started_ms is None:
        experiment.started_ms = now_ms
    if status == "stopped" and experiment.stopped_ms is None:
        experiment.stopped_ms = now_ms


def _check_change(current: Experiment, spec: ExperimentSpec) -> None:
    if current.spec.status == "stopped" and spec.status != "stopped":
        raise ExperimentConflict(
            "/status: a stopped experiment stays stopped; define a new one for a new phase"
        )
    if current.spec.status == "running" and spec.status == "draft":
        raise ExperimentConflict("/status: a running experiment can be stopped, not made a draft")
    if current.spec.status == "draft":
        return
    before, after = msgspec.to_builtins(current.spec), msgspec.to_builtins(spec)
    changed = sorted(
        name for name in set(before) | set(after)
        if before.get(name) != after.get(name) and name not in MUTABLE_WHILE_RUNNING
    )  # fmt: skip
    if changed:
        raise ExperimentConflict(
            f"/{changed[0]}: experiment {current.id!r} has started; {', '.join(changed)} cannot "
            "change (it would move visitors between variants, or change what was measured)"
        )


class Assigner:
    """The arm of each decision: holdouts first, then the placement's experiment."""

    def __init__(
        self, registry: ExperimentRegistry, holdout_share: float, holdout_salt: str
    ) -> None:
        self.registry = registry
        self.holdout = Holdout(holdout_share, holdout_salt)
        self._placement_holdouts: dict[tuple[str, float], Holdout] = {}
        # Profiles that took over an exposed id (a merge, a link) are assigned as it:
        # profile id -> the unit every hash reads.
        self.aliases: dict[str, str] = {}

    def unit_of(self, profile_id: str) -> str:
        """The unit a profile is assigned as."""
        aliases = self.aliases
        return aliases.get(profile_id, profile_id) if aliases else profile_id

    def arm(self, placement: Placement, profile_id: str, profile: Profile | None) -> Arm | None:
        unit = self.unit_of(profile_id)
        if self.holdout.share > 0.0 and self.holdout.holds(unit):
            return _GLOBAL_HOLDOUT_ARM
        share = placement.spec.holdout
        if share > 0.0 and self._placement_holdout(placement.id, share).holds(unit):
            return Arm(
                "holdout:" + placement.id, "holdout:" + placement.id, "holdout", True,
                f"in placement {placement.id}'s holdout: default content",
            )  # fmt: skip
        for experiment in self.registry.on_placement(placement.id):
            segment = experiment.spec.segment
            if segment is not None and (profile is None or segment not in profile.segments):
                continue
            variant = experiment.variants.variant_of(unit)
            if variant is None:
                continue
            default = experiment.variant(variant).default_content
            return Arm(
                f"{experiment.id}:{variant}", experiment.id, variant, default,
                f"experiment {experiment.id}: variant {variant}",
            )  # fmt: skip
        return None

    def in_holdout(self, profile_id: str) -> bool:
        return self.holdout.holds(self.unit_of(profile_id))

    def holdout_arm(self, profile_id: str) -> str:
        """The global holdout's arm of a profile (every decide is exposed to it)."""
        return HOLDOUT_ARMS[0] if self.in_holdout(profile_id) else HOLDOUT_ARMS[1]

    def _placement_holdout(self, placement_id: str, share: float) -> Holdout:
        key = (placement_id, share)
        found = self._placement_holdouts.get(key)
        if found is None:
            found = self._placement_holdouts[key] = Holdout(share, "holdout:" + placement_id)
        return found


_GLOBAL_HOLDOUT_ARM = Arm(
    "holdout", GLOBAL_HOLDOUT, "holdout", True, "in the global holdout: default content"
)
