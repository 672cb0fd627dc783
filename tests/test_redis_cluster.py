"""The Redis store on a real Redis Cluster (three primaries, tests/services.py): an event's
changes are written slot by slot to a plan (stores/clustered.py), and a worker stopped
in the middle finishes the plan when it starts again, or drops it when nothing of it was
written. The conformance suite (tests/test_store_conformance.py) runs over the Cluster
too; these are the stops in between."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from intently import Engine, ManualClock
from intently.context.profile import Profile, ProfileRules, SegmentChange
from intently.context.settings import ContextSettings
from intently.stores.clustered import COMMIT_LEASE_MS
from intently.stores.connect import connect_redis
from intently.stores.protocol import Changes, StoreUnavailable
from intently.stores.redisstate import LeaseLost, RedisStore
from services import PrivateCluster, cluster_namespace
from support import START, client_for, make_settings

RULES = ProfileRules(ContextSettings())
T0 = 1_795_000_000_000


@pytest.fixture
def opened(redis_cluster: PrivateCluster) -> Iterator[Callable[[], RedisStore]]:
    """Opens the store of worker w1 under a prefix of this test's own; called again, a
    restarted worker's."""
    stores: list[RedisStore] = []
    with cluster_namespace(redis_cluster.url) as prefix:

        def open_store() -> RedisStore:
            store = RedisStore(connect_redis(redis_cluster.url), prefix=prefix, worker="w1")
            assert store.cluster
            stores.append(store)
            return store

        yield open_store
        for store in stores:
            store.client.close()


def profile(profile_id: str, views: int, user: str | None = None) -> Profile:
    made = RULES.new(profile_id, T0)
    made.counts = {"Product Viewed": views}
    if user is not None:
        made.user_ids.append(user)
    return made


def two_slots() -> tuple[str, str]:
    """Two profile ids whose keys live on different slots (so, here, different nodes
    most of the time): a merge of them spans slots."""
    first = "p_first"
    second = next(
        f"p_{n}" for n in range(1000) if key_slot(f"{{p_{n}}}".encode()) != key_slot(b"{p_first}")
    )
    return first, second


def seed(store: RedisStore, first: str, second: str) -> None:
    """Two visitors, each with a profile, a link, and a segment entry."""
    with store.exclusive(["a:one", "a:two"], [first, second]):
        changes = Changes(1, watermark_ms=T0)
        changes.put(profile(first, 3))
        changes.put(profile(second, 5))
        changes.link("a:one", first)
        changes.link("a:two", second)
        changes.add_transition(SegmentChange(first, "browsers", True, T0, 1))
        changes.add_transition(SegmentChange(second, "buyers", True, T0, 1))
        store.commit(changes)


def merge(first: str, second: str) -> Changes:
    """The second visitor signs in as the first: its profile is merged into the first's."""
    changes = Changes(2, watermark_ms=T0 + 1)
    changes.put(profile(first, 9, user="kim"))
    changes.remove(profile(second, 5))
    changes.merge(second, first)
    changes.link("a:two", first)
    changes.link("u:kim", first)
    return changes


def state(store: RedisStore, *profile_ids: str) -> dict[str, Any]:
    bodies = {p: store.get(p) for p in profile_ids}
    return {
        "profiles": {p: None if body is None else body.counts for p, body in bodies.items()},
        "links": {key: store.resolve(key) for key in ("a:one", "a:two", "u:kim")},
        "history": {
            p: [(c.segment, c.entered) for c in store.segment_history(p, 10)] for p in profile_ids
        },
        "count": store.profile_count(),
        "anonymous": store.idle_anonymous(T0 + 10**9, 10),
        "position": store.applied_seq,
        "stream": store.client.xlen(store.stream_key),
        "leases": sorted(store.client.scan_iter(match=f"{store.prefix}*:lease")),
        "plan": store.client.hget(store.worker_key, "plan"),
    }


