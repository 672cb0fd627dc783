"""Context benchmark: the pipeline's state step (identity -> session and profile ->
segments -> store commit) in process, on real e-commerce sessions.

Replays `../shared/data/rsc15-100k` (YOOCHOOSE click sessions, train + test: 83,846
clicks in 21,210 sessions) as `Product Viewed` events through `ContextStage.apply_many`,
the step every live or replayed event takes after the log, with 50 segments defined.
Records are built before timing: what is timed is the step, on one thread (one core).

Side by side, in the same run (each measurement in a fresh interpreter):
- ceiling: the least per-event Python work a state step can do (look up the visitor in a
  dict and bump a counter), over the same records;
- the step with no segment defined, and with 50.

Then memory: 100,000 live sessions (the same sessions, copied under new visitor ids with
their times packed into 20 minutes so none idles out), measured with tracemalloc as the
memory the store holds for them (profiles with their live session, identity links and
the expiry indexes), divided by the number of live sessions.

    python bench/context.py [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from intently.context.settings import ContextSettings
from intently.context.stage import ContextStage
from intently.events.enrich import Enrichment
from intently.events.record import EventRecord
from intently.events.referrer import Referrer
from intently.events.schema import TrackEvent
from intently.segments.fields import FieldCatalog
from intently.segments.membership import Membership
from intently.segments.registry import SegmentRegistry, SegmentSpec
from intently.stores.embedded import EmbeddedStore

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "rsc15-100k"
FILES = ("yoochoose-clicks-100k_train_full.txt", "yoochoose-clicks-100k_test.txt")

# 50 segments over every topic, as a shop would write them.
SEGMENTS = [
    "session.cart.value > 100",
    'session.cart.value > 50 and geo.country == "DE"',
    '"running" in session.top_categories',
    "profile.purchases.count == 0 and session.exit_intent",
    "session.product_views >= 3",
    "session.product_views >= 10",
    "session.pages > 5",
    "session.time_on_site > 300",
    "session.time_on_site > 1800",
    'session.engagement == "rapid"',
    'session.engagement == "deep"',
    "session.back_and_forth > 0",
    "session.repeated_searches > 1",
    "session.rage_clicks > 0",
    "session.long_help_stays > 0",
    "session.max_scroll >= 75",
    'session.checkout.stage == "checkout"',
    'session.checkout.stage == "payment"',
    "session.cart.count >= 3",
    "session.price.median > 100",
    "session.price.max - session.price.min > 50",
    'session.source.medium == "search"',
    'session.source.medium == "social"',
    'session.source.medium in ["email", "paid"]',
    'device.type == "mobile"',
    'device.type == "desktop" and local.hour >= 18',
    "local.weekday >= 5",
    'geo.country in ["US", "CA"]',
    'geo.country == "IN"',
    "profile.sessions > 1",
    "profile.sessions > 5",
    "profile.known",
    "not profile.known and session.product_views > 2",
    "profile.purchases.count > 0",
    "profile.purchases.count > 3",
    "profile.purchases.revenue > 1000",
    "profile.purchases.aov > 80",
    "profile.days_since_last_purchase > 90",
    '"shoes" in profile.top_categories',
    '"acme" in profile.top_brands',
    '"acme" in session.top_brands',
    "profile.price_level > 200",
    "profile.traits.vip == true",
    'profile.traits.plan == "pro"',
    "profile.consent.marketing",
    "session.evidence > 5",
    "session.events > 20",
    "session.purchases > 0",
    '"p1" in session.recent_products',
    "session.exit_intent and session.cart.value > 0",
]
assert len(SEGMENTS) == 50


def load_clicks() -> list[tuple[str, str, float]]:
    rows: list[tuple[str, str, float]] = []
    for name in FILES:
        path = DATA / name
        if not path.exists():
            sys.exit(f"missing {path}: the shared data directory is required")
        with path.open() as handle:
            next(handle)
            for line in handle:
                session, item, moment = line.rstrip("\n").split("\t")
                rows.append((session, item, float(moment)))
    rows.sort(key=lambda row: row[2])
    return rows


def to_records(
    clicks: Sequence[tuple[str, str, float]], prefix: str = "", squeeze: float | None = None
) -> list[EventRecord]:
    enrichment = Enrichment(referrer=Referrer("direct"))
    first = clicks[0][2]
    records = []
    for seq, (session, item, moment) in enumerate(clicks, 1):
        if squeeze is not None:  # pack all times into `squeeze` seconds
            moment = first + (moment - first) % squeeze
        event = TrackEvent(
            event="Product Viewed",
            anonymous_id=prefix + session,
            properties={"product_id": item},
            timestamp=datetime.fromtimestamp(moment, UTC),
        )
        records.append(EventRecord(event, enrichment, seq))
    return records


def build_stage(directory: Path, segments: int) -> ContextStage:
    store = EmbeddedStore(directory / f"state-{time.monotonic_ns()}.db", flush_seconds=3600)
    stage = ContextStage(store, ContextSettings())
    registry = SegmentRegistry(FieldCatalog(stage.rules), directory, None)
    for index, expression in enumerate(SEGMENTS[:segments]):
        registry.define(f"s{index}", SegmentSpec(expression))
    membership = Membership(registry, stage.rules)
    stage.hooks.append(membership)
    return stage


def timed(run: Callable[[], Any]) -> float:
    gc.collect()
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def ceiling(records: Sequence[EventRecord]) -> None:
    counts: dict[str | None, int] = {}
    for record in records:
        key = record.event.anonymous_id
        counts[key] = counts.get(key, 0) + 1


def measure_one(kind: str) -> float:
    """Events/s of one configuration, in this (fresh) process."""
    records = to_records(load_clicks())
    if kind == "ceiling":
        return len(records) / timed(lambda: ceiling(records))
    with tempfile.TemporaryDirectory(prefix="intently-bench-context-") as temporary:
        stage = build_stage(Path(temporary), int(kind))
        rate = len(records) / timed(lambda: stage.apply_many(records))
        stage.store.close()
    return rate


def throughput(rounds: int) -> dict[str, Any]:
    """Each measurement in a fresh interpreter: measured in one process, later runs came
    out up to 2x slower than the first (allocator state left by the earlier ones), which
    would make the order of configurations decide the figures."""
    kinds = {"ceiling": "ceiling", "0": "step_0_segments", "50": "step_50_segments"}
    results: dict[str, list[float]] = {key: [] for key in kinds.values()}
    for _ in range(rounds):  # interleaved, medians reported
        for kind, key in kinds.items():
            output = subprocess.run(
                [sys.executable, __file__, "--one", kind],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            results[key].append(float(output))
    medians = {key: statistics.median(values) for key, values in results.items()}
    probe = build_stage(Path(tempfile.mkdtemp(prefix="intently-bench-context-")), 50)
    records = to_records(load_clicks())
    probe.apply_many(records)
    evaluations = probe.hooks[0].evaluations  # type: ignore[attr-defined]
    probe.store.close()
    return {
        "events": len(records),
        "events_per_s": {key: round(value) for key, value in medians.items()},
        "all_runs": {key: [round(v) for v in values] for key, values in results.items()},
        "segment_evaluations_per_event": round(evaluations / len(records), 2),
        "rounds": rounds,
    }


def memory(directory: Path, clicks: list[tuple[str, str, float]], target: int) -> dict[str, Any]:
    sessions = len({row[0] for row in clicks})
    copies = -(-target // sessions)
    records: list[EventRecord] = []
    for copy in range(copies):
        records.extend(to_records(clicks, prefix=f"c{copy}-", squeeze=20 * 60))
    stage = build_stage(directory, 50)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    stage.apply_many(records)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    store = stage.store
    assert isinstance(store, EmbeddedStore)
    live = sum(1 for p in store.profiles() if p.session is not None)
    stage.store.close()
    return {
        "live_sessions": live,
        "events": len(records),
        "bytes_total": after - before,
        "bytes_per_live_session": round((after - before) / live),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(measure_one(args.one))
        return
    clicks = load_clicks()
    speed = throughput(args.rounds)
    with tempfile.TemporaryDirectory(prefix="intently-bench-context-") as temporary:
        space = memory(Path(temporary), clicks, args.sessions)
    result = {"throughput": speed, "memory": space, "python": sys.version.split()[0]}
    if args.json:
        print(json.dumps(result))
        return
    rates = speed["events_per_s"]
    print(f"rsc15-100k: {speed['events']} events, medians of {speed['rounds']} rounds, one thread")
    print(f"  ceiling (dict counter per event): {rates['ceiling']:>12,} events/s")
    print(f"  context step, no segments:       {rates['step_0_segments']:>12,} events/s")
    print(f"  context step, 50 segments:       {rates['step_50_segments']:>12,} events/s")
    print(f"  segment evaluations per event:   {speed['segment_evaluations_per_event']}")
    print(f"  all runs: {speed['all_runs']}")
    print(f"memory: {space['live_sessions']:,} live sessions from {space['events']:,} events")
    print(f"  {space['bytes_total'] / 2**20:,.1f} MiB held, "
          f"{space['bytes_per_live_session']:,} bytes per live session")  # fmt: skip


if __name__ == "__main__":
    main()
