"""Identity stitching: which profile an event belongs to, and when two profiles are one.

Identity keys are `a:<anonymousId>` and `u:<userId>`; each links to one canonical profile
id. The rules, applied to every event in log order (so a replay reaches the same graph):

- An event with both ids links them. If the anonymous id's profile is anonymous, it is
  merged into the user's profile (or simply becomes it, when the user is new).
- An anonymous id already tied to a *different* user is never used to merge: the event
  goes to its own user's profile and the link stays where it was. Two people sharing a
  browser (without a reset between them) stay two people. Such events are counted as
  identity conflicts.
- `alias` merges `previousId` (a userId, else an anonymousId; unknown ones are linked as
  anonymous ids) into `userId`'s profile; it is an explicit instruction, so it may join
  two known profiles. An alias of a profile into itself changes nothing.

Merges happen inside one `Changes`, so they are atomic; applying the same event twice
finds the ids already linked and changes nothing (idempotent under replay).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from intently.context.facts import Facts
from intently.context.profile import Profile, ProfileRules
from intently.stores.protocol import Changes, StateStore


def anonymous_key(anonymous_id: str) -> str:
    return "a:" + anonymous_id


def user_key(user_id: str) -> str:
    return "u:" + user_id


def identity_keys(facts: Facts) -> list[str]:
    """Every identity key an event may link, look up or merge (an alias's previousId
    may be either kind)."""
    keys: list[str] = []
    if facts.anonymous_id is not None:
        keys.append(anonymous_key(facts.anonymous_id))
    if facts.user_id is not None:
        keys.append(user_key(facts.user_id))
    if facts.previous_id is not None:
        keys.extend((user_key(facts.previous_id), anonymous_key(facts.previous_id)))
    return keys


def derived_profile_id(key: str) -> str:
    """The canonical id a profile first identified by `key` gets: known before the
    profile exists, so a visitor's very first decide already has its experiment arm."""
    return "p_" + hashlib.blake2b(key.encode(), digest_size=10).hexdigest()