def expected_after_merge(opened: Callable[[], RedisStore]) -> dict[str, Any]:
    """The state the merge leaves when nothing stops it (a store under another worker
    name, so its own keys: compared without the worker-bound parts)."""
    first, second = two_slots()
    store = opened()
    seed(store, first, second)
    with store.exclusive(["a:two", "u:kim"], [first, second]):
        store.commit(merge(first, second))
    found = state(store, first, second)
    assert found["profiles"] == {first: {"Product Viewed": 9}, second: None}
    assert found["links"] == {"a:one": first, "a:two": first, "u:kim": first}
    assert sorted(found["history"][first]) == [("browsers", True), ("buyers", True)]
    assert found["count"] == 1
    assert found["leases"] == []
    assert found["plan"] is None
    assert found["position"] == 2
    return found


def cut(store: RedisStore, script: str, failing: Callable[[int], bool]) -> None:
    """Redis away for the runs of one of the store's commit scripts that `failing` names
    (by their number, from 1): the run raises a ConnectionError; the rest go through."""
    writer = store._writer  # type: ignore[attr-defined]
    real = getattr(writer, script)
    runs = 0

    def run(*args: Any, **kwargs: Any) -> Any:
        nonlocal runs
        runs += 1
        if failing(runs):
            raise redis.ConnectionError("cut off")
        return real(*args, **kwargs)

    setattr(writer, script, run)


