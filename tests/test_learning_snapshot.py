"""A worker that starts later begins with what the others learned (learn/snapshot.py):
the policies' parameters, the recommenders' statistics and the open decisions, from
the snapshot in Redis plus the learning stream since, not only from its own logs.

Engines in this process on the real Redis, each with its own data dir."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from intently import Engine, ManualClock
from intently.api import app as app_module
from intently.learn import snapshot as snapshot_module
from intently.stores.erasures import Erasure
from services import REDIS_URL, redis_namespace
from support import START, client_for, make_settings
from test_learning_bus import click, decide, define, policy_of, rewards_logged, state

pytestmark = pytest.mark.anyio
ACTIONS = [f"hero-{n}" for n in range(3)]


class Workers:
    """Engines sharing one Redis prefix, started when a test asks."""

    def __init__(self, root: Path, prefix: str) -> None:
        self.root, self.prefix = root, prefix
        self.clock = ManualClock(START)
        self.started: list[Engine] = []

    def start(self, name: str, **overrides: Any) -> Engine:
        settings = make_settings(self.root / name, state_store=REDIS_URL,
                                 redis_prefix=self.prefix, worker_id=name,
                                 holdout_share=0.0, **overrides)  # fmt: skip
        engine = Engine(settings, clock=self.clock)
        self.started.append(engine)
        return engine

    def pump_all(self) -> None:
        """Until nobody has anything more to send or read."""
        for _ in range(5):
            moved = 0
            for engine in self.started:
                assert engine.bus is not None
                outbox = len(engine.bus._outbox)  # type: ignore[attr-defined]
                moved += outbox + engine.bus.pump()
            if not moved:
                return
        raise AssertionError("the learning stream never went quiet")


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    with redis_namespace() as prefix:
        started = Workers(tmp_path, prefix)
        try:
            yield started
        finally:
            for engine in started.started:
                engine.close()


def snapshot_now(engine: Engine) -> bool:
    """What the app's snapshot task does when it is this worker's turn."""
    assert engine.erasures is not None
    assert engine.snapshots is not None
    erased = engine.erasures.carried_out_through()
    body = engine.learned_snapshot(erased)
    assert body is not None
    return engine.snapshots.write(body, erased)


async def view(engine: Engine, device: str, product: str) -> None:
    event = {"type": "track", "event": "Product Viewed", "anonymousId": device,
             "properties": {"product_id": product, "category": "running"}}  # fmt: skip
    async with client_for(engine) as client:
        assert (await client.post("/v1/events", json=event)).is_success


async def test_a_worker_started_later_has_what_the_others_learned(workers: Workers) -> None:
    a, b = workers.start("a"), workers.start("b")
    for engine in (a, b):
        await define(engine, "linucb")
    decisions = {n: await decide(a, f"v{n}") for n in range(12)}
    for n in range(20):
        await view(a if n % 2 else b, f"d{n % 5}", f"p{n % 6}")
    workers.pump_all()  # b knows a's decisions, a and b each other's views
    for n in (1, 3, 5):
        await click(a, f"v{n}", decisions[n])
    await click(b, "v7", decisions[7])
    workers.pump_all()

    # The snapshot is taken while a's reward for v0 waits in its outbox: it holds it,
    # and the loader must not learn it a second time when it reaches the stream.
    await click(a, "v0", decisions[0])
    await view(a, "d8", "p2")
    assert snapshot_now(a)
    # After it: more rewards on both workers, which the loader reads from the stream.
    await click(a, "v2", decisions[2])
    await click(b, "v4", decisions[4])
    await view(b, "d9", "p1")
    workers.pump_all()

    c = workers.start("c")
    assert c.started_from is not None
    await define(c, "linucb")
    workers.pump_all()
    learned = state(policy_of(a), ACTIONS)
    assert np.allclose(state(policy_of(c), ACTIONS), learned)
    assert np.allclose(state(policy_of(b), ACTIONS), learned)
    assert c.learner.popularity == a.learner.popularity == b.learner.popularity
    assert sum(c.learner.popularity.values()) == 22
    votes = a.learner.knn.vote_map(["p1"])
    assert votes
    assert c.learner.knn.vote_map(["p1"]) == pytest.approx(votes)

    # A decision a made before c started, clicked on c: credited there, learned by all.
    await click(c, "v9", decisions[9])
    assert decisions[9]["decision_id"] in rewards_logged(c)
    workers.pump_all()
    after = state(policy_of(a), ACTIONS)
    assert not np.allclose(after, learned)
    assert np.allclose(state(policy_of(c), ACTIONS), after)
    assert np.allclose(state(policy_of(b), ACTIONS), after)

    # Without the snapshot a new worker knows only its own (empty) logs: the check
    # above is not vacuous.
    assert c.snapshots is not None
    c.snapshots.client.delete(c.snapshots.key)
    d = workers.start("d")
    assert d.started_from is None
    await define(d, "linucb")
    assert not np.allclose(state(policy_of(d), ACTIONS), after)
    assert not d.learner.popularity


async def test_a_restarted_worker_learns_its_own_earlier_messages_from_the_stream(
    workers: Workers,
) -> None:
    a = workers.start("a")
    await define(a, "beta-thompson")
    decisions = {n: await decide(a, f"v{n}") for n in range(4)}
    workers.pump_all()
    assert snapshot_now(a)
    await click(a, "v1", decisions[1])  # after the snapshot, and a stops
    workers.pump_all()
    learned = state(policy_of(a), ACTIONS)
    a.close()
    workers.started.remove(a)

    again = workers.start("a")  # the same worker id, a new process
    assert again.started_from is not None
    await define(again, "beta-thompson")
    workers.pump_all()
    assert state(policy_of(again), ACTIONS) == learned


async def test_an_erased_person_does_not_come_back_from_the_snapshot(workers: Workers) -> None:
    a, b = workers.start("a"), workers.start("b")
    await view(a, "gone", "p1")
    await view(a, "gone", "p2")
    await view(a, "stays", "p3")
    workers.pump_all()
    assert snapshot_now(a)
    assert a.snapshots is not None
    assert b.erasures is not None
    assert b"a:gone" in a.snapshots.client.get(a.snapshots.key)

    # The announcement deletes the snapshot; one made by a worker that has not carried
    # it out yet is refused; once carried out, the next one is written without them.
    erasure = Erasure(["gone"], [], ["a:gone"], [], [])
    a.forget_in_memory(erasure)
    assert a.erasures is not None
    a.erasures.announce(erasure)
    assert a.snapshots.client.get(a.snapshots.key) is None
    assert not snapshot_now(b)
    assert b.learner.views("gone")
    assert b.apply_erasures() == 1
    assert not b.learner.views("gone")
    assert snapshot_now(b)
    body = a.snapshots.client.get(a.snapshots.key)
    assert b"a:gone" not in body
    assert b"a:stays" in body

    # A snapshot older than an announcement (its deletion lost: a failover) is loaded
    # with the later erasures carried out in memory at once. (The announcer writes one
    # once its next tick has marked its own announcement done.)
    assert not snapshot_now(a)
    assert a.apply_erasures() == 0
    assert snapshot_now(a)
    late = Erasure(["stays"], [], ["a:stays"], [], [])
    fields = {"worker": "elsewhere", "erasure": msgspec.json.encode(late)}
    a.erasures.client.xadd(a.erasures.key, fields)
    # A worker that had carried it out before it restarted, say: its start-up does not
    # carry it out again (done), so the snapshot's own check is what keeps it out.
    assert b.apply_erasures() == 1
    b.close()
    workers.started.remove(b)
    again = workers.start("b")
    assert again.started_from is not None
    assert not again.learner.views("stays")
    assert not again.learner.views("gone")
    assert again.learner.popularity["p1"] == 1  # what they taught stays, without them
    assert sum(again.learner.popularity.values()) == 3


async def test_a_snapshot_past_the_stream_or_unreadable_is_not_used(workers: Workers) -> None:
    a = workers.start("a")
    await view(a, "d1", "p1")
    workers.pump_all()
    assert a.snapshots is not None
    body = a.learned_snapshot(None)
    assert body is not None
    snapshot = snapshot_module.decode(body)
    # Its point trimmed from the stream: what came after is unknown, so it is not used.
    snapshot.through = "1-0"
    a.snapshots.client.set(a.snapshots.key, snapshot_module.encode(snapshot))
    late = workers.start("b")
    assert late.started_from is None
    for junk in (b"junk", snapshot_module.encode(snapshot)[:-5]):
        a.snapshots.client.set(a.snapshots.key, junk)
        assert workers.start(f"w{len(workers.started)}").started_from is None


async def test_the_app_writes_one_snapshot_per_turn(
    workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    often = {"learning_snapshot_seconds": 0.2}
    a, b = workers.start("a", **often), workers.start("b", **often)
    await view(a, "d1", "p1")
    workers.pump_all()
    assert a.snapshots is not None
    writes: list[str] = []
    for engine in (a, b):
        assert engine.snapshots is not None
        write = engine.snapshots.write

        def counted(body: bytes, erased: str | None, name: str = engine.settings.worker,
                    write: Any = write) -> bool:  # fmt: skip
            writes.append(name)
            return bool(write(body, erased))

        monkeypatch.setattr(engine.snapshots, "write", counted)
    tasks = [asyncio.create_task(app_module._snapshot_learning(e)) for e in (a, b)]
    try:
        await asyncio.sleep(1.0)
    finally:
        for task in tasks:
            task.cancel()
    assert a.snapshots.client.get(a.snapshots.key) is not None
    # One turn per 0.2 s in all (each worker tries every 0.1-0.3 s): 1 s gives 3-6.
    assert 2 <= len(writes) <= 6, writes
