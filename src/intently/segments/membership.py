"""Live segment membership: re-evaluated after every event, for the segments that read
what the event changed; entries and exits recorded on the profile with their time and
handed to listeners (webhooks, metrics).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from msgspec import Struct

from intently.context.facts import Facts
from intently.context.profile import Profile, ProfileRules
from intently.segments.fields import TOPICS, topics_changed
from intently.segments.lang import Compiled
from intently.segments.registry import Segment, SegmentRegistry
from intently.stores.protocol import Changes


class Transition(Struct, frozen=True):
    """A profile entered or left a segment. `seq` is the log position of the event that
    caused it (0 when a definition changed): with profile and segment, a unique id."""

    profile_id: str
    segment: str
    entered: bool
    at_ms: int
    seq: int


Listener = Callable[[Segment, Transition], None]


class Membership:
    """The stage hook that keeps `profile.segments` true."""

    def __init__(self, registry: SegmentRegistry, rules: ProfileRules) -> None:
        self.registry = registry
        self.rules = rules
        self.listeners: list[Listener] = []
        self.members: Counter[str] = Counter()
        self.evaluations = 0
        self._by_topic: dict[str, list[tuple[Segment, Compiled]]] = {}
        self.reindex()

    def reindex(self) -> None:
        """Rebuild the topic index after definitions changed."""
        index: dict[str, list[tuple[Segment, Compiled]]] = {topic: [] for topic in TOPICS}
        for segment, compiled in self.registry:
            for topic in compiled.topics or TOPICS:  # constant expressions: always
                index.setdefault(topic, []).append((segment, compiled))
        self._by_topic = index

    def __call__(self, profile: Profile, facts: Facts | None, changes: Changes) -> None:
        if facts is None:
            candidates = list(self.registry)
            at_ms = profile.last_ms
        else:
            session = profile.session
            new_session = session is not None and session.events == 1
            topics = topics_changed(facts, new_session)
            at_ms = facts.at_ms
            if len(topics) == 1:
                candidates = self._by_topic.get(next(iter(topics)), [])
            else:
                seen: dict[str, tuple[Segment, Compiled]] = {}
                for topic in topics:
                    for entry in self._by_topic.get(topic, ()):
                        seen[entry[0].name] = entry
                candidates = list(seen.values())
        if not candidates and not profile.segments:
            return
        personal = self.rules.consents(profile, "personalization")
        current = profile.segments
        for segment, compiled in candidates:
            self.evaluations += 1
            inside = personal and compiled.matches(profile, at_ms)
            if inside != (segment.name in current):
                self._move(profile, segment, inside, at_ms, changes.seq)
        if not personal and current:  # refused personalization: in no segment at all
            for name in list(current):
                found = self.registry.get(name)
                if found is not None:
                    self._move(profile, found, False, at_ms, changes.seq)
        # Segments deleted since the profile entered them are left quietly.
        for name in [n for n in current if self.registry.get(n) is None]:
            del current[name]

    def _move(
        self, profile: Profile, segment: Segment, entered: bool, at_ms: int, seq: int
    ) -> None:
        self.rules.record_segment(profile, segment.name, entered, at_ms)
        self.members[segment.name] += 1 if entered else -1
        transition = Transition(profile.id, segment.name, entered, at_ms, seq)
        for listener in self.listeners:
            listener(segment, transition)

    def backfill(
        self, segment: Segment, compiled: Compiled, profiles: list[Profile], now_ms: int
    ) -> list[Profile]:
        """Evaluate a new or changed definition over every profile; returns the profiles
        whose membership changed (to be committed by the caller)."""
        changed = []
        for profile in profiles:
            personal = self.rules.consents(profile, "personalization")
            inside = personal and compiled.matches(profile, now_ms)
            if inside != (segment.name in profile.segments):
                self._move(profile, segment, inside, now_ms, 0)
                changed.append(profile)
        return changed

    def drop(self, name: str, profiles: list[Profile], now_ms: int) -> list[Profile]:
        """A definition was deleted: its members leave it (recorded as exits)."""
        changed = []
        for profile in profiles:
            if name in profile.segments:
                self.rules.record_segment(profile, name, False, now_ms)
                changed.append(profile)
        self.members.pop(name, None)
        return changed

    def forget(self, profile: Profile) -> None:
        """The profile is gone (erased or expired): it leaves its segments' counts."""
        for name in profile.segments:
            self.members[name] -= 1

    def count_members(self, profiles: list[Profile]) -> None:
        self.members = Counter(name for p in profiles for name in p.segments)