def stop_at(store: RedisStore, script: str, call: int) -> None:
    """The worker stops (as if killed) at the `call`-th run of one of its commit
    scripts: that run and everything after it never reach Redis (nor does what the
    worker would do about it: releasing leases, dropping or finishing the plan)."""
    cut(store, script, lambda run: run >= call)

    def gone(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("killed")

    writer = store._writer  # type: ignore[attr-defined]
    store.release_leases = gone  # type: ignore[method-assign]
    store.forget_plan = gone  # type: ignore[method-assign]
    writer.finish = gone


@pytest.mark.parametrize(
    ("script", "call"),
    [("_data", 1), ("_data", 2), ("_shared", 1), ("_done", 1)],
    ids=["before any slot", "after the first slot", "before the shared keys", "before done"],
)
def test_a_worker_stopped_in_the_middle_of_a_commit_finishes_it_when_it_starts_again(
    opened: Callable[[], RedisStore], script: str, call: int
) -> None:
    expected = expected_after_merge(opened)
    first, second = two_slots()
    # The stopped worker under a prefix of its own (inside this test's namespace).
    store = opened()
    store = RedisStore(store.client, prefix=store.prefix + "stopped:", worker="w1")
    seed(store, first, second)
    stop_at(store, script, call)
    with pytest.raises(StoreUnavailable), store.exclusive(["a:two", "u:kim"], [first, second]):
        store.commit(merge(first, second))
    # Stopped: a plan is left, prepared; the leases it still needs are held a minute.
    assert store.client.hget(store.worker_key, "plan_prepared") == b"1"
    restarted = RedisStore(store.client, prefix=store.prefix, worker="w1")
    found = state(restarted, first, second)
    assert found == expected
    assert restarted.commits_finished == 1  # (intently_redis_commits_finished)
    assert restarted.commits_unresolved == 0
    # And the next event is committed as usual.
    with restarted.exclusive(["a:one"], [first]):
        later = Changes(3, watermark_ms=T0 + 2)
        later.put(profile(first, 10, user="kim"))
        restarted.commit(later)
    assert restarted.get(first).counts == {"Product Viewed": 10}  # type: ignore[union-attr]


def test_a_worker_stopped_before_its_plan_was_prepared_drops_it_and_applies_the_event_again(
    opened: Callable[[], RedisStore],
) -> None:
    expected = expected_after_merge(opened)
    first, second = two_slots()
    store = RedisStore(opened().client, prefix=opened().prefix + "stopped:", worker="w1")
    seed(store, first, second)
    before = state(store, first, second)
    stop_at(store, "_prepare", 2)  # the second leased slot's leases never lengthened
    with pytest.raises(StoreUnavailable), store.exclusive(["a:two", "u:kim"], [first, second]):
        store.commit(merge(first, second))
    assert store.client.hget(store.worker_key, "plan_prepared") == b"0"
    restarted = RedisStore(store.client, prefix=store.prefix, worker="w1")
    # Nothing of the event was written, its leases are gone (not held a minute), and the
    # log applies it again, as it does after any refused commit.
    assert state(restarted, first, second) == {**before, "leases": []}
    with restarted.exclusive(["a:two", "u:kim"], [first, second]):
        restarted.commit(merge(first, second))
    assert state(restarted, first, second) == expected


def test_a_lease_lost_before_the_commit_writes_nothing(opened: Callable[[], RedisStore]) -> None:
    first, second = two_slots()
    store = opened()
    seed(store, first, second)
    before = state(store, first, second)

    def commit_after_a_pause() -> None:
        with store.exclusive(["a:two", "u:kim"], [first, second]):
            # Paused past its lease: another worker holds the second profile now.
            store.client.set(store.lease_key(second), "another-worker", px=COMMIT_LEASE_MS)
            store.commit(merge(first, second))

    with pytest.raises(LeaseLost):
        commit_after_a_pause()
    assert state(store, first, second) == {**before, "leases": [store.lease_key(second).encode()]}


def test_a_commit_cut_by_an_outage_is_finished_when_redis_answers_again(
    opened: Callable[[], RedisStore],
) -> None:
    expected = expected_after_merge(opened)
    first, second = two_slots()
    store = RedisStore(opened().client, prefix=opened().prefix + "cut:", worker="w1")
    seed(store, first, second)
    writer = store._writer  # type: ignore[attr-defined]
    down = True
    cut(store, "_data", lambda run: run >= 2 and down)  # away from the second slot on
    with pytest.raises(StoreUnavailable), store.exclusive(["a:two", "u:kim"], [first, second]):
        store.commit(merge(first, second))
    assert writer.pending  # (finishing at once failed too: Redis still away)
    # The leases the plan still needs were not let go with the failed block.
    assert store.client.get(store.lease_key(second)) is not None
    down = False  # Redis answers again
    assert store.recover()
    assert not writer.pending
    assert state(store, first, second) == expected


def test_a_new_visitors_first_event_cut_short_is_finished_once(
    opened: Callable[[], RedisStore],
) -> None:
    # A new profile is leased by the commit itself (nobody read it under a lease), so a
    # finishing plan can tell its slot was not written yet, and writes it once.
    store = opened()
    stop_at(store, "_data", 2)
    changes = Changes(1, watermark_ms=T0)
    changes.put(profile("p_new", 1))
    changes.link("a:new", "p_new")
    changes.add_transition(SegmentChange("p_new", "browsers", True, T0, 1))
    with pytest.raises(StoreUnavailable), store.exclusive(["a:new"]):
        store.commit(changes)
    restarted = opened()
    assert restarted.resolve("a:new") == "p_new"
    assert restarted.get("p_new") is not None
    assert [c.segment for c in restarted.segment_history("p_new", 10)] == ["browsers"]
    assert restarted.profile_count() == 1
    assert list(restarted.client.scan_iter(match=f"{restarted.prefix}*:lease")) == []


def test_a_commit_after_one_that_failed_half_way_finishes_that_one_first(
    opened: Callable[[], RedisStore],
) -> None:
    # An erasure's or a segment page's commit is not followed by the pipeline's recovery:
    # the next commit finds its plan and finishes it before writing its own.
    expected = expected_after_merge(opened)
    first, second = two_slots()
    store = RedisStore(opened().client, prefix=opened().prefix + "next:", worker="w1")
    seed(store, first, second)
    store = RedisStore(store.client, prefix=store.prefix, worker="w1")
    writer = store._writer  # type: ignore[attr-defined]
    cut(store, "_data", lambda run: run == 2)  # Redis away for the second slot only
    with pytest.raises(StoreUnavailable), store.exclusive(["a:two", "u:kim"], [first, second]):
        store.commit(merge(first, second))
    # (finished at once, Redis answering again: the third call goes through)
    assert store.commits_finished == 1
    assert not writer.pending
    store._closed_after = 0.0  # (the circuit the failure opened: half a second)
    with store.exclusive(["a:one"], [first]):
        later = Changes(3, watermark_ms=T0 + 2)
        later.put(profile(first, 10, user="kim"))
        store.commit(later)
    found = state(store, first, second)
    assert found == {**expected, "profiles": {first: {"Product Viewed": 10}, second: None},
                     "position": 3}  # fmt: skip


def test_a_failed_prepare_lets_go_of_the_leases_at_once(opened: Callable[[], RedisStore]) -> None:
    first, second = two_slots()
    store = opened()
    seed(store, first, second)
    cut(store, "_prepare", lambda run: run == 2)
    with pytest.raises(StoreUnavailable), store.exclusive(["a:two", "u:kim"], [first, second]):
        store.commit(merge(first, second))
    # Not held for the minute a prepared lease holds: another worker may go on at once.
    # (Here Redis answered: only the prepare of the second slot failed.)
    assert list(store.client.scan_iter(match=f"{store.prefix}*:lease")) == []
    assert store.client.hget(store.worker_key, "plan") is None


@pytest.mark.anyio
async def test_a_cluster_gone_is_an_outage_not_a_bug(tmp_path: Path) -> None:
    # With every node down the cluster client raises its own errors (not redis.RedisError:
    # "cannot be connected", "slots not covered"): still an outage. Events are kept and
    # answered 503, decisions fall back, and all of it comes back by itself.
    cluster = PrivateCluster(tmp_path / "cluster")
    cluster.start()
    settings = make_settings(tmp_path / "data", state_store=cluster.url)
    engine = Engine(settings, clock=ManualClock(START))
    try:
        async with client_for(engine) as client:
            assert (await client.post("/v1/events", json=view(0))).json() == {"accepted": 1}
            cluster.stop()
            kept = await client.post("/v1/events", json=view(1))
            assert kept.status_code == 503, kept.text
            decided = await client.post(
                "/v1/decide", json={"anonymousId": "v1", "placements": [{"id": "home_hero"}]}
            )
            assert decided.status_code == 200
            assert decided.json()["decisions"][0]["policy"]["name"] == "fallback"
            for server in cluster.servers:  # the same nodes, empty: the log fills them again
                server.start()
            deadline = time.monotonic() + 30
            while not engine.context.recover(engine.log):
                assert time.monotonic() < deadline, "never recovered"
                await asyncio.sleep(0.2)
            profile = await client.get(
                "/v1/profiles/v1", headers={"Authorization": f"Bearer {settings.secret_key}"}
            )
            assert profile.json()["counts"] == {"Product Viewed": 2}
    finally:
        engine.close()
        cluster.stop()


def view(n: int) -> dict[str, object]:
    return {"type": "track", "event": "Product Viewed", "anonymousId": "v1",
            "messageId": f"m{n}", "properties": {"product_id": f"p{n}"}}  # fmt: skip


def test_a_new_plan_is_not_written_over_one_left_unfinished(
    opened: Callable[[], RedisStore],
) -> None:
    # The half-done plan could not be finished at once (Redis still away) and no tick has
    # come since: the next commit, of other profiles, finishes it before writing its own.
    expected = expected_after_merge(opened)
    first, second = two_slots()
    store = RedisStore(opened().client, prefix=opened().prefix + "over:", worker="w1")
    seed(store, first, second)
    down = True
    cut(store, "_data", lambda run: run >= 2 and down)
    with pytest.raises(StoreUnavailable), store.exclusive(["a:two", "u:kim"], [first, second]):
        store.commit(merge(first, second))
    assert store._writer.pending  # type: ignore[union-attr]
    down = False
    store._closed_after = 0.0  # (the circuit the failure opened: half a second)
    other = Changes(3, watermark_ms=T0 + 2)
    other.put(profile("p_other", 1))
    other.link("a:other", "p_other")
    with store.exclusive(["a:other"]):
        store.commit(other)
    assert store.commits_finished == 1
    assert store.resolve("a:other") == "p_other"
    found = state(store, first, second)
    assert found == {**expected, "count": 2, "position": 3, "anonymous": ["p_other"]}
