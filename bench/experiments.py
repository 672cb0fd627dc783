"""Experiment results over a million exposures: the results query on the real server,
beside its /healthz in the same run (the ceiling: the same server answering a trivial
GET), and the from-scratch recount those results must equal.

An engine in process writes 1,000,000 exposures of an A/B test through its experiment
log (the writer thread a running engine uses), with pre-exposure covariates, and events
after them for a third of the visitors (orders with revenue, clicks); it is closed, and
`intently serve` opens the data dir. Then:

- `GET /v1/experiments/ab/results` (exposures, sample ratio, five metrics compared with
  control: Welch, Bayesian, sequential, CUPED), `--queries` times, client-side latency;
- `GET /healthz` as many times, interleaved;
- in process, `recount`: the same totals computed from the million visitors' rows.

    python bench/experiments.py [--exposures 1000000] [--queries 20]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import SECRET_KEY, WRITE_KEY, Server, free_port
from intently import Engine, load_settings
from intently.experiments.spec import ExperimentSpec
from intently.experiments.tracking import ExperimentLogReader, Observation

SPEC = {
    "placements": ["home_hero"], "status": "running",
    "variants": [{"id": "A", "weight": 0.5}, {"id": "B", "weight": 0.5}],
    "metrics": [{"name": "conversion_rate"}, {"name": "click_through"},
                {"name": "revenue_per_visitor"}, {"name": "average_order_value"},
                {"name": "wishes", "event": "Wishlisted"}],
}  # fmt: skip
BATCH = 20_000  # queued at a time, then the writer is waited for (bounded memory)


def fill(data_dir: Path, exposures: int, seed: int = 5) -> dict[str, float]:
    """Write the exposures and events through a real engine's experiment log."""
    settings = load_settings(
        {"data_dir": data_dir, "write_key": WRITE_KEY, "secret_key": SECRET_KEY,
         "holdout_share": 0.0},
        environ={},
    )  # fmt: skip
    engine = Engine(settings)
    rng = random.Random(seed)
    log = engine.experiments.log
    try:
        engine.experiments.registry.define(
            "ab", msgspec.convert(SPEC, ExperimentSpec), engine.now_ms()
        )
        now = engine.now_ms()
        started = time.perf_counter()
        events = 0
        for start in range(0, exposures, BATCH):
            for i in range(start, min(start + BATCH, exposures)):
                unit = f"p_{i:012d}"
                variant = "B" if rng.random() < 0.5 else "A"
                past = rng.choice((0.0, 0.0, 25.0, 80.0))
                covariates = {"revenue_per_visitor": past, "conversion_rate": float(past > 0)}
                log.expose("ab", variant, unit, now, lambda c=covariates: c)  # type: ignore[misc]
                if rng.random() < 0.33:
                    lift = 1.1 if variant == "B" else 1.0
                    revenue = round(rng.uniform(10, 120) * lift, 2)
                    adds = {"conversion_rate": (1.0, 0.0), "revenue_per_visitor": (revenue, 0.0),
                            "average_order_value": (revenue, 1.0)}  # fmt: skip
                    if rng.random() < 0.5:
                        adds["click_through"] = (1.0, 0.0)
                    events += 1
                    log.observe(Observation(unit, now + 1000, events, {"ab": adds}))
            log.flush(timeout=600)
        seconds = time.perf_counter() - started
    finally:
        engine.close()
    return {"write_seconds": seconds, "events": events}


def get(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(
        urllib.request.Request(url, headers={"Authorization": f"Bearer {SECRET_KEY}"}), timeout=60
    ) as answer:
        answer.read()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exposures", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="intently-bench-experiments-"))
    try:
        filled = fill(work / "data", args.exposures)
        port = free_port()
        server = Server(work / "data", port)
        base = f"http://127.0.0.1:{port}"
        try:
            results_ms, health_ms = [], []
            for _ in range(args.queries):
                results_ms.append(get(f"{base}/v1/experiments/ab/results"))
                health_ms.append(get(f"{base}/healthz"))
            with urllib.request.urlopen(
                urllib.request.Request(
                    f"{base}/v1/experiments/ab/results",
                    headers={"Authorization": f"Bearer {SECRET_KEY}"},
                )
            ) as answer:
                body = msgspec.json.decode(answer.read())
        finally:
            server.stop()
        reader = ExperimentLogReader(work / "data" / "experiments.db")
        try:
            kept = reader.totals("ab")
            started = time.perf_counter()
            recounted = reader.recount("ab", msgspec.convert(SPEC, ExperimentSpec).metrics)
            recount_s = time.perf_counter() - started
        finally:
            reader.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    worst = max(
        abs(kept[key][j] - recounted[key][j]) / max(1.0, abs(recounted[key][j]))
        for key in recounted
        for j in range(6)
    )
    units = {v["id"]: v["units"] for v in body["variants"]}
    print(f"intently experiments benchmark: {args.exposures:,} exposures, "
          f"{filled['events']:,.0f} events after them, written through the experiment log in "
          f"{filled['write_seconds']:.1f} s ({args.exposures / filled['write_seconds']:,.0f} "
          "exposures/s)")  # fmt: skip
    print(f"results query   p50 {statistics.median(results_ms):7.2f} ms  max "
          f"{max(results_ms):7.2f} ms  ({args.queries} queries; visitors {units})")  # fmt: skip
    print(f"/healthz        p50 {statistics.median(health_ms):7.2f} ms  max "
          f"{max(health_ms):7.2f} ms  (the same server, interleaved)")  # fmt: skip
    print(f"recount from the {args.exposures:,} rows, in process: {recount_s:.2f} s; "
          f"largest relative difference from the running totals: {worst:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
