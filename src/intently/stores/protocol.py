"""The state store protocol: the handful of operations the context layer needs.

State is a set of profiles (each holding its live session and segment memberships) and
identity links (`a:<anonymousId>` or `u:<userId>` -> profile id). The pipeline applies
one event at a time: it reads what it needs, then hands the store every change that
event caused as one `Changes`, which the store must apply atomically, tagged with the
event's log position. A backend on a server (Redis, PostgreSQL) maps `commit` to one
transaction; the embedded store applies it in memory and persists it in batches.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from msgspec import Struct, field

from intently.context.profile import Profile, SegmentChange


class Changes(Struct):
    """What one event changed: profiles written or removed, links set or removed."""

    seq: int
    profiles: dict[str, Profile] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    links: dict[str, str] = field(default_factory=dict)
    unlinked: set[str] = field(default_factory=set)
    # Segment entries and exits, and profiles merged into others (their history follows).
    transitions: list[SegmentChange] = field(default_factory=list)
    merged: dict[str, str] = field(default_factory=dict)
    watermark_ms: int = 0

    def put(self, profile: Profile) -> None:
        self.profiles[profile.id] = profile
        self.removed.discard(profile.id)

    def remove(self, profile: Profile) -> None:
        self.profiles.pop(profile.id, None)
        self.removed.add(profile.id)

    def link(self, key: str, profile_id: str) -> None:
        self.links[key] = profile_id
        self.unlinked.discard(key)

    def unlink(self, key: str) -> None:
        self.links.pop(key, None)
        self.unlinked.add(key)


class StateStore(Protocol):
    """Profiles and identity links. Implementations: `embedded` (memory + SQLite)."""

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

    def flush(self) -> None:
        """Make every committed change durable before returning."""
        ...

    def close(self) -> None: ...
