"""The engine: one object that owns the log, the enrichment databases and the pipeline.

The HTTP app, `intently replay` and the tests all build an `Engine` from `Settings`, so
they run the same parts.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

from intently.act.decide import Decider
from intently.act.decisions import DecisionLog, DecisionLogReader, DecisionRecord
from intently.act.placements import Placement, PlacementRegistry, PlacementSpec
from intently.act.policies import Policy, learnable
from intently.act.triggers import Triggers, load_triggers
from intently.api.live import Live
from intently.api.metrics import Metrics
from intently.catalog.items import Item
from intently.catalog.offers import Offer
from intently.catalog.offers import prepare as prepare_offer
from intently.catalog.shared import SharedCatalog
from intently.catalog.store import CatalogStore
from intently.clock import Clock, SystemClock, epoch_ms
from intently.config import Settings
from intently.configfile import ConfigError
from intently.context.facts import facts_of
from intently.context.profile import Profile
from intently.context.stage import ContextStage
from intently.events.enrich import Enricher
from intently.events.geo import GeoLocator
from intently.events.record import decode_record
from intently.events.referrer import ReferrerClassifier
from intently.experiments.registry import ExperimentRegistry, Stored
from intently.experiments.runtime import Experiments
from intently.keys import Keys, load_or_create_keys
from intently.learn.bus import LearningBus
from intently.learn.gate import usable
from intently.learn.snapshot import FORMAT, Snapshot, SnapshotStore, age_seconds
from intently.learn.snapshot import encode as encode_snapshot
from intently.log.dedupe import MessageIdWindow
from intently.log.eventlog import EventLog
from intently.pipeline import Pipeline
from intently.recommend.learn import LearnFromViews
from intently.recommend.sequential import SequentialRules
from intently.recommend.session_knn import SessionKNN
from intently.segments.fields import FieldCatalog
from intently.segments.lang import ExpressionError, compile_expression
from intently.segments.membership import Membership
from intently.segments.registry import Segment, SegmentRegistry, SegmentSpec
from intently.segments.webhooks import WebhookDispatcher
from intently.stores.archive import Archiver, sources
from intently.stores.connect import open_state_store
from intently.stores.definitions import (
    EXPERIMENT,
    PLACEMENT,
    SEGMENT,
    Definition,
    SharedDefinitions,
)
from intently.stores.erasures import Erasure, ErasureBroadcast
from intently.stores.postgres import connect_postgres, migrate
from intently.stores.protocol import Changes, StateStore
from intently.stores.redisstate import LeaseTimeout, RedisStore

log = logging.getLogger(__name__)

# Profiles a segment definition re-evaluates per lease and commit (the API lets other
# requests run between pages; a page is one lease script, one read each, one commit).
SEGMENT_PAGE = 100


class DataDirLocked(RuntimeError):
    pass


def _lock(data_dir: Path) -> int:
    """Hold an exclusive lock on the data dir: two engines writing one log would each
    believe their in-memory state was the whole truth."""
    data_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(data_dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise DataDirLocked(
            f"another intently process is using {data_dir}; stop it first "
            "(`intently export` can read a data dir that is in use)"
        ) from None
    return descriptor


def open_store(settings: Settings) -> StateStore:
    """The state store named in the settings (stores/connect.py checks it)."""
    return open_state_store(
        settings.state_store, state_path=settings.state_path,
        flush_seconds=settings.state_flush_seconds, worker=settings.worker,
        prefix=settings.redis_prefix, stream_length=settings.stream_length,
    )  # fmt: skip


class Engine:
    """Everything a running intently holds. Close it to flush and release the log."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        # Everything opened is closed in reverse order, also when a later part fails to
        # open (a missing GeoIP file must not leave the data dir locked).
        self._resources = ExitStack()
        self._resources.callback(os.close, _lock(settings.data_dir))
        try:
            self._open(settings)
        except BaseException:
            self._resources.close()
            raise

    def _open(self, settings: Settings) -> None:
        keys = load_or_create_keys(settings.data_dir, settings.write_key, settings.secret_key)
        self.keys: Keys = keys.keys
        self.keys_created = keys.created
        geoip = settings.geoip_db
        self.geo = None if geoip == Path("off") else GeoLocator(geoip)
        if self.geo is not None:
            self._resources.callback(self.geo.close)
        self.enricher = Enricher(
            self.geo, ReferrerClassifier(frozenset(settings.internal_hosts)), settings.ip_mode
        )
        self.log = EventLog.open(settings.event_log_path, synchronous=settings.synchronous)
        # The name this worker's records go under in PostgreSQL (shipping positions, the
        # archived rows, experiment log positions): its id and its event log's, so a
        # worker id reused with a new data dir (a replaced volume) starts positions anew
        # instead of taking its new logs' first rows for shipped or counted ones.
        log_id = self.log.log_id()
        self.records_name = settings.worker + (f"/{log_id[:12]}" if log_id else "")
        self._resources.callback(self.log.close)
        self.store = open_store(settings)
        self._resources.callback(self.store.close)
        # Workers sharing Redis each keep local logs: erasures are announced to all.
        self.erasures = (
            ErasureBroadcast(self.store.client, settings.redis_prefix, settings.worker)
            if isinstance(self.store, RedisStore) else None
        )  # fmt: skip
        self.context = ContextStage(self.store, settings.context_settings())
        self.segments = SegmentRegistry(
            FieldCatalog(self.context.rules), settings.data_dir, settings.segments_file
        )
        if settings.webhook_secret is None and any(s.webhook for s, _ in self.segments):
            raise ConfigError("a segment names a webhook: set INTENTLY_WEBHOOK_SECRET to sign it")
        self.catalog = CatalogStore(settings.data_dir / "catalog.db", self.segments.catalog)
        self._resources.callback(self.catalog.close)
        self.membership = Membership(self.segments, self.context.rules)
        self.context.hooks.append(self.membership)
        self.context.removal_hooks.append(self.membership.forget)
        # Recommenders learn from every product view as it is applied (live or replayed).
        self.learner = LearnFromViews(
            SessionKNN(), SequentialRules(), self.context.rules,
            session_timeout_ms=int(settings.session_timeout_minutes * 60_000),
        )  # fmt: skip
        self.context.hooks.append(self.learner)
        self.placements = PlacementRegistry(
            self.segments.catalog, settings.data_dir, settings.placements_file
        )
        self.decisions = DecisionLog(settings.decision_log_path)
        self._resources.callback(self.decisions.close)
        self.archive = self._open_archive(settings)
        if settings.database is not None:  # the catalog is shared through PostgreSQL
            self.catalog.shared = SharedCatalog(settings.database, settings.worker)
            self._resources.callback(self.catalog.shared.close)
            self.sync_catalog()  # all of it: the local copy may be older, or gone
        self.experiments = Experiments(
            ExperimentRegistry(
                self.placements, self.segments.catalog, settings.data_dir,
                settings.experiments_file, self.now_ms(),
            ),
            settings.experiments_path, settings.holdout_share, settings.holdout_salt,
            database=settings.database, worker=self.records_name,
        )  # fmt: skip
        self._resources.callback(self.experiments.close)
        # Placements, segments and experiments defined through the API, shared like the
        # catalog: at start, every definition (this worker's local copy may be older).
        self.definitions: SharedDefinitions | None = None
        self.definitions_refused = 0  # waiting to be installed, now
        self._definitions_waiting: dict[tuple[str, str], Definition | None] = {}
        if settings.database is not None:
            self.definitions = SharedDefinitions(settings.database, settings.worker)
            self._resources.callback(self.definitions.close)
            self.adopt_definitions(self.definitions.changes())
        # Experiments count events from their log position on: hooked before the catch-up,
        # which re-applies what the state store had not kept (their log skips what it
        # counted already).
        self.context.hooks.append(self.experiments)
        self.context.merge_hooks.append(self.experiments.merged)
        self.store.before_write.append(self.experiments.log.settle)
        self.decider = Decider(
            placements=self.placements,
            catalog=self.catalog,
            context=self.context,
            learner=self.learner,
            decisions=self.decisions,
            enricher=self.enricher,
            now_ms=self.now_ms,
            window_ms=settings.attribution_window_ms,
            experiments=self.experiments,
        )
        self.webhooks = WebhookDispatcher(
            settings.webhook_secret,
            settings.data_dir / "webhooks-dead.jsonl",
            max_attempts=settings.webhook_max_attempts,
            timeout_seconds=settings.webhook_timeout_seconds,
        )
        self.metrics = Metrics()
        if isinstance(self.store, RedisStore):
            store = self.store
            self.metrics.watch_store(
                lambda: store.lease_retries, lambda: store.failures,
                lambda: store.commits_finished, lambda: store.commits_unresolved,
            )  # fmt: skip
        self._watch_failures()
        # The dashboard's per-second series and per-placement totals (api/live.py).
        self.live = Live(self.now_ms)
        self.decider.observers.append(self.live)
        # Triggered placements (act/triggers.py): attached to membership while the app serves.
        self.triggers = Triggers(
            load_triggers(settings.triggers_file, self.segments, self.placements),
            decider=self.decider, context=self.context, placements=self.placements,
            webhooks=self.webhooks, metrics=self.metrics, now_ms=self.now_ms,
        )  # fmt: skip
        if settings.webhook_secret is None and self.triggers.triggers:
            raise ConfigError("triggers send webhooks: set INTENTLY_WEBHOOK_SECRET to sign them")
        window_ms = settings.dedupe_window_seconds * 1000
        self.pipeline = Pipeline(
            self.log,
            self.enricher,
            self.clock,
            MessageIdWindow(window_ms, settings.dedupe_max_entries),
            sinks=[self.context, self.metrics, self.live],
        )
        # Workers sharing Redis learn as one (learn/bus.py; the app pumps it), and one
        # starting begins with what the others learned (learn/snapshot.py), else with
        # what its own logs hold.
        self.bus = (
            LearningBus(self.store.client, settings.redis_prefix, settings.worker,
                        self.decider.learned_elsewhere)
            if isinstance(self.store, RedisStore) else None
        )  # fmt: skip
        self.snapshots = (
            SnapshotStore(self.store.client, settings.redis_prefix)
            if isinstance(self.store, RedisStore) else None
        )  # fmt: skip
        self.started_from = self._start_from_snapshot()
        if self.started_from is None:
            warmed = self._warm_recommenders(settings.recommender_warmup_events)
            if warmed:
                log.info("recommenders learned from %d logged product views and orders", warmed)
        # Erasures other workers announced while this one was away: before the catch-up,
        # which would otherwise apply an erased person's unapplied events again.
        carried = self.apply_erasures()
        if carried:
            log.info("carried out %d erasures announced by other workers", carried)
        # The store persists in batches: re-apply the events it had not persisted yet.
        caught_up = self.context.catch_up(self.log)
        if caught_up:
            log.info("re-applied %d logged events to the state store", caught_up)
        self.membership.count_members(self.store.profiles())
        # Rebuild the dedupe window from the log's most recent window of receive time.
        latest = self.log.latest_received_ms()
        if latest is not None:
            loaded = self.pipeline.prime_dedupe(latest - window_ms, latest)
            log.info("loaded %d recent messageIds for deduplication", loaded)
        self.metrics.log_seq.set(self.log.last_seq)
        if self.started_from is None:
            warmed = self._warm_policies(settings.policy_warmup_decisions)
            if warmed:
                log.info("bandit policies learned from %d logged decisions", warmed)
        # Rewards are attributed only to decisions made from now on: hooked after the
        # catch-up, which must not credit replayed outcomes to nothing.
        self.context.hooks.append(self.decider)
        # (after the catch-up too: entries replayed at start-up are not live ones)
        self.membership.listeners.append(self.live.segment_moved)
        self.decider.tick(self.now_ms())
        self.decider.bus = self.bus
        if self.bus is not None:
            self.learner.publish = self.bus.publish

    def _open_archive(self, settings: Settings) -> Archiver | None:
        """PostgreSQL, checked and migrated at start-up, then fed in the background."""
        if settings.database is None:
            return None
        connection = connect_postgres(settings.database)
        try:
            steps = migrate(connection)
        finally:
            connection.close()
        if steps:
            log.info("migrated the PostgreSQL schema through version %d", steps[-1])
        archive = Archiver(
            settings.database, self.records_name,
            sources(settings.event_log_path, settings.decision_log_path),
        )  # fmt: skip
        archive.start()
        self._resources.callback(archive.close)
        return archive

    def _start_from_snapshot(self) -> Snapshot | None:
        """What the workers learned (learn/snapshot.py), taken as this worker's start,
        with the learning stream to read from the point it reflects; None when there is
        none to take (none yet, or its point trimmed from the stream: logged)."""
        if self.bus is None or self.snapshots is None or self.erasures is None:
            return None
        snapshot = self.snapshots.read()
        if snapshot is None:
            return None
        if not self.bus.holds(snapshot.through):
            log.warning(
                "the learning snapshot (%.0f s old) is older than the learning stream "
                "holds: learning from this worker's own logs", age_seconds(snapshot),
            )  # fmt: skip
            return None
        try:
            self.decider.restore(snapshot.policies, snapshot.open, snapshot.pending)
            self.learner.restore(snapshot.recommenders)
        except ValueError as error:
            log.warning("the learning snapshot is not used: %s", error)
            return None
        # Erasures announced after it was made: its persons go at once.
        erased, after = 0, snapshot.erased_through
        while found := self.erasures.since(after):
            for _, erasure in found:
                self.forget_in_memory(erasure)
            erased += len(found)
            after = found[-1][0]
        self.bus.start_from(snapshot.through, snapshot.maker, snapshot.own_sent)
        log.info(
            "started from what the workers learned (%.0f s ago, %d policies, %d open "
            "decisions; %d later erasures carried out)", age_seconds(snapshot),
            len(snapshot.policies), len(snapshot.open), erased,
        )  # fmt: skip
        return snapshot

    def learned_snapshot(self, erased_through: str | None) -> bytes | None:
        """What this worker learned, encoded (on the event loop: policies change
        there); None before it has read the learning stream at all."""
        bus = self.bus
        if bus is None or bus.through == "0-0":
            return None
        policies, opened, waiting = self.decider.learned()
        snapshot = Snapshot(
            FORMAT, time.time() * 1000, bus.identity, bus.through, bus.sent, erased_through,
            policies, self.learner.learned(), opened, waiting,
        )  # fmt: skip
        return encode_snapshot(snapshot)

    def _warm_recommenders(self, limit: int) -> int:
        """Recommenders live in memory: at start-up they learn again from the log's last
        `limit` events that the store already holds (the catch-up feeds them the rest)."""
        applied = self.store.applied_seq
        rows = self.log.scan(since_seq=max(0, applied - limit))
        learned = 0
        try:
            for row in rows:
                if row.seq > applied:
                    break
                record = decode_record(row.body)
                record.seq = row.seq
                facts = facts_of(record)
                if facts.product is None and not facts.order_lines:
                    continue
                any_id = facts.user_id or facts.anonymous_id
                profile = self.context.lookup(any_id) if any_id is not None else None
                if profile is not None:  # gone: expired, or erased with its events
                    self.learner(profile, facts, Changes(row.seq))
                    learned += 1
        finally:
            rows.close()
        return learned

    def _warm_policies(self, limit: int) -> int:
        """Bandits live in memory: at start-up each offer placement's policy, and each
        experiment variant's own policy on one, learns again from the last `limit` logged
        decisions it made whose reward is known."""
        learners, own_policy_arms = self._policy_learners()
        if not learners or not self.settings.decision_log_path.exists():
            return 0
        self.decisions.flush()
        # Only decisions whose window closed: an open one has its clicks but not yet its
        # misses. The latest first, and no further back than each policy needs.
        closed_by = self.now_ms() - self.settings.attribution_window_ms
        placements = {placement.id for placement, _ in learners.values()}
        reader = DecisionLogReader(self.settings.decision_log_path)
        try:
            found: dict[tuple[str, str | None], list[DecisionRecord]] = {k: [] for k in learners}
            full: set[tuple[str, str | None]] = set()
            for record in reader.newest_first():
                if record.placement not in placements or record.at_ms > closed_by:
                    continue
                # A variant that serves the placement as defined is the live policy's.
                arm = record.arm if record.arm in own_policy_arms else None
                key = (record.placement, arm)
                if key not in learners or key in full:
                    continue
                records = found[key]
                records.append(record)
                if len(records) >= limit:
                    full.add(key)
                    if len(full) == len(learners):
                        break
            rewards = reader.rewards_of(r.decision_id for rs in found.values() for r in rs)
        finally:
            reader.close()
        learned = 0
        for key, (placement, policy) in learners.items():
            spec = placement.spec.policy
            in_order = reversed(found[key])  # in the order they were made
            for decision in usable(in_order, rewards, spec.dimensions, closed_by):
                policy.update(decision.action, learnable(policy, decision.reward), decision.context)
                learned += 1
        return learned

    def _policy_learners(
        self,
    ) -> tuple[dict[tuple[str, str | None], tuple[Placement, Policy]], set[str]]:
        """(placement, arm) -> the placement as served and its policy: each offer
        placement's live policy (arm None), and each experiment variant's own one; and
        the arms that have their own."""
        learners: dict[tuple[str, str | None], tuple[Placement, Policy]] = {}
        own: set[str] = set()
        offers = {p.id: p for p in self.placements if p.spec.kind == "offers"}
        for placement in offers.values():
            learners[placement.id, None] = (placement, self.decider.policy(placement))
        for experiment in self.experiments.registry:
            for placement_id in experiment.spec.placements:
                base = offers.get(placement_id)
                for variant in experiment.spec.variants if base is not None else ():
                    assert base is not None
                    try:
                        served = experiment.placement_for(variant.id, base, self.segments.catalog)
                    except ConfigError:  # the placement changed under the experiment
                        continue
                    if served is not None:
                        arm = f"{experiment.id}:{variant.id}"
                        own.add(arm)
                        learners[placement_id, arm] = (served, self.decider.policy(served))
        return learners, own

    def _watch_failures(self) -> None:
        """What an operator must hear of without reading logs (api/metrics.py WATCHED)."""
        watch = self.metrics.watch
        context, experiments, webhooks = self.context, self.experiments.log, self.webhooks
        watch("intently_events_failed", lambda: context.failed)
        watch("intently_state_behind", lambda: float(context.behind))
        watch("intently_webhooks_dead_lettered", lambda: webhooks.dead)
        watch("intently_experiment_records_dropped", lambda: experiments.failed)
        watch("intently_experiment_log_unavailable", lambda: float(experiments.unavailable))
        if self.definitions is not None:
            watch("intently_definitions_refused", lambda: self.definitions_refused)
        archive = self.archive
        if archive is not None:
            watch("intently_archive_backlog", archive.backlog)
            watch("intently_archive_available", lambda: float(archive.available))
            watch("intently_archive_rows_refused", lambda: archive.refused_rows)

    def define_segment(self, name: str, spec: SegmentSpec) -> tuple[Segment, int]:
        """Add or replace a segment and evaluate it over every profile now; returns the
        segment and how many profiles entered or left it. Raises `ExpressionError`."""
        segment, pages = self.define_segment_paged(name, spec)
        return segment, sum(pages)

    def define_segment_paged(self, name: str, spec: SegmentSpec) -> tuple[Segment, Iterator[int]]:
        """`define_segment`, its evaluation over every profile a page at a time (how many
        entered or left, per page): the API lets other requests run between pages."""
        if spec.webhook and self.settings.webhook_secret is None:
            raise ConfigError("set INTENTLY_WEBHOOK_SECRET before defining webhooks")
        segment, compiled = self.segments.define(name, spec)
        self.membership.reindex()
        now_ms = self.now_ms()
        # Members of a replaced definition that still match stay members (no new entry).
        pages = self._over_every_profile(
            lambda profiles, changes: self.membership.backfill(
                segment, compiled, profiles, now_ms, changes
            )
        )
        return segment, pages

    def _over_every_profile(self, update: Callable[[list[Profile], Changes], int]) -> Iterator[int]:
        """Run `update` over every stored profile, a page at a time, each page re-read
        and committed under the store's leases: events other workers apply meanwhile are
        kept, and a profile erased or merged meanwhile is not written back."""
        ids = (profile.id for profile in self.store.profiles())
        while page := list(itertools.islice(ids, SEGMENT_PAGE)):
            yield self._update_page(page, update)

    def _update_page(self, ids: list[str], update: Callable[[list[Profile], Changes], int]) -> int:
        store = self.store
        try:
            with store.exclusive((), ids):
                return self._update_held(ids, update)
        except LeaseTimeout:  # busy profiles among them: one at a time, each waited for
            moved = 0
            for profile_id in ids:
                with store.exclusive((), (profile_id,)):
                    moved += self._update_held([profile_id], update)
            return moved

    def _update_held(self, ids: list[str], update: Callable[[list[Profile], Changes], int]) -> int:
        current = [p for p in (self.store.get(i) for i in ids) if p is not None]
        changes = self.context.changes()
        moved = update(current, changes)
        self.context.commit(changes)
        return moved

    def check_segment(self, spec: SegmentSpec) -> None:
        """Raise what `define_segment` would (`ExpressionError`, `ConfigError`), changing
        nothing."""
        if spec.webhook and self.settings.webhook_secret is None:
            raise ConfigError("set INTENTLY_WEBHOOK_SECRET before defining webhooks")
        compile_expression(spec.expression, self.segments.catalog)

    def delete_segment(self, name: str) -> bool:
        pages = self.delete_segment_paged(name)
        if pages is None:
            return False
        for _ in pages:
            pass
        return True

    def delete_segment_paged(self, name: str) -> Iterator[int] | None:
        """Remove an API segment (None when there is none) and, a page at a time, its
        members from it (recorded as exits)."""
        if not self.segments.delete(name):
            return None
        self.membership.reindex()
        self.membership.members.pop(name, None)
        now_ms = self.now_ms()

        def leave(profiles: list[Profile], changes: Changes) -> int:
            self.membership.drop(name, profiles, now_ms, changes)
            return 0

        return self._over_every_profile(leave)

    def share_definition(self, kind: str, key: str, definition: Definition | None) -> None:
        """Write a definition (None: its deletion) for the other workers, before it is
        installed here; raises `psycopg.Error` or `OSError` when PostgreSQL cannot take
        it. Blocking. Nothing to do without a database: there are no other workers."""
        if self.definitions is not None:
            self.definitions.publish(kind, key, definition)

    def adopt_definitions(self, changes: list[tuple[str, str, Definition | None]]) -> int:
        """Install definitions other workers wrote (at start, and each second); how
        many. The table holds each definition's latest state, read in the order of those,
        so one may come before what it needs (an experiment before the placement it runs
        on, changed since): one that cannot be installed yet waits, and is tried again
        after the others and at every call until it can, or a newer one replaces it."""
        waiting = self._definitions_waiting
        for kind, key, _ in changes:
            waiting.pop((kind, key), None)
        adopted = self._install_all(changes, waiting)
        while waiting:  # again, while a pass installs something
            before = len(waiting)
            retried = [(kind, key, d) for (kind, key), d in waiting.items()]
            waiting.clear()
            adopted += self._install_all(retried, waiting)
            if len(waiting) == before:
                break
        self.definitions_refused = len(waiting)
        return adopted

    def _install_all(
        self, changes: list[tuple[str, str, Definition | None]],
        waiting: dict[tuple[str, str], Definition | None],
    ) -> int:  # fmt: skip
        adopted = 0
        for kind, key, definition in changes:
            try:
                self._adopt(kind, key, definition)
            except (ConfigError, ExpressionError) as error:
                waiting[kind, key] = definition
                log.warning("the shared %s %r cannot be installed yet: %s", kind, key, error)
            except Exception:  # (a full disk saving it, say): not the end of the tick
                waiting[kind, key] = definition
                log.exception("installing the shared %s %r failed", kind, key)
            else:
                adopted += 1
        return adopted

    def _adopt(self, kind: str, key: str, definition: Definition | None) -> None:
        # Another worker changed the shared state (profiles' memberships) already: a
        # segment is only indexed here, not evaluated over every profile again.
        if kind == PLACEMENT:
            if definition is None:
                self.placements.delete(key)
            elif isinstance(definition, PlacementSpec):
                self.placements.define(key, definition)
        elif kind == SEGMENT:
            if definition is None:
                self.segments.delete(key)
            elif isinstance(definition, SegmentSpec):
                self.segments.define(key, definition)
            self.membership.reindex()
        elif kind == EXPERIMENT:
            registry = self.experiments.registry
            if definition is None:
                # (shared experiment tables were purged by the worker that deleted it)
                if registry.forget(key) and not self.experiments.log.shared:
                    self.experiments.purge(key)
            elif isinstance(definition, Stored):
                registry.adopt(key, definition)

    def sync_catalog(self) -> int:
        """Apply the catalog rows other workers wrote to PostgreSQL (at start, and each
        second); how many. Raises when PostgreSQL is away."""
        shared = self.catalog.shared
        if shared is None:
            return 0
        return self.apply_catalog_changes(*shared.changes())  # (every page: one read)

    def apply_catalog_changes(self, items: list[Item], offers: list[Offer]) -> int:
        """Install catalog rows read from PostgreSQL (`catalog.shared.changes`)."""
        if items:
            self.catalog.apply(self.catalog.write(items, publish=False))
        if offers:
            fields = self.segments.catalog
            live = []
            for offer in offers:
                try:
                    live.append(prepare_offer(offer, fields))
                except ValueError:  # a rule this version cannot read: not offered
                    log.exception("shared offer %r cannot be prepared", offer.id)
            self.catalog.apply_offers(self.catalog.write_offers(live, publish=False))
        return len(items) + len(offers)

    def erase_locally(self, erasure: Erasure) -> None:
        """Carry out another worker's erasure here (blocking: its files are scanned)."""
        self.forget_in_memory(erasure)
        self.erase_files(erasure)

    def forget_in_memory(self, erasure: Erasure) -> None:
        """The in-memory part of another worker's erasure (on the event loop)."""
        self.decider.forget(erasure.devices, erasure.profile_ids)
        self.learner.forget(erasure.anonymous_ids, erasure.user_ids)

    def erase_files(self, erasure: Erasure) -> None:
        """The files' part of another worker's erasure: blocking, so off the event loop.
        PostgreSQL first (rows this worker shipped after the announcement; the shared
        experiment log): when it is away this fails at once, before the local scans,
        and the whole erasure is tried again at the next tick without scanning twice."""
        if self.archive is not None:
            self.archive.erase(
                erasure.anonymous_ids, erasure.user_ids, erasure.devices, erasure.profile_ids
            )
        self.experiments.erase(erasure.units)
        self.log.erase(erasure.anonymous_ids, erasure.user_ids)
        self.decisions.erase(erasure.devices, erasure.profile_ids)

    def apply_erasures(self) -> int:
        """Other workers' erasures not yet carried out here (each tick, and at start)."""
        if self.erasures is None:
            return 0
        carried = 0
        for entry_id, erasure in self.erasures.pending():
            if erasure is not None:
                self.erase_locally(erasure)
                carried += 1
            self.erasures.done(entry_id)
        return carried

    def now_ms(self) -> int:
        return epoch_ms(self.clock.now())

    def close(self) -> None:
        """Flush and release everything; closing twice is harmless."""
        self._resources.close()
