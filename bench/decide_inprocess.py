"""Decide in process: microseconds per decide, with and without learning (a diagnostic).

The same shop as bench/decide.py (10,000 items, 50 banners, 20 segments, 1,000 sessions),
set up through the public API in process (httpx over the ASGI app, no sockets), then
`Decider.decide` called directly in a loop, 10,000 decides a round:

- "learning": the per-visitor bound of open decisions set to 10, so that from the first
  round on every decide also closes two older decisions, logs their zero rewards and
  updates LinUCB, as in the steady state bench/decide.py measures;
- "no closes": a bound no visitor reaches in the run, so no decision closes.

The difference is what learning costs a decide. This is not a floor's measurement (that
is bench/decide.py, against hello-world on the real server); it is steadier than the
server bench on a noisy machine and it is what a profiler should be pointed at, e.g.
`py-spy record -r 1000 -- python bench/decide_inprocess.py --rounds 6`.

With `--locality`, it times instead each stage of a decide for one visitor asked again and
again against the 1,000 visitors in turn (the same work on other data): the difference
is what reaching cold memory costs, which no profiler shows as a line of code.

    python bench/decide_inprocess.py [--rounds 3] [--profile] [--locality]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import math
import pstats
import random
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
import decide as bench
from ingest import SECRET_KEY, WRITE_KEY
from intently import Engine, load_settings
from intently.act.wire import DecideBody
from intently.api.app import create_app

DECIDES_PER_ROUND = 10_000


def build(data_dir: Path) -> tuple[Engine, list[DecideBody]]:
    """An engine holding bench/decide.py's shop, and the decide bodies to send."""
    settings = load_settings(
        {"data_dir": data_dir, "write_key": WRITE_KEY, "secret_key": SECRET_KEY}, environ={}
    )
    engine = Engine(settings)
    loop = asyncio.new_event_loop()
    transport = httpx.ASGITransport(app=create_app(engine), client=("127.0.0.1", 50000))
    client = httpx.AsyncClient(transport=transport, base_url="http://intently.bench")

    def call(port: int, method: str, path: str, body: Any, key: str = SECRET_KEY) -> Any:
        headers = {"Authorization": f"Bearer {key}"}
        response = loop.run_until_complete(client.request(method, path, json=body, headers=headers))
        if response.status_code >= 300:
            sys.exit(f"set-up failed: {method} {path} answered {response.status_code}")
        return response.json() if response.content else None

    bench.call = call  # the set-up goes through the API, in process
    bodies = bench.set_up(0, random.Random(3))
    loop.run_until_complete(client.aclose())
    loop.close()
    return engine, [msgspec.json.decode(body, type=DecideBody) for body in bodies]


def rounds(engine: Engine, bodies: list[DecideBody], count: int, bound: int) -> list[float]:
    """Microseconds per decide in each of `count` rounds, with the per-visitor bound of
    open decisions at `bound`."""
    engine.decider.attribution.max_open_per_visitor = bound
    decide = engine.decider.decide
    found = []
    for r in range(count):
        started = time.perf_counter()
        for i in range(r * DECIDES_PER_ROUND, (r + 1) * DECIDES_PER_ROUND):
            decide(bodies[i % len(bodies)], "127.0.0.1", None, ())
        found.append((time.perf_counter() - started) / DECIDES_PER_ROUND * 1e6)
    return found


def locality(engine: Engine, bodies: list[DecideBody]) -> None:
    """Microseconds per call of each stage, for one visitor and for the 1,000 in turn."""
    decider = engine.decider
    rounds(engine, bodies, 1, 10)  # the steady state: closing and learning
    hero, recs = decider.placements.get("home_hero"), decider.placements.get("pdp_recs")
    if hero is None or recs is None:
        sys.exit("the starter placements home_hero and pdp_recs are missing")
    now = decider.now_ms
    no_deadline = math.inf  # (the stages are timed whole: none may hand over to a fallback)
    visitors = [decider._visitor(body, "127.0.0.1", None, (), now()) for body in bodies]
    turn = iter(range(10**9))

    def best(call: Callable[[int], object]) -> float:
        return min(timeit.repeat(lambda: call(next(turn) % len(bodies)), number=2000, repeat=5))

    stages: dict[str, Callable[[int], object]] = {
        "decide (both placements)": lambda i: decider.decide(bodies[i], "127.0.0.1", None, ()),
        "pdp_recs: candidate pool": lambda i: decider.recommenders.pool("similar", visitors[i].ask),
        "pdp_recs: items, no log": lambda i: decider._items(recs, 8, visitors[i], no_deadline),
        "pdp_recs: with log, learning": lambda i: decider._decide_placement(
            recs, 8, visitors[i], now(), False
        ),
        "home_hero: offers, no log": lambda i: decider._offers(
            hero, 1, visitors[i], now(), no_deadline
        ),
        "home_hero: with log, learning": lambda i: decider._decide_placement(
            hero, 1, visitors[i], now(), False
        ),
    }
    print(f"{'us per call':<32} {'one visitor':>12} {'1,000 in turn':>14}")
    for label, call in stages.items():
        one = best(lambda i, call=call: call(7)) / 2000 * 1e6  # (the same visitor each time)
        many = best(call) / 2000 * 1e6
        print(f"{label:<32} {one:>12.1f} {many:>14.1f}")


