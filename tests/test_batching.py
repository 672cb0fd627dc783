"""Decides run back to back: each caller gets its own result, in order, and a failing or
abandoned call touches no other (api/batching.py)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

import pytest

from intently import Engine
from intently.api.batching import Batcher
from support import SECRET_KEY, client_for
from test_decide import decide, decide_body, load_catalog, view

pytestmark = pytest.mark.anyio


def recorder(ran: list[int], value: int) -> Callable[[], int]:
    def call() -> int:
        ran.append(value)
        return value * 10

    return call


async def test_calls_handed_in_together_run_back_to_back_in_order() -> None:
    sizes: list[int] = []
    batcher: Batcher[int] = Batcher(on_batch=sizes.append)
    ran: list[int] = []
    results = await asyncio.gather(*(batcher.run(recorder(ran, i)) for i in range(6)))
    assert results == [i * 10 for i in range(6)]
    assert ran == list(range(6))
    assert sizes == [6]  # one pass of the loop ran them all
    # Later calls start a new batch.
    assert await batcher.run(recorder(ran, 7)) == 70
    assert sizes == [6, 1]


async def test_a_long_queue_runs_in_batches_and_each_batch_answers_before_the_next() -> None:
    sizes: list[int] = []
    batcher: Batcher[int] = Batcher(max_batch=2, on_batch=sizes.append)
    ran: list[int] = []

    async def call_and_then_note(i: int) -> int:
        result = await batcher.run(recorder(ran, i))
        if i == 0:  # the first batch's callers resume before the next batch runs
            ran.append(-1)
        return result

    results = await asyncio.gather(*(call_and_then_note(i) for i in range(5)))
    assert results == [0, 10, 20, 30, 40]
    assert sizes == [2, 2, 1]
    assert [x for x in ran if x >= 0] == [0, 1, 2, 3, 4]
    assert ran.index(-1) < ran.index(2)


async def test_a_failing_call_fails_only_its_own_caller() -> None:
    batcher: Batcher[int] = Batcher()

    def fails() -> int:
        raise RuntimeError("this decide broke")

    ran: list[int] = []
    results = await asyncio.gather(
        batcher.run(recorder(ran, 1)), batcher.run(fails), batcher.run(recorder(ran, 3)),
        return_exceptions=True,
    )  # fmt: skip
    assert results[0] == 10
    assert results[2] == 30
    assert isinstance(results[1], RuntimeError)
    assert ran == [1, 3]
    assert await batcher.run(recorder(ran, 4)) == 40  # the queue goes on


async def test_an_abandoned_call_is_never_run() -> None:
    sizes: list[int] = []
    batcher: Batcher[int] = Batcher(on_batch=sizes.append)
    ran: list[int] = []
    first = asyncio.ensure_future(batcher.run(recorder(ran, 1)))
    gone = asyncio.ensure_future(batcher.run(recorder(ran, 2)))
    await asyncio.sleep(0)  # both are waiting in the queue
    gone.cancel()  # the client disconnected
    assert await first == 10
    assert gone.cancelled()
    assert ran == [1]
    assert sizes == [1]


def test_a_batch_left_on_a_closed_loop_does_not_hold_up_another_loop() -> None:
    batcher: Batcher[int] = Batcher()
    ran: list[int] = []
    old = asyncio.new_event_loop()
    stranded = old.create_task(batcher.run(recorder(ran, 1)))
    old.call_soon(old.stop)
    old.run_forever()  # one pass: the call is queued and its batch scheduled, not run
    old.close()
    assert not stranded.done()
    assert ran == []
    assert asyncio.run(batcher.run(recorder(ran, 2))) == 20
    assert ran == [2]  # the stranded call was dropped, never run


def test_after_a_closed_loop_the_batcher_batches_on_the_new_one() -> None:
    sizes: list[int] = []
    batcher: Batcher[int] = Batcher(on_batch=sizes.append)
    old = asyncio.new_event_loop()
    stranded = old.create_task(batcher.run(lambda: 1))
    old.call_soon(old.stop)
    old.run_forever()
    old.close()

    async def together() -> list[int]:
        return list(await asyncio.gather(*(batcher.run(lambda i=i: i) for i in range(4))))

    assert asyncio.run(together()) == [0, 1, 2, 3]
    assert sizes == [4]  # batched again, with nothing left of the old loop's queue
    assert not stranded.done()  # dropped with its loop, never run


def test_what_escapes_a_batch_leaves_none_of_its_callers_waiting() -> None:
    batcher: Batcher[int] = Batcher()
    ran: list[int] = []

    def interrupted() -> int:
        raise KeyboardInterrupt

    loop = asyncio.new_event_loop()
    try:
        tasks = [loop.create_task(batcher.run(call))
                 for call in (recorder(ran, 1), interrupted, recorder(ran, 3))]  # fmt: skip
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(asyncio.sleep(0))  # the callers see what became of them
        assert tasks[0].result() == 10
        assert tasks[1].cancelled()
        assert tasks[2].cancelled()
        assert ran == [1]
        # The batcher goes on serving.
        assert loop.run_until_complete(batcher.run(recorder(ran, 4))) == 40
    finally:
        loop.close()


async def test_a_call_raising_stop_iteration_fails_its_caller_with_a_runtime_error() -> None:
    batcher: Batcher[int] = Batcher()

    def stops() -> int:
        raise StopIteration

    results = await asyncio.gather(batcher.run(stops), batcher.run(lambda: 2),
                                   return_exceptions=True)  # fmt: skip
    assert isinstance(results[0], RuntimeError)
    assert "StopIteration" in str(results[0])
    assert results[1] == 2


async def test_concurrent_decides_each_answer_their_own_visitor(engine: Engine) -> None:
    await load_catalog(engine)
    async with client_for(engine) as client:
        for visitor in range(8):
            await view(client, f"v{visitor}", f"p{visitor}")
        answers = await asyncio.gather(
            *(decide(client, decide_body(f"v{visitor}", product_id=f"p{visitor}"))
              for visitor in range(8))
        )  # fmt: skip
        metrics = (await client.get("/metrics")).text
    open_decisions = engine.decider.attribution.decisions
    for visitor, decisions in enumerate(answers):
        recommended = [item["id"] for item in decisions["pdp_recs"]["items"]]
        assert f"p{visitor}" not in recommended  # the product in view is its own
        for decision in decisions.values():
            assert open_decisions[decision["decision_id"]].visitor == f"a:v{visitor}"
    count = re.search(r"^intently_decide_batch_size_count ([\d.]+)$", metrics, re.MULTILINE)
    total = re.search(r"^intently_decide_batch_size_sum ([\d.]+)$", metrics, re.MULTILINE)
    assert count is not None
    assert total is not None
    assert float(total.group(1)) == 8  # every decide ran once
    assert float(count.group(1)) < 8  # and some of them together


async def test_a_decide_after_an_acknowledged_event_sees_it_among_others(
    engine: Engine,
) -> None:
    """Six visitors at once, each viewing then deciding, again and again: decides queued
    alongside others never miss their own visitor's acknowledged event."""
    await load_catalog(engine)
    async with client_for(engine) as client, client_for(engine, SECRET_KEY) as admin:

        async def view_then_decide(visitor: int, sent: int) -> None:
            product = f"p{(visitor + sent) % 20}"
            await view(client, f"w{visitor}", product)
            body = {"anonymousId": f"w{visitor}", "placements": [{"id": "pdp_recs"}],
                    "explain": True, "context": {"product_id": product}}  # fmt: skip
            features = (await decide(admin, body))["pdp_recs"]["features"]
            assert features["session_events"] == sent
            assert features["last_product"] == product

        for sent in range(1, 21):
            await asyncio.gather(*(view_then_decide(v, sent) for v in range(6)))


