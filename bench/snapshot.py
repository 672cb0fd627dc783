"""Learning snapshot benchmark: what writing and loading what the workers learned costs.

The recommenders learn the YOOCHOOSE sample (`../shared/data/rsc15-100k`, train and test:
83,846 clicks, the session id as the device) `--copies` times over (each copy with its
own session ids, so the state grows as with that many more visitors), and a LinUCB (32
dimensions) and a Beta Thompson policy learn 10,000 rewards each over 50 offers. Then,
each the median of `--rounds`:

- capture + encode: `learned()` of each part and the msgpack encoding, as the worker
  whose turn it is does on its event loop (learn/snapshot.py);
- decode + restore: what a worker starting does;
- the ceiling side by side: `pickle` (protocol 5) of the same live objects, dumped and
  loaded (the fastest generic serializer of Python objects; not usable here: loading a
  pickle runs code named by whoever wrote it), and a Redis SET and GET of the body.

    python bench/snapshot.py [--copies 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import gc
import pickle
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import redis

from intently.act.policies import BetaThompson, LinUCB
from intently.cli import GC_THRESHOLDS
from intently.context.profile import ProfileRules
from intently.context.settings import ContextSettings
from intently.learn.bus import Viewed
from intently.learn.snapshot import FORMAT, LearnedPolicy, Snapshot, decode, encode
from intently.recommend.evaluate import read_clicks
from intently.recommend.learn import LearnFromViews
from intently.recommend.sequential import SequentialRules
from intently.recommend.session_knn import SessionKNN

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "rsc15-100k"
NOWHERE: list[str | None] = [None, None, None, None]


def median_seconds(action: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def trained(copies: int) -> tuple[LearnFromViews, LinUCB, BetaThompson, int]:
    learner = LearnFromViews(SessionKNN(), SequentialRules(), ProfileRules(ContextSettings()))
    clicks = [
        *read_clicks(DATA / "yoochoose-clicks-100k_train_full.txt"),
        *read_clicks(DATA / "yoochoose-clicks-100k_test.txt"),
    ]
    clicks.sort(key=lambda click: click.at)
    for copy in range(copies):
        for click in clicks:
            device = f"a:{copy}-{click.session}"
            view = Viewed(device, int(click.at * 1000), click.item, None, NOWHERE)
            learner.learned_elsewhere(view)
    rng = np.random.default_rng(0)
    linucb, thompson = LinUCB(dimensions=32), BetaThompson()
    offers = [f"offer-{i}" for i in range(50)]
    pick = random.Random(0)
    for _ in range(10_000):
        offer = pick.choice(offers)
        reward = float(pick.random() < 0.05)
        linucb.update(offer, reward, rng.normal(size=32))
        thompson.update(offer, reward, None)
    return learner, linucb, thompson, len(clicks) * copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    learner, linucb, thompson, views = trained(args.copies)
    # As `intently serve` runs: what was learned frozen out of the collector's passes
    # (what start-up loaded), and its thresholds.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)

    def capture() -> bytes:
        policies = [
            LearnedPolicy("hero", b'{"name":"linucb"}', linucb.learned()),
            LearnedPolicy("offers", b'{"name":"beta-thompson"}', thompson.learned()),
        ]
        snapshot = Snapshot(FORMAT, time.time() * 1000, "bench/0", "1-0", 0, None,
                            policies, learner.learned(), [], [])  # fmt: skip
        return encode(snapshot)

    body = capture()

    def load() -> None:
        snapshot = decode(body)
        fresh = LearnFromViews(SessionKNN(), SequentialRules(), ProfileRules(ContextSettings()))
        fresh.restore(snapshot.recommenders)
        LinUCB(dimensions=32).restore(snapshot.policies[0].learned)
        BetaThompson().restore(snapshot.policies[1].learned)

    live = (learner, linucb, thompson)
    pickled = pickle.dumps(live, protocol=5)
    encode_s = median_seconds(capture, args.rounds)
    load_s = median_seconds(load, args.rounds)
    pickle_s = median_seconds(lambda: pickle.dumps(live, protocol=5), args.rounds)
    unpickle_s = median_seconds(lambda: pickle.loads(pickled), args.rounds)  # noqa: S301 (our own bytes)
    print(
        f"state: {views:,} views, {learner.knn.live_sessions:,} kNN sessions, "
        f"{len(learner.knn.items):,} items; LinUCB and Beta Thompson over 50 offers"
    )
    ms, mb = 1000, 1e6
    print(
        f"snapshot {len(body) / mb:.1f} MB (pickle of the same objects {len(pickled) / mb:.1f} MB)"
    )
    print(f"capture + encode {encode_s * ms:7.1f} ms  ceiling pickle.dumps {pickle_s * ms:7.1f} ms")
    print(f"decode + restore {load_s * ms:7.1f} ms  ceiling pickle.loads {unpickle_s * ms:7.1f} ms")
    try:
        client = redis.Redis.from_url(args.redis)
        key = "intently-bench:snapshot"
        set_s = median_seconds(lambda: client.set(key, body), args.rounds)
        get_s = median_seconds(lambda: client.get(key), args.rounds)
        client.delete(key)
        print(f"Redis SET {set_s * 1000:.1f} ms, GET {get_s * 1000:.1f} ms of the body")
    except redis.RedisError as error:
        print(f"Redis not measured: {error}")


if __name__ == "__main__":
    main()
