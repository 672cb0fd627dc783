"""One suite over every state store: the protocol's promises, and the state that a stream
of events leaves, checked against the embedded store fed the same events from scratch.

The Redis store runs against the real server (tests/services.py); with
INTENTLY_REQUIRE_SERVICES=1 (CI) a Redis that is down fails these tests.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from intently import Engine, ManualClock
from intently.context.profile import Profile, ProfileRules, SegmentChange
from intently.context.session import Session
from intently.context.settings import ContextSettings
from intently.events.validate import decode_body
from intently.stores.connect import connect_redis
from intently.stores.embedded import EmbeddedStore
from intently.stores.protocol import Changes, StateStore
from intently.stores.redisstate import RedisStore
from services import REDIS_URL, cluster_namespace, redis_namespace
from support import START, make_settings

RULES = ProfileRules(ContextSettings())
T0 = 1_795_000_000_000  # ms

Opener = Callable[[], StateStore]


@pytest.fixture(params=["embedded", "redis", "redis-cluster"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the store under test; called again, it opens the same state anew (what a
    restarted worker sees). Every store opened is closed at the end."""
    opened: list[StateStore] = []
    if request.param == "embedded":

        def open_embedded() -> StateStore:
            for store in opened:  # one writer per file: the previous one goes first
                store.close()
            opened.clear()
            opened.append(EmbeddedStore(tmp_path / "state.db", flush_seconds=0))
            return opened[-1]

        yield open_embedded
        for store in opened:
            store.close()
        return
    url = REDIS_URL
    namespace = redis_namespace
    if request.param == "redis-cluster":
        url = request.getfixturevalue("redis_cluster").url
        namespace = functools.partial(cluster_namespace, url)
    with namespace() as prefix:

        def open_redis() -> StateStore:
            store = RedisStore(connect_redis(url), prefix=prefix, worker="w1")
            assert store.cluster == (request.param == "redis-cluster")
            opened.append(store)
            return store

        yield open_redis
        for store in opened:
            store.close()


def make_profile(profile_id: str, last_ms: int, *, user: str | None = None) -> Profile:
    profile = RULES.new(profile_id, last_ms - 1000)
    profile.last_ms = last_ms
    profile.counts = {"Product Viewed": 3}
    profile.traits = {"plan": "gold", "big": 2**70}  # JSON-only body
    if user is not None:
        profile.user_ids.append(user)
    return profile


def with_session(profile: Profile, last_ms: int) -> Profile:
    profile.session = Session(number=1, start_ms=last_ms - 5000, last_ms=last_ms)
    return profile


def commit(store: StateStore, seq: int, *profiles: Profile, **parts: object) -> Changes:
    changes = Changes(seq, watermark_ms=T0 + seq)
    for profile in profiles:
        changes.put(profile)
    for key, target in dict(parts.get("links", {})).items():  # type: ignore[call-overload]
        changes.link(key, target)
    for key in parts.get("unlinked", ()):  # type: ignore[attr-defined]
        changes.unlink(key)
    for change in parts.get("transitions", ()):  # type: ignore[attr-defined]
        changes.add_transition(change)
    for profile in parts.get("removed", ()):  # type: ignore[attr-defined]
        changes.remove(profile)
    for old, into in dict(parts.get("merged", {})).items():  # type: ignore[call-overload]
        changes.merge(old, into)
    store.commit(changes)
    return changes


def test_a_committed_profile_and_its_links_read_back_equal(opener: Opener) -> None:
    store = opener()
    alice = with_session(make_profile("p_alice", T0, user="alice"), T0)
    commit(store, 1, alice, links={"u:alice": "p_alice", "a:dev-1": "p_alice"})
    assert store.get("p_alice") == alice
    assert store.resolve("u:alice") == store.resolve("a:dev-1") == "p_alice"
    assert store.get("p_nobody") is None
    assert store.resolve("a:nobody") is None
    assert store.profile_count() == 1
    assert (store.applied_seq, store.watermark_ms) == (1, T0 + 1)


