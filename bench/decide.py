"""Decide benchmark: the real server, over loopback, with a shop-sized state.

Set-up, through the public API: 10,000 catalog items (50 categories, 20 brands), 50
banner offers (10 with an eligibility rule), 20 segments, and 1,000 live sessions of 10
product views each (visitors browse within a category, so the session kNN has real
neighbours). Each decide asks for `home_hero` (LinUCB over the banners) and `pdp_recs`
(8 items: viewed together, session kNN with sequential rules, items like the one in
view), for one of the 1,000 visitors on a product they viewed.

Measured in one run, on one server process, after a warm-up that takes every visitor past
its bound of open decisions (from then on each decide also closes two older ones and
learns from them, as in production once attribution windows end):

- saturation (wrk, closed loop): `POST /_bench/hello` (same server, same middleware,
  reads the body, no work) and `POST /v1/decide`, interleaved rounds, medians;
- a fixed 1,000 decides/s (open loop, latency from each request's scheduled time): the
  server-side latency from the `Server-Timing` header the decide endpoint sets (the time
  spent on the request; also with the time it waited while the decides of requests read
  with it ran: api/batching.py), and the client-side latency.

    python bench/decide.py [--seconds 8] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import SECRET_KEY, WRITE_KEY, Server, free_port, open_loop
from intently.learn.rewards import Attribution

ITEMS = 10_000
CATEGORIES = 50
VISITORS = 1_000
VIEWS = 10
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)
SEGMENTS = {
    **{f"pages-{n}": f"session.pages >= {n}" for n in range(1, 6)},
    **{f"cart-over-{n}": f"session.cart.value > {n * 50}" for n in range(1, 6)},
    **{f"buyer-{n}": f"profile.purchases.count >= {n}" for n in range(1, 6)},
    **{f"events-{n}": f"session.events >= {n * 3}" for n in range(1, 6)},
}


def call(port: int, method: str, path: str, body: Any, key: str = SECRET_KEY) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method, data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


EXPERIMENT = {
    "placements": ["home_hero"], "status": "running",
    "variants": [{"id": "alpha-1", "weight": 0.5},
                 {"id": "alpha-0.5", "weight": 0.5, "policy": {"name": "linucb", "alpha": 0.5}}],
}  # fmt: skip


def set_up(port: int, rng: random.Random) -> list[bytes]:
    """Load the shop and the sessions; returns the decide bodies to send."""
    items = [
        {
            "id": f"p{i}",
            "title": f"Product {i}",
            "category": ["Shop", f"c{i % CATEGORIES}"],
            "brand": f"brand{i % 20}",
            "price": round(10 + (i * 7919) % 190, 2),
            "stock": 100,
        }
        for i in range(ITEMS)
    ]
    for start in range(0, ITEMS, 5000):
        call(port, "POST", "/v1/catalog/items", {"items": items[start : start + 5000]})
    offers = [
        {"id": f"banner{i}", "kind": "banner", "title": f"Banner {i}",
         "fields": {"headline": f"Offer {i}", "image": f"/img/{i}.svg"},
         **({"eligibility": f"session.pages >= {i % 3}"} if i < 10 else {})}
        for i in range(50)
    ]  # fmt: skip
    call(port, "POST", "/v1/catalog/offers", {"offers": offers})
    for name, expression in SEGMENTS.items():
        call(port, "PUT", f"/v1/segments/{name}", {"expression": expression})
    # An A/B test on the hero (two LinUCB explorations): every decide is assigned and
    # exposed, to it and to the global holdout's split.
    call(port, "PUT", "/v1/experiments/hero-exploration", EXPERIMENT)
    bodies = []
    events = []
    for visitor in range(VISITORS):
        category = rng.randrange(CATEGORIES)
        viewed = [category + CATEGORIES * rng.randrange(ITEMS // CATEGORIES) for _ in range(VIEWS)]
        events.extend(
            {
                "type": "track", "event": "Product Viewed", "anonymousId": f"v{visitor}",
                "messageId": uuid.uuid4().hex,
                "properties": {"product_id": f"p{product}", "category": f"c{category}",
                               "price": 50.0},
                "context": {"ip": f"81.2.{visitor % 250}.{visitor % 200 + 1}",
                            "userAgent": IPHONE},
            }
            for product in viewed
        )  # fmt: skip
        bodies.append(
            json.dumps(
                {
                    "anonymousId": f"v{visitor}",
                    "placements": [{"id": "home_hero"}, {"id": "pdp_recs"}],
                    "context": {"product_id": f"p{viewed[-1]}"},
                }
            ).encode()
        )
    for start in range(0, len(events), 500):
        call(port, "POST", "/v1/events", {"batch": events[start : start + 500]}, WRITE_KEY)
    return bodies


def wrk_script(bodies: list[bytes]) -> str:
    table = ",\n".join("[==[" + body.decode() + "]==]" for body in bodies)
    return f"""
