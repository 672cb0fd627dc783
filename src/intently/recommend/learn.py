"""Feeding recommenders from the context stage: each product view, as it is applied.

A `ContextStage` hook sees every event after the session and profile took it, inside the
same atomic change, so the recommenders learn from exactly the events the state holds, in
log order, live or replayed. A session here is the context layer's session (split after
inactivity or a new campaign), keyed by profile and session number. Visitors who refused
personalization are not learned from.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable

from intently.context.facts import Facts
from intently.context.profile import Profile, ProfileRules
from intently.recommend.sequential import SequentialRules
from intently.recommend.session_knn import SessionKNN
from intently.stores.protocol import Changes

# The views kept per session for the recommenders (the context session keeps fewer, to
# stay small): a session kNN weighs a session's whole recent path.
RECENT_VIEWS = 20


def session_key(profile: Profile) -> Hashable:
    """The recommenders' key for the profile's live session."""
    return (profile.id, profile.sessions)


class LearnFromViews:
    """A context-stage hook that feeds product views to a session kNN, sequential rules
    and popularity counts, and keeps each session's recent views (at most `max_sessions`
    sessions, the least recently active forgotten first).

    `learning = False` freezes what is learned across sessions (the static evaluation
    protocol); each session's own recent views are still kept, as the engine's session
    context is."""

    def __init__(
        self,
        knn: SessionKNN,
        sequential: SequentialRules,
        profile_rules: ProfileRules,
        max_sessions: int = 1_000_000,
    ) -> None:
        self.knn = knn
        self.sequential = sequential
        self.profile_rules = profile_rules
        self.max_sessions = max_sessions
        self.popularity: Counter[str] = Counter()
        self.learning = True
        self._views: OrderedDict[Hashable, list[str]] = OrderedDict()

    def views(self, session: Hashable) -> list[str]:
        """The session's recent views, oldest first."""
        return self._views.get(session, [])

    def __call__(self, profile: Profile, facts: Facts | None, changes: Changes) -> None:
        if facts is None or facts.product is None:
            return
        if not self.profile_rules.personalizes(profile):
            return
        item = facts.product.product_id
        session = session_key(profile)
        views = self._views.get(session)
        if views is None:
            views = self._views[session] = []
            if len(self._views) > self.max_sessions:
                self._views.popitem(last=False)
        else:
            self._views.move_to_end(session)
        if self.learning:
            self.knn.observe(session, item, facts.at_ms)
            self.sequential.learn(views, item)
            self.popularity[item] += 1
        views.append(item)
        if len(views) > RECENT_VIEWS:
            del views[0]