def assignment_cost() -> dict[str, float]:
    """Microseconds per decision that experiments add: the arm (holdouts, then the
    hero's A/B test) and the exposure, for each of the 1,000 visitors in turn and both
    placements (best of 5 repeats; an empty loop's time taken off)."""
    with tempfile.TemporaryDirectory(prefix="intently-bench-assign-") as work:
        engine, bodies = build(Path(work) / "data")
        try:
            decider, experiments = engine.decider, engine.experiments
            placements = [decider.placements.get("home_hero"), decider.placements.get("pdp_recs")]
            visitors = [
                decider._visitor(b, "127.0.0.1", None, (), decider.now_ms()) for b in bodies
            ]
            now = decider.now_ms()
            pairs = [(v, p) for v in visitors for p in placements if p is not None]
            arms = [experiments.arm(p, v.unit, v.profile) for v, p in pairs]
            for (v, p), arm in zip(pairs, arms, strict=True):  # the first exposures, written
                experiments.exposed(arm, p, v.unit, now, v.profile)
            experiments.log.flush()

            def loop() -> None:
                for _visitor, _placement in pairs:
                    pass

            def arm_only() -> None:
                for v, p in pairs:
                    experiments.arm(p, v.unit, v.profile)

            def exposure_only() -> None:
                for (v, p), arm in zip(pairs, arms, strict=True):
                    experiments.exposed(arm, p, v.unit, now, v.profile)

            best = {
                name: min(timeit.repeat(call, number=5, repeat=5)) / (5 * len(pairs)) * 1e6
                for name, call in (("loop", loop), ("arm", arm_only), ("exposure", exposure_only))
            }
        finally:
            engine.close()
    arm_us, exposure_us = best["arm"] - best["loop"], best["exposure"] - best["loop"]
    return {"arm_us": arm_us, "exposure_us": exposure_us, "loop_us": best["loop"],
            "total_us": arm_us + exposure_us}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of 10,000 decides each")
    parser.add_argument("--profile", action="store_true", help="cProfile the learning run")
    parser.add_argument(
        "--locality", action="store_true", help="one visitor against 1,000 in turn, by stage"
    )
    args = parser.parse_args()
    if args.locality:
        with tempfile.TemporaryDirectory(prefix="intently-bench-inprocess-") as work:
            engine, bodies = build(Path(work) / "data")
            try:
                locality(engine, bodies)
            finally:
                engine.close()
        return
    measured = {}
    for label, bound in (("learning", 10), ("no closes", 10**9)):
        with tempfile.TemporaryDirectory(prefix="intently-bench-inprocess-") as work:
            engine, bodies = build(Path(work) / "data")
            try:
                profiler = cProfile.Profile() if args.profile and bound == 10 else None
                if profiler is not None:
                    profiler.enable()
                measured[label] = rounds(engine, bodies, args.rounds, bound)
                if profiler is not None:
                    profiler.disable()
                    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            finally:
                engine.close()
    for label, found in measured.items():
        print(f"{label:<10} us per decide, rounds in order: {[round(x) for x in found]}")
    learning, plain = (
        min(measured["learning"][1:] or measured["learning"]),
        min(measured["no closes"]),
    )
    print(f"learning costs {learning - plain:.0f} us per decide (best rounds: {learning:.0f} "
          f"vs {plain:.0f}; the first learning round is left out: its models are new)")  # fmt: skip


if __name__ == "__main__":
    main()
