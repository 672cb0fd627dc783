"""Many workers on one Redis: per-profile order and atomic merges under real concurrency,
a worker that lost its lease cannot overwrite, and a real cluster of two `intently serve`
processes where an event acknowledged by one is seen by the other's very next read.

Against the real Redis of tests/services.py (CI requires it)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from intently import Engine, ManualClock
from intently.act.decisions import DecisionLogReader, DecisionRecord
from intently.clock import SystemClock
from intently.context.stage import ContextStage
from intently.events.enrich import Enricher
from intently.events.referrer import ReferrerClassifier
from intently.events.validate import decode_body
from intently.log.dedupe import MessageIdWindow
from intently.log.eventlog import EventLog
from intently.pipeline import Pipeline
from intently.stores.connect import connect_redis
from intently.stores.protocol import Changes
from intently.stores.redisstate import LeaseLost, RedisStore
from intently.stores.stream import EventStream, StreamEntry
from services import REDIS_URL, redis_namespace
from support import SECRET_KEY as TEST_SECRET_KEY
from support import START, client_for, free_port, make_settings, wait_ready

WRITE_KEY, SECRET_KEY = "wk_cluster", "sk_cluster"


@pytest.fixture
def prefix() -> Iterator[str]:
    with redis_namespace() as name:
        yield name


class Worker:
    """One worker's ingest path, for real: its own event log and pipeline, applying to the
    shared Redis store through its own context stage (and its own connection)."""

    def __init__(self, directory: Path, prefix: str, name: str, url: str = REDIS_URL) -> None:
        self.store = RedisStore(connect_redis(url), prefix=prefix, worker=name)
        self.stage = ContextStage(self.store)
        self.log = EventLog.open(directory / f"{name}.db")
        enricher = Enricher(None, ReferrerClassifier(frozenset()), "truncate")
        dedupe = MessageIdWindow(3_600_000, 100_000)
        self.pipeline = Pipeline(self.log, enricher, SystemClock(), dedupe, sinks=[self.stage])

    def send(self, events: list[dict[str, object]]) -> None:
        async def run() -> None:
            for start in range(0, len(events), 10):
                body = msgspec.json.encode({"batch": events[start : start + 10]})
                await self.pipeline.ingest(decode_body(body).events)

        asyncio.run(run())

    def close(self) -> None:
        self.log.close()
        self.store.close()


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
def test_two_workers_applying_at_once_lose_no_update_and_merge_atomically(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url, prefix = REDIS_URL, f"workers-{tmp_path.name}:"  # (the cluster goes after the run)
    if kind == "redis":
        prefix = request.getfixturevalue("prefix")
    else:
        url = request.getfixturevalue("redis_cluster").url
    # Two workers each apply their own stream of events concurrently; the streams touch
    # the same few visitors, and logins merge anonymous profiles into known ones on
    # either worker. Nothing may be lost: per visitor, the views counted must equal the
    # views sent, whichever worker applied them.
    rng = random.Random(3)
    devices = [f"dev-{n}" for n in range(6)]
    streams: list[list[dict[str, object]]] = [[], []]
    sent: Counter[str] = Counter()
    logins = {"dev-0": "ann", "dev-1": "ann", "dev-2": "bob"}  # ann: two devices, merged
    for n in range(800):
        device = rng.choice(devices)
        worker = rng.randrange(2)
        at = START.timestamp() + n
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))  # in order
        if n > 100 and device in logins and rng.random() < 0.05:
            event = {"type": "identify", "anonymousId": device, "userId": logins[device],
                     "timestamp": stamp}  # fmt: skip
        else:
            event = {"type": "track", "event": "Product Viewed", "anonymousId": device,
                     "properties": {"product_id": "x", "price": 5}, "timestamp": stamp}  # fmt: skip
            sent[device] += 1
        streams[worker].append(event)
    workers = [Worker(tmp_path, prefix, f"w{n}", url) for n in range(2)]
    stores = [worker.store for worker in workers]
    stages = [worker.stage for worker in workers]
    failures: list[BaseException] = []

    def run(worker: Worker, events: list[dict[str, object]]) -> None:
        try:
            worker.send(events)
        except BaseException as error:  # reported by the test below
            failures.append(error)

    threads = [
        threading.Thread(target=run, args=(worker, stream))
        for worker, stream in zip(workers, streams, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    try:
        assert not failures, failures
        assert stages[0].failed == stages[1].failed == 0
        reader = stores[0]
        views: Counter[str] = Counter()
        for profile in reader.profiles():
            for device in profile.anonymous_ids:
                assert reader.resolve(f"a:{device}") == profile.id
            views_here = profile.counts.get("Product Viewed", 0)
            owners = [d for d in devices if d in profile.anonymous_ids]
            assert owners, profile
            views[",".join(sorted(owners))] += views_here
        merged = stages[0].identity.merges + stages[1].identity.merges
        assert merged >= 1  # ann's second device was merged on some worker
        ann = reader.get(reader.resolve("u:ann") or "")
        assert ann is not None
        assert {"dev-0", "dev-1"} <= set(ann.anonymous_ids)
        expected = Counter[str]()
        for key in views:
            expected[key] = sum(sent[d] for d in key.split(","))
        assert views == expected
        assert reader.profile_count() == len(list(reader.profiles()))
        # Contention happened and was resolved by waiting, never by overwriting.
        assert stores[0].lease_retries + stores[1].lease_retries > 0
        assert all(store.cluster == (kind == "redis-cluster") for store in stores)
    finally:
        for worker in workers:
            worker.close()


def test_a_worker_past_its_lease_cannot_overwrite_a_newer_state(prefix: str) -> None:
    slow = RedisStore(connect_redis(REDIS_URL), prefix=prefix, worker="slow", lease_ms=100)
    fast = RedisStore(connect_redis(REDIS_URL), prefix=prefix, worker="fast")
    from intently.context.profile import ProfileRules
    from intently.context.settings import ContextSettings

    rules = ProfileRules(ContextSettings())
    try:
        with slow.exclusive(["a:dev"]):
            stale = rules.new("p_dev", 1_000)
            time.sleep(0.25)  # a pause longer than the lease
            with fast.exclusive(["a:dev"]):  # the lease ran out: the other worker takes it
                fresh = rules.new("p_dev", 2_000)
                changes = Changes(1)
                changes.put(fresh)
                changes.link("a:dev", "p_dev")
                fast.commit(changes)
            changes = Changes(1)
            changes.put(stale)
            with pytest.raises(LeaseLost):
                slow.commit(changes)
        stored = fast.get("p_dev")
        assert stored is not None
        assert stored.first_ms == 2_000
    finally:
        slow.close()
        fast.close()


# -- a real cluster: two `intently serve` processes on one Redis ----------------------------


def serve(data_dir: Path, port: int, prefix: str, **settings: str) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("INTENTLY_")}
    environment.update(
        INTENTLY_STORE=REDIS_URL, INTENTLY_REDIS_PREFIX=prefix, INTENTLY_WRITE_KEY=WRITE_KEY,
        INTENTLY_SECRET_KEY=SECRET_KEY, INTENTLY_GEOIP_DB="off",
    )  # fmt: skip
    environment.update({f"INTENTLY_{name.upper()}": value for name, value in settings.items()})
    return subprocess.Popen(
        [sys.executable, "-m", "intently", "serve", "--port", str(port), "--data-dir",
         str(data_dir), "--log-level", "warning"],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def call(port: int, path: str, body: object = None, key: str = WRITE_KEY) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


@pytest.mark.slow
def test_an_event_acknowledged_by_one_worker_is_read_by_the_other_at_once(
    tmp_path: Path, prefix: str
) -> None:
    ports = [free_port(), free_port()]
    workers = [serve(tmp_path / f"w{n}", port, prefix) for n, port in enumerate(ports)]
    try:
        for port, process in zip(ports, workers, strict=True):
            wait_ready(port, process)
        a, b = ports
        # The catalog is each worker's own until it moves to PostgreSQL: both get the
        # banner, eligible once running is among the session's top categories.
        banner = {"offers": [{"id": "hero-running", "kind": "banner",
                              "eligibility": '"running" in session.top_categories'}]}  # fmt: skip
        for port in ports:
            call(port, "/v1/catalog/offers", banner, key=SECRET_KEY)
        ask = {"anonymousId": "visitor", "placements": [{"id": "home_hero"}]}
        before = call(b, "/v1/decide", ask)["decisions"][0]  # type: ignore[index]
        assert before["items"] == []
        for step in range(20):
            # Alternate which worker writes: each read on the other follows at once.
            writer, reader = (a, b) if step % 2 == 0 else (b, a)
            event = {"type": "track", "event": "Product Viewed", "anonymousId": "visitor",
                     "properties": {"product_id": f"p{step}", "category": "running",
                                    "price": 10 + step}}  # fmt: skip
            assert call(writer, "/v1/events", event) == {"accepted": 1}
            profile = call(reader, "/v1/profiles/visitor", key=SECRET_KEY)
            assert profile["counts"] == {"Product Viewed": step + 1}
            session = profile["session"]
            assert isinstance(session, dict)
            assert f"p{step}" in session["recent_products"]
            if step == 0:  # the very next decide, on the other worker, uses the event
                after = call(reader, "/v1/decide", ask)["decisions"][0]  # type: ignore[index]
                assert [item["id"] for item in after["items"]] == ["hero-running"]
        # A login on one worker merges; the other sees one person under both ids.
        call(b, "/v1/events", {"type": "track", "event": "Product Viewed", "userId": "kim",
                               "properties": {"product_id": "k"}})  # fmt: skip
        call(a, "/v1/events", {"type": "identify", "anonymousId": "visitor", "userId": "kim"})
        by_user = call(b, "/v1/profiles/kim", key=SECRET_KEY)
        by_device = call(b, "/v1/profiles/visitor", key=SECRET_KEY)
        assert by_user["id"] == by_device["id"]
        counts = by_user["counts"]
        assert isinstance(counts, dict)
        assert counts["Product Viewed"] == 21
    finally:
        for process in workers:
            process.terminate()
        for process in workers:
            try:
                process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def stop(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.mark.slow
def test_a_worker_started_later_decides_with_what_the_running_one_learned(
    tmp_path: Path, prefix: str
) -> None:
    # Snapshots every 0.5 s, and windows of 1.2 s, so zeros are learned within the test.
    fast = {"learning_snapshot_seconds": "0.5", "attribution_window_minutes": "0.02",
            "holdout_share": "0"}  # fmt: skip
    banners = {"offers": [{"id": f"hero-{n}", "kind": "banner"} for n in range(3)]}
    placement = {"kind": "offers", "offer_kinds": ["banner"], "count": 1,
                 "policy": {"name": "epsilon-greedy", "epsilon": 0.1}}  # fmt: skip

    def define(port: int) -> None:
        call(port, "/v1/catalog/offers", banners, key=SECRET_KEY)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/placements/hero", method="PUT",
            data=json.dumps(placement).encode(),
            headers={"Authorization": f"Bearer {SECRET_KEY}", "Content-Type": "application/json"},
        )  # fmt: skip
        urllib.request.urlopen(request, timeout=10).read()

    def decide(port: int, visitor: str) -> tuple[str, float]:
        ask = {"anonymousId": visitor, "placements": [{"id": "hero"}]}
        decision = call(port, "/v1/decide", ask)["decisions"][0]  # type: ignore[index]
        return decision["items"][0]["id"], decision["items"][0]["propensity"]  # type: ignore[no-any-return]

    # Best: 0.9 + 0.1 / 3; any other: 0.1 / 3; all untried (nothing learned): 1 / 3 each.
    best, other = 0.9 + 0.1 / 3, 0.1 / 3
    processes: list[subprocess.Popen[str]] = []
    try:
        a = free_port()
        processes.append(serve(tmp_path / "a", a, prefix, **fast))
        wait_ready(a, processes[0])
        define(a)
        for n in range(30):  # hero-1 is clicked whenever shown, the others never
            ask = {"anonymousId": f"t{n}", "placements": [{"id": "hero"}]}
            decision = call(a, "/v1/decide", ask)["decisions"][0]  # type: ignore[index]
            shown = decision["items"][0]["id"]
            if shown == "hero-1":
                properties = {"promotion_id": shown, "decision_id": decision["decision_id"]}
                click = {"type": "track", "event": "Promotion Clicked",
                         "anonymousId": f"t{n}", "properties": properties}  # fmt: skip
                call(a, "/v1/events", click)
        time.sleep(2.5)  # the windows close (zeros learned), snapshots are written
        learned = [decide(a, f"x{n}") for n in range(30)]
        for item, propensity in learned:
            assert propensity == pytest.approx(best if item == "hero-1" else other), item

        b = free_port()
        processes.append(serve(tmp_path / "b", b, prefix, **fast))
        wait_ready(b, processes[1])
        define(b)
        started_later = [decide(b, f"y{n}") for n in range(30)]
        for item, propensity in started_later:
            assert propensity == pytest.approx(best if item == "hero-1" else other), item
        assert any(item == "hero-1" for item, _ in started_later)
    finally:
        stop(processes)


def stream_position(entry: StreamEntry) -> tuple[int, int]:
    milliseconds, number = entry.id.split("-")
    return int(milliseconds), int(number)


def test_the_event_stream_holds_every_applied_event_once_in_each_workers_order(
    prefix: str, tmp_path: Path
) -> None:
    workers = [Worker(tmp_path, prefix, f"w{n}") for n in range(2)]
    stream = EventStream(connect_redis(REDIS_URL), prefix=prefix)
    try:
        stream.join("exporter")
        sent: dict[str, list[str]] = {"w0": [], "w1": []}
        for round_ in range(3):
            for n, worker in enumerate(workers):
                events = [
                    {"type": "track", "event": "Product Viewed", "anonymousId": f"dev-{i % 4}",
                     "messageId": f"w{n}-{round_}-{i}", "properties": {"product_id": "x"}}
                    for i in range(25)
                ]  # fmt: skip
                worker.send(events)
                sent[f"w{n}"].extend(str(e["messageId"]) for e in events)
        # Two consumers of one group share the entries; one dies before acknowledging.
        first = stream.read("exporter", "c1", count=40, block_ms=None)
        assert len(first) == 40
        survivor: list[StreamEntry] = []
        while batch := stream.read("exporter", "c2", count=50, block_ms=None):
            survivor.extend(batch)
            stream.ack("exporter", [entry.id for entry in batch])
        assert len(first) + len(survivor) == 150
        assert stream.pending("exporter") == 40  # c1's, never acknowledged
        # c1's entries go to c2 once they have been idle long enough.
        time.sleep(0.05)
        claimed = stream.read("exporter", "c2", count=100, block_ms=None, claim_idle_ms=20)
        assert sorted(e.id for e in claimed) == sorted(e.id for e in first)
        stream.ack("exporter", [entry.id for entry in claimed])
        assert stream.pending("exporter") == 0
        in_order = sorted(first + survivor, key=stream_position)
        for name, ids in sent.items():
            mine = [e for e in in_order if e.worker == name]
            assert [e.event["event"]["messageId"] for e in mine] == ids
            assert [e.seq for e in mine] == sorted(e.seq for e in mine)
    finally:
        stream.client.close()
        for worker in workers:
            worker.close()


@pytest.mark.anyio
async def test_an_erasure_on_one_worker_reaches_every_workers_own_files(
    prefix: str, tmp_path: Path
) -> None:
    # Each worker keeps its own event and decision logs; the person's events went to
    # both. Erasing on one must empty the other's files too: at its next tick if it is
    # running, at its start if it was away.
    def open_worker(name: str) -> Engine:
        settings = make_settings(tmp_path / name, state_store=REDIS_URL, redis_prefix=prefix,
                                 worker_id=name)  # fmt: skip
        return Engine(settings, clock=ManualClock(START))

    def held(engine: Engine, person: str) -> int:
        return len(engine.log.rows_of([person], []))

    engines = {name: open_worker(name) for name in ("a", "b", "c")}
    try:
        for n, engine in enumerate(engines.values()):
            async with client_for(engine) as client:
                batch = [{"type": "track", "event": "Product Viewed", "anonymousId": person,
                          "messageId": f"{person}-{n}", "properties": {"product_id": "x"}}
                         for person in ("zed", "amy")]  # fmt: skip
                assert (await client.post("/v1/events", json={"batch": batch})).is_success
                decided = await client.post(
                    "/v1/decide", json={"anonymousId": "zed", "placements": [{"id": "home_hero"}]}
                )
                assert decided.is_success
        engines["c"].close()  # away during the erasure
        async with client_for(engines["a"], TEST_SECRET_KEY) as admin:
            assert (await admin.delete("/v1/profiles/zed")).status_code == 200
        assert held(engines["a"], "zed") == 0
        assert held(engines["b"], "zed") == 1  # not yet: at its next tick
        assert engines["b"].apply_erasures() == 1
        assert held(engines["b"], "zed") == 0
        assert held(engines["b"], "amy") == 1  # nobody else
        engines["b"].decisions.flush()
        assert not [d for d in read_decisions(tmp_path / "b") if d.visitor == "a:zed"]
        assert engines["b"].apply_erasures() == 0  # once only
        engines["c"] = open_worker("c")  # back: carried out at start
        assert held(engines["c"], "zed") == 0
        assert held(engines["c"], "amy") == 1
        assert engines["c"].context.lookup("zed") is None
    finally:
        for engine in engines.values():
            engine.close()


def read_decisions(data_dir: Path) -> list[DecisionRecord]:
    reader = DecisionLogReader(data_dir / "decisions.db")
    try:
        return list(reader.decisions())
    finally:
        reader.close()


def test_a_shared_stores_contention_and_failures_are_metrics(prefix: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "m", state_store=REDIS_URL, redis_prefix=prefix)
    engine = Engine(settings, clock=ManualClock(START))
    try:
        assert isinstance(engine.store, RedisStore)
        engine.store.lease_retries = 7
        scraped = engine.metrics.render().decode()
        assert "intently_redis_lease_retries 7.0" in scraped
        assert "intently_redis_failures 0.0" in scraped
    finally:
        engine.close()
