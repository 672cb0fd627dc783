"""Workers sharing Redis learn as one (learn/bus.py): a click applied by one worker is
credited to a decision another made; every worker's copy of the policy learns each
reward once; only the maker reports a zero; and a reward reaches the other worker's
policy within 100 ms with the real pump.

Two engines in this process, on the real Redis, each with its own data dir."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from intently import Engine, ManualClock
from intently.act.decide import FOREIGN_GRACE_MS
from intently.act.decisions import DecisionLogReader
from intently.act.policies import BetaThompson, LinUCB
from intently.learn.bus import SEND_AT_MOST, Batch, Decided, Rewarded, Viewed
from services import REDIS_URL, redis_namespace
from support import SECRET_KEY, START, client_for, make_settings

pytestmark = pytest.mark.anyio
BANNERS = {"offers": [{"id": f"hero-{n}", "kind": "banner"} for n in range(3)]}


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[Engine, Engine, ManualClock]]:
    clock = ManualClock(START)
    with redis_namespace() as prefix:
        engines = [
            Engine(
                make_settings(
                    tmp_path / name,
                    state_store=REDIS_URL,
                    redis_prefix=prefix,
                    worker_id=name,
                    holdout_share=0.0,
                ),
                clock=clock,
            )
            for name in ("a", "b")
        ]
        try:
            yield engines[0], engines[1], clock
        finally:
            for engine in engines:
                engine.close()


async def define(engine: Engine, policy: str) -> None:
    placement = {"kind": "offers", "offer_kinds": ["banner"], "count": 1,
                 "policy": {"name": policy, "dimensions": 8}}  # fmt: skip
    async with client_for(engine, SECRET_KEY) as admin:
        assert (await admin.post("/v1/catalog/offers", json=BANNERS)).is_success
        answer = await admin.put("/v1/placements/shared", json=placement)
        assert answer.is_success, answer.text


async def decide(engine: Engine, visitor: str) -> dict[str, Any]:
    async with client_for(engine) as client:
        answer = await client.post(
            "/v1/decide", json={"anonymousId": visitor, "placements": [{"id": "shared"}]}
        )
    decision: dict[str, Any] = answer.json()["decisions"][0]
    assert decision["policy"]["name"] != "fallback", decision
    return decision


async def click(engine: Engine, visitor: str, decision: dict[str, Any]) -> None:
    event = {"type": "track", "event": "Promotion Clicked", "anonymousId": visitor,
             "properties": {"promotion_id": decision["items"][0]["id"],
                            "decision_id": decision["decision_id"]}}  # fmt: skip
    async with client_for(engine) as client:
        assert (await client.post("/v1/events", json=event)).is_success


def policy_of(engine: Engine) -> Any:
    placement = engine.placements.get("shared")
    assert placement is not None
    return engine.decider.policy(placement)


def state(policy: Any, actions: list[str]) -> list[float]:
    """What the policy has learned, comparable across workers."""
    if isinstance(policy, BetaThompson):
        return [x for action in actions for x in policy.posterior(action)]
    assert isinstance(policy, LinUCB)
    x = np.linspace(0.1, 0.8, 8)
    mean, spread = policy._mean_and_spread(actions, x)
    return [*mean, *spread]


def rewards_logged(engine: Engine) -> dict[str, list[float]]:
    engine.decisions.flush()
    reader = DecisionLogReader(engine.settings.decision_log_path)
    try:
        found: dict[str, list[float]] = {}
        for decision_id, value in reader.reward_values():
            found.setdefault(decision_id, []).append(value)
        return found
    finally:
        reader.close()


@pytest.mark.parametrize("policy_name", ["beta-thompson", "linucb"])
async def test_a_click_on_one_worker_credits_and_teaches_the_decision_another_made(
    workers: tuple[Engine, Engine, ManualClock], policy_name: str
) -> None:
    a, b, clock = workers
    assert a.bus is not None
    assert b.bus is not None
    for engine in (a, b):
        await define(engine, policy_name)
    actions = [f"hero-{n}" for n in range(3)]
    decisions = [await decide(a, f"v{n}") for n in range(6)]
    a.bus.pump()
    assert b.bus.pump() == 6  # b knows a's decisions now
    for n in (0, 2, 4):  # half are clicked, on the other worker
        await click(b, f"v{n}", decisions[n])
    rewarded = {decisions[n]["decision_id"] for n in (0, 2, 4)}
    assert set(rewards_logged(b)) == rewarded  # credited where the event was applied
    assert state(policy_of(a), actions) != state(policy_of(b), actions)
    b.bus.pump()
    assert a.bus.pump() == 3
    assert np.allclose(state(policy_of(a), actions), state(policy_of(b), actions))

    # The windows close: the maker reports a zero for each decision that earned nothing
    # (not for the clicked ones), the other worker none; both learn the zeros.
    clock.advance(timedelta(minutes=31))
    a.decider.tick(a.now_ms())
    b.decider.tick(b.now_ms())
    zeros = {d for d, values in rewards_logged(a).items() if values == [0.0]}
    assert zeros == {decisions[n]["decision_id"] for n in (1, 3, 5)}
    assert rewards_logged(b).keys() == rewarded
    a.bus.pump()
    assert b.bus.pump() == 3
    assert np.allclose(state(policy_of(a), actions), state(policy_of(b), actions))
    # Every decision learned once on each worker: nothing pending is left.
    assert not a.decider._pending
    assert not b.decider._pending


async def test_a_reward_reaches_the_other_workers_policy_within_100_ms(
    workers: tuple[Engine, Engine, ManualClock], no_collection_pauses: None
) -> None:
    a, b, _ = workers
    assert a.bus is not None
    assert b.bus is not None
    for engine in (a, b):
        await define(engine, "beta-thompson")
    actions = [f"hero-{n}" for n in range(3)]

    async def pump(engine: Engine) -> None:  # as the app does (api/app.py)
        assert engine.bus is not None
        while True:
            await asyncio.sleep(engine.bus.interval)
            engine.bus.pump()

    pumps = [asyncio.create_task(pump(a)), asyncio.create_task(pump(b))]
    lags: list[float] = []
    try:
        for n in range(20):
            decision = await decide(b, f"w{n}")
            await asyncio.sleep(0.06)  # a learns of the decision
            before = state(policy_of(b), actions)
            clicked = time.perf_counter()  # (so the lag includes the click's own ingest)
            await click(a, f"w{n}", decision)  # a credits it and learns at once
            while state(policy_of(b), actions) == before:
                assert time.perf_counter() - clicked < 1.0, "b never learned the reward"
                await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - clicked)
    finally:
        for task in pumps:
            task.cancel()
    print("lags ms", [round(x * 1000, 1) for x in sorted(lags)])
    assert max(lags) <= 0.100, sorted(lags)
    assert b.bus.lag_ms  # the bus measures it too (publish to apply)


def test_the_bus_is_off_on_the_embedded_store(engine: Engine) -> None:
    assert engine.bus is None
    assert engine.decider.bus is None


async def test_a_foreign_decision_clicked_twice_is_learned_once(
    workers: tuple[Engine, Engine, ManualClock],
) -> None:
    a, b, _ = workers
    assert a.bus is not None
    assert b.bus is not None
    for engine in (a, b):
        await define(engine, "beta-thompson")
    decision = await decide(a, "twice")
    a.bus.pump()
    b.bus.pump()
    await click(b, "twice", decision)
    await click(b, "twice", decision)
    action = decision["items"][0]["id"]
    learned = policy_of(b).posterior(action)
    b.bus.pump()
    a.bus.pump()
    assert policy_of(a).posterior(action) == learned
    alpha, _ = learned
    assert alpha == pytest.approx(2.0)  # the prior's 1, and one success, not two


def test_policy_state_helper_sees_a_change() -> None:
    # (the comparisons above would pass vacuously if `state` ignored learning)
    policy = BetaThompson()
    before = state(policy, ["x"])
    policy.update("x", 1.0, None)
    assert state(policy, ["x"]) != before


async def test_views_applied_by_either_worker_train_both_workers_recommenders(
    workers: tuple[Engine, Engine, ManualClock],
) -> None:
    a, b, _ = workers
    assert a.bus is not None
    assert b.bus is not None
    sent = 0
    for n in range(30):
        engine = a if n % 3 else b
        event = {"type": "track", "event": "Product Viewed", "anonymousId": f"d{n % 4}",
                 "properties": {"product_id": f"p{n % 7}", "category": "running"}}  # fmt: skip
        async with client_for(engine) as client:
            assert (await client.post("/v1/events", json=event)).is_success
        sent += 1
    order = {"type": "track", "event": "Order Completed", "anonymousId": "d1",
             "properties": {"order_id": "o1", "products": [{"product_id": "p1"},
                                                           {"product_id": "p2"}]}}  # fmt: skip
    async with client_for(a) as client:
        assert (await client.post("/v1/events", json=order)).is_success
    assert a.learner.popularity != b.learner.popularity  # each saw only its own
    a.bus.pump()
    b.bus.pump()
    a.bus.pump()
    assert sum(a.learner.popularity.values()) == sent
    assert a.learner.popularity == b.learner.popularity
    # Each worker learns in the order views reached it: a device whose views went to
    # both workers has the same views on each, not always in the same order.
    assert sorted(a.learner.views("d1")) == sorted(b.learner.views("d1"))
    assert len(a.learner.views("d1")) > 3
    votes = a.learner.knn.vote_map(["p1"])
    assert votes  # (not vacuous: the kNN learned)
    assert votes == pytest.approx(b.learner.knn.vote_map(["p1"]))
    bought = b.learner.bought_together.scores(["p1"], 5)
    assert bought == a.learner.bought_together.scores(["p1"], 5)
    assert [item for item, _ in bought] == ["p2"]


async def test_decisions_whose_maker_never_reports_are_not_kept_forever(
    workers: tuple[Engine, Engine, ManualClock],
) -> None:
    """The maker restarted (or crashed) before its decisions closed, so no zero reward
    ever comes for them: the other worker drops them a grace after their window."""
    a, b, clock = workers
    assert a.bus is not None
    assert b.bus is not None
    for engine in (a, b):
        await define(engine, "beta-thompson")
    made = [await decide(a, f"gone-{i}") for i in range(5)]
    a.bus.pump()
    b.bus.pump()
    pending = b.decider._pending
    assert {d["decision_id"] for d in made} <= set(pending)
    window = timedelta(milliseconds=b.decider.attribution.window_ms)
    clock.advance(window + timedelta(seconds=1))
    b.decider.tick(b.now_ms())
    assert {d["decision_id"] for d in made} <= set(pending)  # the maker may still say
    clock.advance(timedelta(milliseconds=FOREIGN_GRACE_MS))
    b.decider.tick(b.now_ms())
    assert not {d["decision_id"] for d in made} & set(pending)


def test_a_backlog_goes_out_in_parts_and_what_failed_is_sent_first_next_time(
    workers: tuple[Engine, Engine, ManualClock],
) -> None:
    a, b, _ = workers
    assert a.bus is not None
    assert b.bus is not None
    before = a.bus.client.xlen(a.bus.key)
    nowhere: list[str | None] = [None] * 4
    views = [Viewed(f"d{i}", i, f"p{i}", None, nowhere) for i in range(2 * SEND_AT_MOST + 7)]
    for view in views:
        a.bus.publish(view)
    a.bus.pump()
    assert a.bus.client.xlen(a.bus.key) - before == 3  # 5,000 + 5,000 + 7
    assert b.bus.pump() == len(views)
    # A send that fails keeps what was not sent, ahead of what was published since.
    a.bus.publish(Viewed("late", 1, "p", None, nowhere))
    outgoing = a.bus.take_outbox()
    a.bus.publish(Viewed("later", 2, "p", None, nowhere))
    a.bus.put_back(outgoing)
    assert [m.device for m in a.bus._outbox] == ["late", "later"]  # type: ignore[attr-defined]
    # They go out numbered in the order published: a snapshot's loader relies on it.
    received = a.bus.client.xlen(a.bus.key)
    a.bus.pump()
    assert a.bus.client.xlen(a.bus.key) == received + 1
    entry = a.bus.client.xrevrange(a.bus.key, count=1)[0][1]
    batch = msgspec.msgpack.decode(entry[b"batch"], type=Batch)
    assert batch.first == len(views)
    assert len(batch.messages) == 2


def test_a_decision_of_an_experiment_variants_own_policy_is_learned_elsewhere(
    workers: tuple[Engine, Engine, ManualClock],
) -> None:
    # A variant with a policy of its own keys it "<experiment>/<variant>/<definition>"
    # (experiments/registry.py): the other worker builds the same policy from it.
    a, b, _ = workers
    assert a.bus is not None
    assert b.bus is not None
    key = b"exp-1/arm-b/" + msgspec.json.encode({"name": "beta-thompson"})
    a.bus.publish(Decided("d-1", "a:v1", "shared", ["hero-1"], 1, "click", [], key, "hero-1", None))
    a.bus.publish(Rewarded("d-1", "shared", "hero-1", 1.0, 2))
    a.bus.pump()
    assert b.bus.pump() == 2
    policy = b.decider._policies[("shared", key)]  # type: ignore[attr-defined]
    assert isinstance(policy, BetaThompson)
    assert policy.posterior("hero-1") == (2.0, 1.0)  # the prior's 1 and the reward's 1
    # And a snapshot of it loads too.
    policies, opened, waiting = b.decider.learned()
    a.decider.restore(policies, opened, waiting)
    assert a.decider._policies[("shared", key)].posterior("hero-1") == (2.0, 1.0)  # type: ignore[attr-defined]
