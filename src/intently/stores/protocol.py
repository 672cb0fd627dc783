"""The state store protocol: the handful of operations the context layer needs.

State is a set of profiles (each holding its live session and segment memberships) and
identity links (`a:<anonymousId>` or `u:<userId>` -> profile id). The pipeline applies
one event at a time: it reads what it needs, then hands the store every change that
event caused as one `Changes`, which the store must apply atomically, tagged with the
event's log position. A backend on a server (Redis, PostgreSQL) maps `commit` to one
transaction; the embedded store applies it in memory and persists it in batches.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import Future
from contextlib import AbstractContextManager
from types import MappingProxyType
from typing import Protocol

from intently.context.profile import Profile, SegmentChange
from intently.events.record import EventRecord


class Changes:
    """What one event changed: profiles written or removed, links set or removed,
    segment entries and exits, profiles merged into others (their history follows).

    One is made per event, so only `profiles` (always used) is allocated up front; the
    rest stay shared empties until something is added. `only_profiles` tells a store
    that nothing but `profiles` holds anything (most events), so it may skip the rest.
    """

    __slots__ = ("_links", "_merged", "_removed", "_transitions", "_unlinked", "event",
                 "only_profiles", "profiles", "seq", "watermark_ms")  # fmt: skip

    def __init__(self, seq: int, watermark_ms: int = 0) -> None:
        self.seq = seq
        self.watermark_ms = watermark_ms
        # The event that made these changes (None outside events): a shared store
        # publishes it to its event stream in the same atomic write.
        self.event: EventRecord | None = None
        self.profiles: dict[str, Profile] = {}
        self.only_profiles = True
        self._removed: set[str] | None = None
        self._links: dict[str, str] | None = None
        self._unlinked: set[str] | None = None
        self._transitions: list[SegmentChange] | None = None
        self._merged: dict[str, str] | None = None

    @property
    def removed(self) -> AbstractSet[str]:
        return self._removed or _NO_IDS

    @property
    def links(self) -> Mapping[str, str]:
        return self._links or _NO_LINKS

    @property
    def unlinked(self) -> AbstractSet[str]:
        return self._unlinked or _NO_IDS

    @property
    def transitions(self) -> Sequence[SegmentChange]:
        return self._transitions or ()

    @property
    def merged(self) -> Mapping[str, str]:
        return self._merged or _NO_LINKS

    def put(self, profile: Profile) -> None:
        self.profiles[profile.id] = profile
        if self._removed:
            self._removed.discard(profile.id)

    def remove(self, profile: Profile) -> None:
        self.only_profiles = False
        self.profiles.pop(profile.id, None)
        if self._removed is None:
            self._removed = set()
        self._removed.add(profile.id)

    def link(self, key: str, profile_id: str) -> None:
        self.only_profiles = False
        if self._links is None:
            self._links = {}
        self._links[key] = profile_id
        if self._unlinked:
            self._unlinked.discard(key)

    def unlink(self, key: str) -> None:
        self.only_profiles = False
        if self._links:
            self._links.pop(key, None)
        if self._unlinked is None:
            self._unlinked = set()
        self._unlinked.add(key)

    def add_transition(self, change: SegmentChange) -> None:
        self.only_profiles = False
        if self._transitions is None:
            self._transitions = []
        self._transitions.append(change)

    def merge(self, absorbed_id: str, into_id: str) -> None:
        self.only_profiles = False
        if self._merged is None:
            self._merged = {}
        self._merged[absorbed_id] = into_id


class StoreUnavailable(RuntimeError):
    """The store's server cannot be reached now. Reads answer without the visitor (the
    decision's fallbacks); events are refused with 503 until `recover` says it is back."""


_NO_IDS: frozenset[str] = frozenset()
_NO_LINKS: Mapping[str, str] = MappingProxyType({})


class StateStore(Protocol):
    """Profiles and identity links. Implementations: `embedded` (memory + SQLite) and
    `redis` (shared by many workers)."""

    # Profiles an expiry sweep may change at once (sweeps run on the applying thread).
    sweep_limit: int

    # Called before the store records "applied up to N": what other logs derived from
    # those events (experiment metrics) must be durable first.
    before_write: list[Callable[[], None]]

    def exclusive(
        self, keys: Collection[str], profile_ids: Collection[str] = ()
    ) -> AbstractContextManager[None]:
        """Hold the identity keys, the profiles they are linked to and `profile_ids`
        against every other writer until the block ends: read, change and `commit`
        inside it. One process applying events alone needs nothing here; workers that
        share a store need it for per-profile order and atomic merges."""
        ...

    def get(self, profile_id: str) -> Profile | None:
        """The profile, which the caller may change and then `commit`."""
        ...

    def resolve(self, key: str) -> str | None:
        """The profile id an identity key (`a:...`, `u:...`) is linked to."""
        ...

    def commit(self, changes: Changes) -> None:
        """Apply `changes` atomically; afterwards `applied_seq` is `changes.seq`."""
        ...

    @property
    def applied_seq(self) -> int:
        """The log position of the last event whose changes are in the store."""
        ...

    def live_sessions(self, since_ms: int) -> int:
        """How many live sessions had activity at or after `since_ms` (the dashboard)."""
        ...

    def idle_sessions(self, before_ms: int, limit: int) -> Iterable[str]:
        """Profiles whose live session saw nothing since `before_ms` (oldest first)."""
        ...

    def idle_anonymous(self, before_ms: int, limit: int) -> Iterable[str]:
        """Anonymous profiles that saw nothing since `before_ms` (oldest first)."""
        ...

    @property
    def watermark_ms(self) -> int:
        """The latest event time applied (the context stage's clock for expiry)."""
        ...

    def segment_history(self, profile_id: str, limit: int) -> list[SegmentChange]:
        """The profile's latest segment entries and exits, newest last."""
        ...

    def profile_count(self) -> int: ...

    def profiles(self) -> Iterable[Profile]:
        """Every profile (for re-evaluating a changed segment definition)."""
        ...

    def compact(self) -> Future[None]:
        """Persist, then remove every leftover copy of deleted data from disk (after an
        erasure); the future is done once nothing deleted remains readable."""
        ...

    def tick(self) -> None:
        """Background work that commits would otherwise drive (called about once a
        second while serving, on the thread that commits): a quiet store still persists."""
        ...

    def flush(self) -> None:
        """Make every committed change durable before returning."""
        ...

    def bind_log(self, log_id: str) -> bool:
        """Tie the store's log position to the event log `log_id` (kept beside it). False
        when the position was another log's: it starts over at 0, or the new log's first
        events would be taken for applied ones."""
        ...

    def recover(self) -> bool:
        """After `StoreUnavailable`: whether the store answers again (its log position
        read anew, as a write whose answer was lost may have been applied)."""
        ...

    def close(self) -> None: ...
