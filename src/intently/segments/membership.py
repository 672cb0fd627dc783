"""Live segment membership: re-evaluated after every event, for the segments that read
what the event changed; entries and exits recorded on the profile with their time and
handed to listeners (webhooks, metrics).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import NamedTuple

from intently.context.facts import Facts
from intently.context.profile import Profile, ProfileRules, SegmentChange
from intently.segments.fields import SESSION_BOUNDARY, TOPIC_BITS, TOPICS, topics_changed
from intently.segments.fused import Fused, fuse
from intently.segments.lang import Compiled
from intently.segments.registry import Segment, SegmentRegistry
from intently.stores.protocol import Changes

log = logging.getLogger(__name__)

# A profile entered or left a segment. `seq` is the log position of the event that caused
# it (0 when a definition changed): with profile, segment and direction, a unique id.
Transition = SegmentChange


Listener = Callable[[Segment, Transition], None]


class _Shape(NamedTuple):
    segments: dict[str, Segment]  # the candidates, by name
    fused: Fused | None  # None: no candidates
    compiled: list[tuple[str, Compiled]]  # the candidates, in order (see _one_by_one)


class Membership:
    """The stage hook that keeps `profile.segments` true."""

    def __init__(self, registry: SegmentRegistry, rules: ProfileRules) -> None:
        self.registry = registry
        self.rules = rules
        self.listeners: list[Listener] = []
        self.members: Counter[str] = Counter()
        self.evaluations = 0
        self._by_topic: dict[int, list[tuple[Segment, Compiled]]] = {}
        # Per set of changed topics (events come in few shapes): the candidate segments
        # by name and one fused function evaluating them all (see fused.py).
        self._shapes: dict[int, _Shape] = {}
        self._defined: frozenset[str] = frozenset()
        self._failed: set[int] = set()  # shapes whose fused evaluation raised (logged once)
        self.reindex()

    def reindex(self) -> None:
        """Rebuild the topic index after definitions changed."""
        index: dict[int, list[tuple[Segment, Compiled]]] = {bit: [] for bit in TOPIC_BITS.values()}
        for segment, compiled in self.registry:
            for topic in compiled.topics or TOPICS:  # constant expressions: always
                index[TOPIC_BITS[topic]].append((segment, compiled))
        self._by_topic = index
        self._shapes = {}
        self._defined = frozenset(segment.name for segment, _ in self.registry)

    def _shape(self, topics: int) -> _Shape:
        seen: dict[str, tuple[Segment, Compiled]] = {}
        for bit, entries in self._by_topic.items():
            if topics & bit:
                for entry in entries:
                    seen[entry[0].name] = entry
        named = [(s.name, c) for s, c in seen.values()]
        fused = fuse(named, self.registry.catalog) if named else None
        shape = _Shape({s.name: s for s, _ in seen.values()}, fused, named)
        self._shapes[topics] = shape
        return shape

    def __call__(self, profile: Profile, facts: Facts | None, changes: Changes) -> None:
        if not self._defined and not profile.segments:
            return  # no segment at all: nothing to evaluate, nothing to leave
        if facts is None:  # the session ended: what reads the session may change
            topics = SESSION_BOUNDARY
            at_ms = profile.last_ms
        else:
            session = profile.session
            new_session = session is not None and session.events == 1
            # A new profile, or one that just absorbed another, may have changed anywhere.
            new_profile = (new_session and profile.sessions == 1) or bool(changes.removed)
            topics = topics_changed(facts, new_profile, new_session)
            at_ms = facts.at_ms
        shape = self._shapes.get(topics) or self._shape(topics)
        current = profile.segments
        if shape.fused is None and not current:
            return
        if not self.rules.personalizes(profile):
            # Refused personalization: in no segment at all.
            for name in list(current):
                found = self.registry.get(name)
                if found is not None:
                    self._move(profile, found, False, at_ms, changes)
                else:
                    current.remove(name)
            return
        if shape.fused is not None:
            candidates = shape.segments
            self.evaluations += len(candidates)
            try:
                flips = shape.fused(profile, at_ms, current)
            except Exception:
                # A field that cannot be read (a bug) must not stop ingestion, nor take
                # the other segments with it: evaluate them one by one.
                if topics not in self._failed:
                    self._failed.add(topics)
                    log.exception("fused segment evaluation failed; evaluating one by one")
                flips = _one_by_one(shape.compiled, profile, at_ms, current)
            if flips:
                # Entries first, then exits, each in candidate order.
                exits = [name for name in flips if name in current]
                for name in flips:
                    if name not in current:
                        self._move(profile, candidates[name], True, at_ms, changes)
                for name in exits:
                    self._move(profile, candidates[name], False, at_ms, changes)
        if current and not self._defined.issuperset(current):
            # Segments deleted since the profile entered them are left quietly.
            for name in [n for n in current if n not in self._defined]:
                current.remove(name)

    def _move(
        self, profile: Profile, segment: Segment, entered: bool, at_ms: int, changes: Changes
    ) -> None:
        transition = self.rules.record_segment(profile, segment.name, entered, at_ms, changes.seq)
        changes.add_transition(transition)
        changes.put(profile)
        self.members[segment.name] += 1 if entered else -1
        for listener in self.listeners:
            listener(segment, transition)

    def backfill(
        self,
        segment: Segment,
        compiled: Compiled,
        profiles: list[Profile],
        now_ms: int,
        changes: Changes,
    ) -> int:
        """Evaluate a new or changed definition over every profile, into `changes` (to
        be committed by the caller); returns how many profiles entered or left."""
        moved = 0
        for profile in profiles:
            personal = self.rules.consents(profile, "personalization")
            inside = personal and _matches(compiled, profile, now_ms)
            if inside != (segment.name in profile.segments):
                self._move(profile, segment, inside, now_ms, changes)
                moved += 1
        return moved

    def drop(self, name: str, profiles: list[Profile], now_ms: int, changes: Changes) -> None:
        """A definition was deleted: its members leave it (recorded as exits)."""
        for profile in profiles:
            if name in profile.segments:
                changes.add_transition(
                    self.rules.record_segment(profile, name, False, now_ms, changes.seq)
                )
                changes.put(profile)
        self.members.pop(name, None)

    def forget(self, profile: Profile) -> None:
        """The profile is gone (erased or expired): it leaves its segments' counts."""
        for name in profile.segments:
            self.members[name] -= 1

    def count_members(self, profiles: Iterable[Profile]) -> None:
        self.members = Counter(name for p in profiles for name in p.segments)


def _matches(compiled: Compiled, profile: Profile, at_ms: int) -> bool:
    """Whether the profile is in the segment; a segment whose fields cannot be read (a
    bug, logged) holds no one."""
    try:
        return compiled.matches(profile, at_ms)
    except Exception:
        log.exception("a segment could not be evaluated: %s", compiled.source)
        return False


def _one_by_one(
    candidates: list[tuple[str, Compiled]], profile: Profile, at_ms: int, current: list[str]
) -> list[str]:
    """What the fused function returns, one segment at a time."""
    return [
        name
        for name, compiled in candidates
        if _matches(compiled, profile, at_ms) is not (name in current)
    ]