def test_state_and_position_survive_reopening(opener: Opener) -> None:
    store = opener()
    profiles = [make_profile(f"p_{n}", T0 + n) for n in range(5)]
    for seq, profile in enumerate(profiles, start=1):
        commit(store, seq, profile, links={f"a:{profile.id}": profile.id})
    store.flush()
    again = opener()
    assert (again.applied_seq, again.watermark_ms) == (5, T0 + 5)
    assert sorted(again.profiles(), key=lambda p: p.id) == profiles
    assert again.profile_count() == 5
    assert again.resolve("a:p_3") == "p_3"


def test_removing_a_profile_removes_it_everywhere(opener: Opener) -> None:
    store = opener()
    gone = with_session(make_profile("p_gone", T0), T0)
    kept = with_session(make_profile("p_kept", T0 + 10), T0 + 10)
    change = SegmentChange("p_gone", "buyers", True, T0, 1)
    commit(store, 1, gone, kept, links={"a:g": "p_gone"}, transitions=[change])
    commit(store, 2, removed=[gone], unlinked=["a:g"])
    assert store.get("p_gone") is None
    assert store.resolve("a:g") is None
    assert store.segment_history("p_gone", 10) == []
    assert store.profile_count() == 1
    assert store.idle_sessions(T0 + 100, 10) == ["p_kept"]
    assert store.idle_anonymous(T0 + 100, 10) == ["p_kept"]
    assert store.live_sessions(0) == 1


def test_segment_history_is_newest_last_limited_and_follows_a_merge(opener: Opener) -> None:
    store = opener()
    into, old = make_profile("p_into", T0), make_profile("p_old", T0)
    first = [SegmentChange("p_into", f"s{n}", n % 2 == 0, T0 + 10 * n, n) for n in range(4)]
    theirs = [SegmentChange("p_old", "vip", True, T0 + 15, 7)]
    commit(store, 1, into, old, transitions=[*first, *theirs])
    assert store.segment_history("p_into", 2) == first[-2:]
    assert store.segment_history("p_old", 5) == theirs
    # The absorbed profile's entries and exits are the survivor's now, in time order.
    commit(store, 2, into, removed=[old], merged={"p_old": "p_into"})
    history = store.segment_history("p_into", 10)
    assert history == sorted([*first, *theirs], key=lambda c: c.at_ms)
    assert store.segment_history("p_old", 10) == []


def test_activity_indexes_list_the_oldest_first_below_the_cut(opener: Opener) -> None:
    store = opener()
    # Applied in time order, as events mostly are (the embedded store keeps application
    # order and stops at the first profile active since the cut; Redis orders by time).
    for seq, at in enumerate([T0 + 10, T0 + 20, T0 + 30, T0 + 40, T0 + 50], start=1):
        commit(store, seq, with_session(make_profile(f"p_{at - T0}", at), at))
    known = with_session(make_profile("p_known", T0 + 60, user="k"), T0 + 60)
    commit(store, 6, known)
    assert store.idle_sessions(T0 + 40, 10) == ["p_10", "p_20", "p_30"]  # the bound: <
    assert store.idle_sessions(T0 + 40, 2) == ["p_10", "p_20"]
    assert store.idle_sessions(T0 + 1000, 10)[-1] == "p_known"
    assert "p_known" not in store.idle_anonymous(T0 + 1000, 10)  # a known profile stays
    assert store.idle_anonymous(T0 + 40, 10) == ["p_10", "p_20", "p_30"]
    assert store.live_sessions(T0 + 30) == 4
    # A profile seen again moves to the end; one whose session ended leaves the live index.
    again = with_session(make_profile("p_10", T0 + 70), T0 + 70)
    commit(store, 7, again, make_profile("p_50", T0 + 50))
    assert store.idle_sessions(T0 + 40, 10) == ["p_20", "p_30"]
    assert store.live_sessions(T0 + 30) == 4  # p_30, p_40, p_known, p_10


# -- the state a stream of events leaves, against the embedded store from scratch --------