local bodies = {{ {table} }}
local n = #bodies
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {WRITE_KEY}"
function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, bodies[(counter % n) + 1])
end
"""


_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_PCT = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, script: Path, seconds: int, connections: int) -> dict[str, float]:
    import subprocess

    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    found = {f"p{p}_ms": float(v) * _UNIT[u] for p, v, u in _PCT.findall(out)}
    errors = _NON_2XX.search(out)
    return {
        "requests_per_s": float(_RPS.search(out).group(1)),  # type: ignore[union-attr]
        **found,
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


def degraded(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    pattern = r'^intently_decisions_total\{outcome="(\w+)",placement="(\w+)"\} ([\d.e+]+)$'
    for outcome, placement, value in re.findall(pattern, text, re.MULTILINE):
        found[f"{placement}:{outcome}"] = float(value)
    return found


def decides(port: int) -> float:
    """Decide requests answered so far (every one decides both placements)."""
    return sum(degraded(port).values()) / 2


def warm_up(port: int, script: Path, connections: int) -> float:
    """Decide until every visitor is past its bound of open decisions, so that each decide
    measured also closes two older decisions and learns from them, as a server does all
    day once attribution windows end. (Measuring before that flattered decide by ~15%.)
    Returns how many decides the warm-up took."""
    steady_after = VISITORS * (Attribution.max_open_per_visitor // 2 + 5)
    done = decides(port)
    while done < steady_after:
        wrk(f"http://127.0.0.1:{port}/v1/decide", script, 5, connections)
        before, done = done, decides(port)
        if done == before:
            sys.exit("the warm-up decided nothing in 5 s: see the server's log")
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8, help="per saturation run")
    parser.add_argument("--rounds", type=int, default=3, help="saturation rounds")
    parser.add_argument("--rate-seconds", type=int, default=10, help="the fixed-rate run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/decide.py needs wrk: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="intently-bench-decide-"))
    port = free_port()
    server = Server(work / "data", port)
    base = f"http://127.0.0.1:{port}"
    results: dict[str, Any] = {"cpus": os.cpu_count()}
    try:
        started = time.perf_counter()
        bodies = set_up(port, random.Random(3))
        results["set_up_seconds"] = round(time.perf_counter() - started, 1)
        script = work / "decide.lua"
        script.write_text(wrk_script(bodies))
        hello = work / "hello.lua"
        hello.write_text(wrk_script([b'{"hello":"world"}']))
        results["warm_up_decides"] = warm_up(port, script, args.connections)
        rounds: dict[str, list[dict[str, float]]] = {"hello": [], "decide": []}
        for _ in range(args.rounds):
            rounds["hello"].append(wrk(f"{base}/_bench/hello", hello, args.seconds,
                                       args.connections))  # fmt: skip
            time.sleep(1)
            rounds["decide"].append(wrk(f"{base}/v1/decide", script, args.seconds,
                                        args.connections))  # fmt: skip
            time.sleep(1)
        for name, measured in rounds.items():
            in_order = [r["requests_per_s"] for r in measured]  # as run, oldest first
            measured.sort(key=lambda r: r["requests_per_s"])
            results[name] = measured[len(measured) // 2]
            results[name]["rounds_requests_per_s"] = in_order
        results["decide_vs_hello"] = (
            results["decide"]["requests_per_s"] / results["hello"]["requests_per_s"]
        )
        time.sleep(2)
        results["decide_at_1000"] = asyncio.run(
            open_loop(port, "/v1/decide", bodies, 1000, args.rate_seconds)
        )
        results["decisions"] = degraded(port)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    from decide_inprocess import assignment_cost  # (it imports this module)

    results["assignment"] = assignment_cost()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"intently decide benchmark ({results['cpus']} CPUs; set-up "
          f"{results['set_up_seconds']} s: {ITEMS} items, 50 offers, {len(SEGMENTS)} segments, "
          f"{VISITORS} sessions)")  # fmt: skip
    for name in ("hello", "decide"):
        r = results[name]
        print(f"{name:<8} {r['requests_per_s']:>8.0f} req/s"
              f" (rounds, in order: {r['rounds_requests_per_s']})"
              f"  p50 {r.get('p50_ms', 0):.2f} ms  p99 {r.get('p99_ms', 0):.2f} ms"
              f"  non-2xx {r['non_2xx']:.0f}")  # fmt: skip
    print(
        f"decide req/s as share of hello-world (medians): {results['decide_vs_hello']:.1%}; "
        f"decisions/s (2 per request) as share: {2 * results['decide_vs_hello']:.1%}"
    )
    # Every round is in the steady state (see warm_up): the slowest one is the floor.
    slowest = min(results["decide"]["rounds_requests_per_s"])
    share = 2 * slowest / results["hello"]["requests_per_s"]
    print(
        f"slowest decide round: {slowest:.0f} req/s; decisions/s as share of hello-world: "
        f"{share:.1%} (all rounds after a warm-up of {results['warm_up_decides']:.0f} decides:"
        " every visitor's older decisions closing and learned from)"
    )
    r = results["decide_at_1000"]
    print(f"at 1,000 decides/s: {r['requests_per_s']:.0f} req/s; server p50 "
          f"{r['server_p50_ms']:.3f} ms, p99 {r['server_p99_ms']:.3f} ms (with its wait in the "
          f"loop around its decide: p50 {r['server_with_queue_p50_ms']:.3f} ms, p99 "
          f"{r['server_with_queue_p99_ms']:.3f} ms); client p50 "
          f"{r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms; "
          f"non-2xx {r['non_2xx']:.0f}")  # fmt: skip
    print(f"decisions by placement and outcome: {results['decisions']}")
    a = results["assignment"]
    print(f"experiment assignment, in process: {a['total_us']:.2f} us per decision (arm "
          f"{a['arm_us']:.2f} us, exposure {a['exposure_us']:.2f} us; every visitor in "
          f"turn, both placements; an empty loop's {a['loop_us']:.2f} us taken off)")  # fmt: skip


if __name__ == "__main__":
    main()
