"""Experiments at run time: the decider asks for each decision's arm and reports its
exposure; the context stage reports events (metrics) and identity merges.

Every decision exposes its visitor to the global holdout's split (`holdout` or
`personalized`), so the total lift of personalization is measured as any experiment is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from intently.act.placements import Placement
from intently.context.facts import Facts
from intently.context.profile import Profile
from intently.experiments.assign import Arm
from intently.experiments.metrics import CLICKS, Accumulator, contribution, covariate
from intently.experiments.registry import GLOBAL_HOLDOUT, Assigner, ExperimentRegistry
from intently.experiments.results import (
    HOLDOUT_ARMS,
    Design,
    Results,
    experiment_design,
    holdout_design,
    results,
)
from intently.experiments.spec import HOLDOUT_METRICS, MetricSpec
from intently.experiments.tracking import ExperimentLog, Observation
from intently.stores.protocol import Changes

MAX_UNVIEWED = 100_000


class Experiments:
    def __init__(
        self, registry: ExperimentRegistry, path: Path, holdout_share: float, holdout_salt: str,
        *, database: str | None = None, worker: str = "",
    ) -> None:  # fmt: skip
        """With a `database`, the log is in PostgreSQL, shared with every worker."""
        self.registry = registry
        self.assigner = Assigner(registry, holdout_share, holdout_salt)
        self.log = ExperimentLog(path, self.metrics_of, database=database, worker=worker)
        # Decisions of experiments counting viewable exposures, until the client reports
        # them viewed: decision id -> experiment, variant, metrics. In memory only (a
        # decision viewed after a restart does not expose its visitor), and bounded.
        self._unviewed: dict[str, tuple[str, str, Sequence[MetricSpec]]] = {}
        self.assigner.aliases.update(self.log.aliases())

    def metrics_of(self, experiment_id: str) -> Sequence[MetricSpec]:
        if experiment_id == GLOBAL_HOLDOUT or experiment_id.startswith("holdout:"):
            return HOLDOUT_METRICS
        experiment = self.registry.get(experiment_id)
        return () if experiment is None else experiment.spec.metrics

    # -- the decider ------------------------------------------------------------------------

    def arm(self, placement: Placement, unit: str, profile: Profile | None) -> Arm | None:
        return self.assigner.arm(placement, unit, profile)

    def serves(self, arm: Arm, placement: Placement) -> Placement:
        """The placement as the arm's variant defines it."""
        experiment = self.registry.get(arm.experiment)
        if experiment is None or arm.default_content:
            return placement
        found = experiment.placement_for(arm.variant, placement, self.registry.fields)
        return placement if found is None else found

    def exposed(
        self, arm: Arm | None, placement: Placement, unit: str, at_ms: int,
        profile: Profile | None, decision_id: str = "",
    ) -> None:  # fmt: skip
        """A decision was shown: its visitor is exposed to its arm (for an experiment
        that counts viewable exposures, once the client reports it viewed), to the
        global holdout's split, and to the placement's holdout split when it has one."""
        log = self.log
        if self.assigner.holdout.share > 0.0:
            log.expose(
                GLOBAL_HOLDOUT, self.assigner.holdout_arm(unit), unit, at_ms,
                lambda: _covariates(HOLDOUT_METRICS, profile),
            )  # fmt: skip
        if arm is not None and arm.experiment == GLOBAL_HOLDOUT:
            return
        if placement.spec.holdout > 0.0:
            held = arm is not None and arm.variant == HOLDOUT_ARMS[0]
            log.expose(
                "holdout:" + placement.id, HOLDOUT_ARMS[0 if held else 1], unit, at_ms,
                lambda: _covariates(HOLDOUT_METRICS, profile),
            )  # fmt: skip
        if arm is not None and not arm.experiment.startswith("holdout:"):
            metrics = self.metrics_of(arm.experiment)
            experiment = self.registry.get(arm.experiment)
            if experiment is not None and experiment.spec.exposure == "viewable":
                if len(self._unviewed) >= MAX_UNVIEWED:
                    self._unviewed.pop(next(iter(self._unviewed)))  # the oldest
                self._unviewed[decision_id] = (arm.experiment, arm.variant, metrics)
                return
            log.expose(
                arm.experiment, arm.variant, unit, at_ms, lambda: _covariates(metrics, profile)
            )

    # -- the context stage --------------------------------------------------------------------

    def __call__(self, profile: Profile, facts: Facts | None, changes: Changes) -> None:
        """An event applied to `profile`: what it adds to each experiment's metrics."""
        if facts is None or changes.seq <= self.log.counted_seq:
            return
        if facts.exposure and self._unviewed:
            shown = self._unviewed.pop(facts.decision_id or "", None)
            if shown is not None:  # the client saw the variant: the visitor is exposed now
                experiment_id, variant, metrics = shown
                self.log.expose(
                    experiment_id, variant, profile.id, facts.at_ms,
                    lambda: _covariates(metrics, profile),
                )  # fmt: skip
        measuring = self.registry.measuring
        # The holdouts measure orders and clicks only: most events (views) add nothing.
        outcome = (
            facts.order_revenue is not None or facts.clicked is not None or (facts.kind in CLICKS)
        )
        if not outcome and not measuring:
            return
        session = profile.session
        started = session is not None and session.events == 1
        adds: dict[str, dict[str, Accumulator]] = {}
        if outcome:
            holdouts = [GLOBAL_HOLDOUT] if self.assigner.holdout.share > 0.0 else []
            holdouts.extend("holdout:" + p.id for p in self.registry.placements if p.spec.holdout)
            if holdouts:
                _collect(adds, GLOBAL_HOLDOUT, HOLDOUT_METRICS, facts, started)
                found = adds.pop(GLOBAL_HOLDOUT, None)
                if found is not None:
                    adds.update((holdout, found) for holdout in holdouts)
        for experiment in measuring:
            spec = experiment.spec
            if spec.status == "stopped":  # counted until the last window can have closed
                last = max(m.window_ms for m in spec.metrics)
                if (experiment.stopped_ms or 0) + last < facts.at_ms:
                    continue
            _collect(adds, experiment.id, spec.metrics, facts, started)
        if adds:
            self.log.observe(Observation(profile.id, facts.at_ms, changes.seq, adds))

    def merged(self, into: Profile, absorbed: str) -> None:
        """`into` took over the id `absorbed` (a merged profile's, or the id a visitor had
        until an identity of theirs was linked to `into`). If that id was exposed, `into`
        is assigned as it from now on: the person keeps every arm they were in."""
        if self.log.shared:
            # PostgreSQL is asked within a short bound, or not while it fails (a slow or
            # absent PostgreSQL must not hold or fail the event): what it did not say, the
            # merge finds anyway, queued whatever this worker saw; its writer moves the
            # rows it finds (and writes the alias only if there were any), and every
            # worker learns the alias at its next poll.
            arms = self.log.arms_now(absorbed, self._measured_ids())
            unit = self.assigner.unit_of(absorbed)
            if arms:
                self._alias(into, absorbed, unit)
            self.log.merge(absorbed, into.id, arms, unit)
            return
        arms = self.log.arms_of(absorbed, self._measured_ids())
        if not arms:
            return
        unit = self.assigner.unit_of(absorbed)
        self._alias(into, absorbed, unit)
        self.log.merge(absorbed, into.id, arms, unit)

    def _alias(self, into: Profile, absorbed: str, unit: str) -> None:
        self.assigner.aliases.pop(absorbed, None)
        if unit != into.id:
            self.assigner.aliases[into.id] = unit
        else:
            self.assigner.aliases.pop(into.id, None)

    def adopt_aliases(self, aliases: dict[str, str]) -> None:
        """Aliases other workers' merges made (`log.new_aliases`): the person keeps
        their arm on this worker too."""
        for profile_id, unit in aliases.items():
            if unit == profile_id:
                self.assigner.aliases.pop(profile_id, None)
            else:
                self.assigner.aliases[profile_id] = unit

    def _measured_ids(self) -> list[str]:
        """Every id exposures are logged under: experiments and holdouts."""
        found = [e.id for e in self.registry]
        found.append(GLOBAL_HOLDOUT)
        found.extend("holdout:" + p.id for p in self.registry.placements if p.spec.holdout)
        return found

    # -- results ------------------------------------------------------------------------------

    def design(self, experiment_id: str) -> Design | None:
        """What results need of an experiment, or of a holdout ("holdout" for the global
        one, "holdout:<placement>" for a placement's): None when there is none."""
        if experiment_id == GLOBAL_HOLDOUT:
            return holdout_design(experiment_id, self.assigner.holdout.share)
        if experiment_id.startswith("holdout:"):
            placement = self.registry.placements.get(experiment_id.split(":", 1)[1])
            if placement is None:
                return None
            return holdout_design(experiment_id, placement.spec.holdout)
        experiment = self.registry.get(experiment_id)
        if experiment is None:
            return None
        return experiment_design(
            experiment.id, experiment.spec, experiment.started_ms, experiment.stopped_ms
        )

    def results(self, experiment_id: str) -> Results | None:
        """The results as of every exposure and event queued so far. Blocking."""
        design = self.design(experiment_id)
        if design is None:
            return None
        self.log.flush()
        return results(design, self.log.exposures(design.id), self.log.totals(design.id))

    def arms_of(self, profile_id: str) -> dict[str, str]:
        """The arms a person was exposed to, every queued exposure written first (an
        export must not miss the latest). Blocking."""
        self.log.flush()
        return self.log.arms_of(profile_id)

    def purge(self, experiment_id: str) -> None:
        """Forget a deleted experiment's exposures and totals. Blocking."""
        self._unviewed = {d: v for d, v in self._unviewed.copy().items() if v[0] != experiment_id}
        self.log.purge(experiment_id)

    def erase(self, profile_ids: Sequence[str]) -> int:
        """Delete a person's exposures and what they did after (the totals lose them);
        `profile_ids` also names ids their profile would have had (a visitor erased
        before their first event). How many rows. Blocking."""
        aliases = self.assigner.aliases
        for profile_id in [p for p, u in aliases.copy().items() if {p, u} & set(profile_ids)]:
            aliases.pop(profile_id, None)
        return self.log.erase(profile_ids)

    def close(self) -> None:
        self.log.close()


def _collect(
    adds: dict[str, dict[str, Accumulator]], experiment_id: str, metrics: Sequence[MetricSpec],
    facts: Facts, started: bool,
) -> None:  # fmt: skip
    found: dict[str, Accumulator] = {}
    for metric in metrics:
        add = contribution(metric, facts, started)
        if add is not None:
            found[metric.name] = add
    if found:
        adds[experiment_id] = found


def _covariates(metrics: Sequence[MetricSpec], profile: Profile | None) -> dict[str, float]:
    return {metric.name: covariate(metric, profile) for metric in metrics}