def event_stream(seed: int, count: int) -> list[dict[str, object]]:
    """Views, carts and orders from a few devices, logins (merges), a shared browser and
    aliases, in time order: the identity rules' every branch, many times over."""
    rng = random.Random(seed)
    devices = [f"dev-{n}" for n in range(12)]
    users = [f"user-{n}" for n in range(5)]
    events: list[dict[str, object]] = []
    for n in range(count):
        at = START + timedelta(seconds=n * 7 + rng.random() * 3)
        device = rng.choice(devices)
        roll = rng.random()
        event: dict[str, object] = {"anonymousId": device, "messageId": f"m{n}",
                                    "timestamp": at.isoformat()}  # fmt: skip
        if roll < 0.1:
            event.update(type="identify", userId=rng.choice(users), traits={"n": n})
        elif roll < 0.13:
            event.update(type="alias", userId=rng.choice(users), previousId=rng.choice(devices))
            del event["anonymousId"]
        else:
            name = rng.choice(["Product Viewed"] * 4 + ["Product Added", "Order Completed"])
            category = rng.choice(["running", "hiking", "tennis"])
            properties: dict[str, object] = {
                "product_id": f"{category}-{rng.randrange(9)}", "price": 20, "category": category
            }  # fmt: skip
            if name == "Order Completed":
                properties = {"order_id": f"o{n}", "revenue": 40, "products": [properties]}
            event.update(type="track", event=name, properties=properties)
            if rng.random() < 0.2:
                event["userId"] = rng.choice(users)
        events.append(event)
    return events


async def feed(engine: Engine, events: list[dict[str, object]]) -> None:
    for start in range(0, len(events), 50):
        body = msgspec.json.encode({"batch": events[start : start + 50]})
        decoded = decode_body(body)
        assert not decoded.errors
        await engine.pipeline.ingest(decoded.events)


def state_of(store: StateStore) -> tuple[dict[str, Profile], dict[str, str]]:
    profiles = {profile.id: profile for profile in store.profiles()}
    links = store.links()  # type: ignore[attr-defined]
    return profiles, dict(links)


@pytest.mark.anyio
@pytest.mark.parametrize("state_store", ["embedded", "redis", "redis-cluster"])
async def test_events_leave_the_state_the_embedded_store_reaches_from_scratch(
    state_store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    overrides = {}
    if state_store == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        overrides = {"state_store": REDIS_URL, "redis_prefix": prefix}
    if state_store == "redis-cluster":
        url = request.getfixturevalue("redis_cluster").url
        # (the test's own prefix: the cluster, with nothing on disk, goes after the run)
        prefix = f"conformance-{tmp_path.name}:"
        overrides = {"state_store": url, "redis_prefix": prefix}
    events = event_stream(seed=7, count=600)
    settings = make_settings(tmp_path / "data", **overrides)
    engine = Engine(settings, clock=ManualClock(START))
    try:
        await feed(engine, events[:300])
    finally:
        engine.close()
    # A restart in the middle: the rest goes to the reopened engine and store.
    engine = Engine(settings, clock=ManualClock(START))
    reference = Engine(make_settings(tmp_path / "reference"), clock=ManualClock(START))
    try:
        await feed(engine, events[300:])
        await feed(reference, events)
        # Every session has timed out. (From the events' own times: the clock stood still
        # while they were received, and the expiry clock stops a few minutes past it.)
        last = START + timedelta(seconds=len(events) * 7)
        later = int(last.timestamp() * 1000) + 40 * 60_000
        engine.context.expire(later)
        reference.context.expire(later)
        assert engine.context.identity.merges > 0 or reference.context.identity.merges > 0
        assert state_of(engine.store) == state_of(reference.store)
        assert engine.store.live_sessions(0) == reference.store.live_sessions(0) == 0
        for profile_id in state_of(reference.store)[0]:
            expected = reference.store.segment_history(profile_id, 50)
            assert engine.store.segment_history(profile_id, 50) == expected
        assert engine.store.name == state_store.removesuffix("-cluster")
        assert getattr(engine.store, "cluster", False) == (state_store == "redis-cluster")
    finally:
        engine.close()
        reference.close()