async def test_server_timing_tells_own_time_from_the_wait_for_others(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each decide made to take 20 ms more: a request's own time holds its own 20 ms and
    not the others'; what it waited while others' decides ran is its queue time."""
    await load_catalog(engine)
    slow_ms = 20.0
    decide_now = engine.decider.decide

    def slow_decide(*args: object, **kwargs: object) -> object:
        time.sleep(slow_ms / 1000)
        return decide_now(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine.decider, "decide", slow_decide)
    async with client_for(engine) as client:
        answers = await asyncio.gather(
            *(client.post("/v1/decide", json=decide_body(f"t{i}")) for i in range(4))
        )
        metrics = (await client.get("/metrics")).text
    own, waits = [], []
    for answer in answers:
        timing = answer.headers["server-timing"]
        found = dict(re.findall(r"(\w+);dur=([\d.]+)", timing))
        assert set(found) == {"decide", "queue"}, timing
        own.append(float(found["decide"]))
        waits.append(float(found["queue"]))
    assert all(slow_ms <= ms < 2 * slow_ms for ms in own), own  # its own, not the others'
    batches = re.search(r"^intently_decide_batch_size_count ([\d.]+)$", metrics, re.MULTILINE)
    assert batches is not None
    if float(batches.group(1)) < 4:  # two or more shared a batch: one waited for another
        assert max(waits) >= slow_ms, waits
    # In one batch, what one request waits for is the others' decides: never more than
    # the whole batch took, measured from the slowest side (all four, one after another).
    assert all(wait < 4 * 2 * slow_ms for wait in waits), waits
