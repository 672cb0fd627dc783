"""The context stage of the pipeline: identity -> profile and session -> (segments).

It is an `EventSink`: the pipeline hands it each event once it is durable and before it
is acknowledged, in log order, so a request that starts after the acknowledgement reads
the new state. At start-up it re-applies the log's events that the store had not yet
persisted, through the same code.

An event whose changes the store did not take (unreachable, full, a lease run out, a
commit that failed for any reason) is never skipped: the stage falls `behind`, the
event and every later one wait in the log, and `recover` applies them from the store's
position once it takes writes again. Skipping it would be for good: the next commit
moves the position past it, and a restart replays only what comes after.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from intently.clock import epoch_ms
from intently.context.facts import Facts, facts_of
from intently.context.identity import IdentityGraph, anonymous_key, identity_keys, user_key
from intently.context.profile import Profile, ProfileRules
from intently.context.settings import ContextSettings
from intently.events.record import EventRecord, decode_record
from intently.log.eventlog import EventLogReader, now_ms
from intently.stores.protocol import Changes, StateStore, StoreUnavailable

log = logging.getLogger(__name__)

# Expire idle sessions and anonymous profiles every this many events, a bounded number
# at a time, so expiry never stalls ingestion.
_SWEEP_EVERY = 1024
_SWEEP_LIMIT = 2048
# How far past the server's clock (an event's receive time) an event's time may move the
# expiry clock: clients' clocks run a little fast. Unbounded, one event dated in 2199 (the
# public write key accepts it) would end every session and forget every anonymous
# visitor, of every worker, at the next sweep.
FUTURE_SKEW_MS = 5 * 60_000
# While behind for a reason other than an outage, say so this often at most.
_STILL_BEHIND_LOG_SECONDS = 30.0

# Called after an event changed a profile, within the same atomic change.
ProfileHook = Callable[[Profile, Facts | None, Changes], None]


class ProfileChanged(Exception):
    """An erasure found the profile merged into another, or holding identities it did not
    have when the erasure began: erasing what it had then would leave the rest (or unlink
    another profile's ids). The caller asks again, by any of the person's ids."""


class CommitFailed(StoreUnavailable):
    """The store refused an event's changes for a reason of its own (not an outage): the
    event is kept in the log and applied again, like one that met an outage."""


def _next_sweep_after(seq: int) -> int:
    return (seq // _SWEEP_EVERY + 1) * _SWEEP_EVERY


def _expiry_time(record: EventRecord, at_ms: int) -> int:
    """The event's time as the expiry clock may take it: at most its receive time (the
    server's clock when it arrived, the same at every replay) plus the skew."""
    received = record.event.received_at
    if received is None:
        return at_ms
    return min(at_ms, epoch_ms(received) + FUTURE_SKEW_MS)


class ContextStage:
    def __init__(self, store: StateStore, settings: ContextSettings | None = None) -> None:
        self.store = store
        self.settings = settings or ContextSettings()
        self.rules = ProfileRules(self.settings)
        self.identity = IdentityGraph(store, self.rules)
        self.hooks: list[ProfileHook] = []
        self.removal_hooks: list[Callable[[Profile], None]] = []
        self.identity.removal_hooks = self.removal_hooks
        self.merge_hooks = self.identity.merge_hooks  # (profile, an id it took over)
        # The latest event time applied: "now" for expiry, so that replayed history
        # expires by its own clock. Sweeps run at fixed log positions (every
        # _SWEEP_EVERY), and the watermark is saved with the state, so re-applying the
        # log after a crash expires exactly what the crashed run expired.
        self.watermark_ms = store.watermark_ms
        self._next_sweep = _next_sweep_after(store.applied_seq)
        self.applied = 0
        self.failed = 0  # events whose step raised (logged)
        # The store was unreachable when an event was applied: events wait in the log,
        # new ones are refused (503), until `recover` has applied the waiting ones.
        self.behind = False
        self._said_still_behind = 0.0  # (monotonic) when a failed recovery was logged

    # -- the pipeline step -------------------------------------------------------------------

    def apply_many(self, records: Sequence[EventRecord]) -> None:
        if self.behind:
            return  # in the log, in order: `recover` applies them once the store is back
        store = self.store
        for record in records:
            if record.seq <= store.applied_seq:
                continue  # applied by `recover`, which read it from the log before this
            try:
                self.apply(record)
            except StoreUnavailable as error:
                # This event and every later one wait in the log (a later one must not be
                # applied before an earlier one of the same visitor).
                self.behind = True
                log.warning("the state store is unavailable; events wait in the log (%s)", error)
                return
            except Exception:  # a bug: the next events are still applied
                self.failed += 1
                log.exception("applying the event at log position %d failed", record.seq)

    def recover(self, log_reader: EventLogReader) -> int:
        """While behind: once the store answers again, apply what waited in the log.
        Returns how many events were applied."""
        if not self.behind or not self.store.recover():
            return 0
        try:
            applied = self.catch_up(log_reader)
        except StoreUnavailable as error:
            self._still_behind(error)
            return 0
        self.behind = False
        log.warning("the state store is back; %d waiting events applied", applied)
        return applied

    def _still_behind(self, error: StoreUnavailable) -> None:
        # An outage is logged by the store's circuit; a refusal (a full Redis, a commit
        # failing) repeats every tick until fixed: say why, now and then.
        if time.monotonic() - self._said_still_behind >= _STILL_BEHIND_LOG_SECONDS:
            self._said_still_behind = time.monotonic()
            log.warning("events still wait in the log; the state store: %s", error)

    def apply(self, record: EventRecord) -> None:
        facts = facts_of(record)
        if facts.at_ms > self.watermark_ms:
            self.watermark_ms = max(self.watermark_ms, _expiry_time(record, facts.at_ms))
        changes = Changes(record.seq, self.watermark_ms)
        changes.event = record
        with self.store.exclusive(identity_keys(facts)):
            try:
                profile = self.identity.profile_for(facts, changes)
                self.rules.apply(profile, facts)
                changes.put(profile)
                for hook in self.hooks:
                    hook(profile, facts, changes)
            except StoreUnavailable:
                raise  # a read failed: nothing is written, the event waits in the log
            except Exception:
                # A step failed half-way (a bug): what it changed is committed all the
                # same, as a replay of the log fails the same way at the same place, so
                # the state kept in memory, the state written and the state rebuilt stay
                # the same.
                self._commit(changes)
                raise
            self._commit(changes)
        self.applied += 1
        if record.seq >= self._next_sweep:
            self._next_sweep = _next_sweep_after(record.seq)
            self.expire(self.watermark_ms, self.store.sweep_limit)

    def _commit(self, changes: Changes) -> None:
        try:
            self.store.commit(changes)
        except StoreUnavailable:
            raise
        except Exception as error:
            # Whatever it was, the position did not move past this event; were it taken
            # for a bug and skipped, the next commit would, and the event be lost for good.
            raise CommitFailed(
                f"committing the event at log position {changes.seq} failed: {error!r}"
            ) from error

    def expire(self, now_ms: int, limit: int = _SWEEP_LIMIT) -> int:
        """End sessions idle past the timeout and forget anonymous profiles idle past
        their retention. Returns how many profiles changed."""
        settings, store = self.settings, self.store
        session_ends = now_ms - settings.session_timeout_ms
        retention_ends = now_ms - settings.anonymous_retention_ms
        idle = store.idle_sessions(session_ends, limit)
        forgotten = store.idle_anonymous(retention_ends, limit)
        changed = 0
        # Each profile is held while it changes: with workers sharing the store, another
        # may have applied an event to it since the index was read (checked again).
        for profile_id in idle:
            with store.exclusive((), (profile_id,)):
                profile = store.get(profile_id)
                if profile is None or profile.session is None:
                    continue
                if profile.session.last_ms >= session_ends:
                    continue
                changes = Changes(store.applied_seq, watermark_ms=self.watermark_ms)
                self.rules.end_session(profile)
                changes.put(profile)
                for hook in self.hooks:
                    hook(profile, None, changes)
                store.commit(changes)
                changed += 1
        for profile_id in forgotten:
            with store.exclusive((), (profile_id,)):
                profile = store.get(profile_id)
                if profile is None or profile.user_ids or profile.last_ms >= retention_ends:
                    continue
                changes = Changes(store.applied_seq, watermark_ms=self.watermark_ms)
                self._remove(profile, changes)
                store.commit(changes)
                changed += 1
        return changed

    def _remove(self, profile: Profile, changes: Changes) -> None:
        for hook in self.removal_hooks:
            hook(profile)
        for user_id in profile.user_ids:
            changes.unlink(user_key(user_id))
        for anonymous_id in profile.anonymous_ids:
            changes.unlink(anonymous_key(anonymous_id))
        changes.remove(profile)

    # -- start-up --------------------------------------------------------------------------

    def catch_up(self, log_reader: EventLogReader) -> int:
        """Re-apply the logged events the store has not persisted; returns how many."""
        self._bind_log(log_reader)
        self._bound_clock(log_reader)
        replayed = 0
        for row in log_reader.scan(since_seq=self.store.applied_seq):
            record = decode_record(row.body)
            record.seq = row.seq
            self.apply(record)
            replayed += 1
        return replayed

    def _bind_log(self, log_reader: EventLogReader) -> None:
        """Make sure the store's position is this log's: a worker id reused with a new
        data dir would otherwise skip its new log's events up to the old log's position."""
        store, log_id = self.store, log_reader.log_id()
        if log_id is None:
            return
        was = store.applied_seq
        if not store.bind_log(log_id):
            log.warning(
                "the state store's position for this worker (%d) belongs to another event "
                "log (the same worker id on a new data dir?): this log is applied from its "
                "start", was,
            )  # fmt: skip
            self._next_sweep = _next_sweep_after(store.applied_seq)

    def _bound_clock(self, log_reader: EventLogReader) -> None:
        """Take back an expiry clock saved ahead of the server's (by a version that let an
        event dated in the future move it): it would expire everyone at the next sweep.
        The latest receive time counts as the server's clock too, for a log written
        under a clock of its own (tests, replays)."""
        bound = max(now_ms(), log_reader.latest_received_ms() or 0) + FUTURE_SKEW_MS
        if self.watermark_ms > bound:
            log.warning(
                "the expiry clock saved with the state (%d ms) is ahead of the server's "
                "clock; taken back to %d ms", self.watermark_ms, bound,
            )  # fmt: skip
            self.watermark_ms = bound

    # -- reading and erasing ---------------------------------------------------------------------

    def lookup(self, any_id: str) -> Profile | None:
        return self.identity.lookup(any_id)

    def describe(self, profile: Profile, now_ms: int) -> dict[str, Any]:
        return self.rules.describe(profile, now_ms)

    def changes(self) -> Changes:
        """A change set outside any event (a segment definition changed)."""
        return Changes(self.store.applied_seq, watermark_ms=self.watermark_ms)

    def commit(self, changes: Changes) -> None:
        self.store.commit(changes)

    def forget(self, profile: Profile) -> None:
        """Remove the profile and its identity links (the caller erases its events)."""
        store = self.store
        keys = [
            *(anonymous_key(a) for a in profile.anonymous_ids),
            *(user_key(u) for u in profile.user_ids),
        ]
        with store.exclusive(keys, (profile.id,)):
            held = store.get(profile.id)  # as it is now, with every link
            if held is None:
                if any(store.resolve(key) is not None for key in keys):
                    raise ProfileChanged(profile.id)  # merged into another meanwhile
                return  # gone already (expired, or erased by another request)
            gained = (set(held.anonymous_ids) - set(profile.anonymous_ids)) | (
                set(held.user_ids) - set(profile.user_ids)
            )
            if gained:
                raise ProfileChanged(profile.id)
            changes = self.changes()
            self._remove(held, changes)
            store.commit(changes)