class IdentityGraph:
    def __init__(self, store: StateStore, rules: ProfileRules) -> None:
        self.store = store
        self.rules = rules
        self.conflicts = 0
        self.merges = 0
        # Told of a profile about to be absorbed by a merge (the stage shares its list).
        self.removal_hooks: list[Callable[[Profile], None]] = []
        # Told when a profile takes over another's id: (the profile, the id it absorbed)
        # after a merge, and after an identity is linked to a profile other than the one
        # it would have made (a visitor known only by that id until now).
        self.merge_hooks: list[Callable[[Profile, str], None]] = []

    def lookup(self, any_id: str) -> Profile | None:
        """The profile for a canonical id, a userId or an anonymousId (in that order)."""
        store = self.store
        profile = store.get(any_id)
        if profile is not None:
            return profile
        for key in (user_key(any_id), anonymous_key(any_id)):
            found = store.resolve(key)
            if found is not None:
                return store.get(found)
        return None

    def profile_for(self, facts: Facts, changes: Changes) -> Profile:
        """The profile `facts` apply to, linking and merging as the rules say."""
        if facts.previous_id is not None:
            return self._alias(facts, changes)
        user_id, anonymous_id = facts.user_id, facts.anonymous_id
        if user_id is None and anonymous_id is not None:
            # Most events: a known anonymous visitor (the change set is still empty).
            store = self.store
            found = store.resolve("a:" + anonymous_id)
            if found is not None and (profile := store.get(found)) is not None:
                return profile
        by_user = self._find(user_key(user_id), changes) if user_id is not None else None
        by_anonymous = (
            self._find(anonymous_key(anonymous_id), changes) if anonymous_id is not None else None
        )
        if user_id is None:
            assert anonymous_id is not None  # validation: every event has one id
            return by_anonymous or self._create(anonymous_key(anonymous_id), facts, changes)
        if by_anonymous is None:
            profile = by_user or self._create(user_key(user_id), facts, changes)
            if anonymous_id is not None:
                self._link_anonymous(profile, anonymous_id, changes)
            if by_user is None:
                self._link_user(profile, user_id, changes)
            return profile
        if by_user is None:
            if by_anonymous.known:
                # This browser belongs to another user: a new person, not a merge.
                self.conflicts += 1
                return self._create_user(user_id, facts, changes)
            self._link_user(by_anonymous, user_id, changes)
            return by_anonymous
        if by_user.id == by_anonymous.id:
            return by_user
        if by_anonymous.known:
            self.conflicts += 1
            return by_user
        self._merge(by_user, by_anonymous, changes)
        return by_user

    def _alias(self, facts: Facts, changes: Changes) -> Profile:
        previous, user_id = facts.previous_id, facts.user_id
        assert previous is not None  # validation: alias has both
        assert user_id is not None
        target = self._find(user_key(user_id), changes)
        source = self._find(user_key(previous), changes) or self._find(
            anonymous_key(previous), changes
        )
        if target is None and source is None:
            target = self._create_user(user_id, facts, changes)
            self._link_anonymous(target, previous, changes)
            return target
        if target is None:
            assert source is not None
            self._link_user(source, user_id, changes)
            return source
        if source is None:
            self._link_anonymous(target, previous, changes)
        elif source.id != target.id:
            self._merge(target, source, changes)
        return target

    def _find(self, key: str, changes: Changes) -> Profile | None:
        profile_id = changes.links.get(key) or self.store.resolve(key)
        if profile_id is None:
            return None
        return changes.profiles.get(profile_id) or self.store.get(profile_id)

    def _create(self, key: str, facts: Facts, changes: Changes) -> Profile:
        profile = self.rules.new(self._new_id(key, changes), facts.at_ms)
        changes.put(profile)
        if key.startswith("u:"):
            self._link_user(profile, key[2:], changes)
        else:
            self._link_anonymous(profile, key[2:], changes)
        return profile

    def _create_user(self, user_id: str, facts: Facts, changes: Changes) -> Profile:
        return self._create(user_key(user_id), facts, changes)

    def _new_id(self, key: str, changes: Changes) -> str:
        """A canonical id derived from the first identity seen: the same history replayed
        gives the same ids. (Suffixed in the unlikely case the id is taken.)"""
        seed, attempt = key, 0
        while True:
            candidate = derived_profile_id(seed)
            if self.store.get(candidate) is None and candidate not in changes.profiles:
                return candidate
            attempt += 1
            seed = f"{key}#{attempt}"

    def _link_user(self, profile: Profile, user_id: str, changes: Changes) -> None:
        if user_id not in profile.user_ids:
            profile.user_ids.append(user_id)
            self._linked(profile, user_key(user_id))
        changes.link(user_key(user_id), profile.id)
        changes.put(profile)

    def _link_anonymous(self, profile: Profile, anonymous_id: str, changes: Changes) -> None:
        if anonymous_id not in profile.anonymous_ids:
            profile.anonymous_ids.append(anonymous_id)
            self._linked(profile, anonymous_key(anonymous_id))
        changes.link(anonymous_key(anonymous_id), profile.id)
        changes.put(profile)

    def _linked(self, profile: Profile, key: str) -> None:
        if self.merge_hooks:
            derived = derived_profile_id(key)
            if derived != profile.id:
                for merged in self.merge_hooks:
                    merged(profile, derived)

    def _merge(self, into: Profile, other: Profile, changes: Changes) -> None:
        for hook in self.removal_hooks:
            hook(other)
        self.rules.merge(into, other)
        for user_id in other.user_ids:
            changes.link(user_key(user_id), into.id)
        for anonymous_id in other.anonymous_ids:
            changes.link(anonymous_key(anonymous_id), into.id)
        changes.remove(other)
        changes.merge(other.id, into.id)
        changes.put(into)
        self.merges += 1
        for merged in self.merge_hooks:
            merged(into, other.id)
