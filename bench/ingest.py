"""Ingest benchmark: the real server, driven from other processes over loopback.

Measures, in one run and on one server process:

- the ceiling: `POST /_bench/hello` (same server, same middleware, reads the body, no work);
- single-event requests: `POST /v1/events` with one event each;
- 100-event batches: `POST /v1/events` with `{"batch": [...100 events]}`;

each at saturation with wrk (closed loop, C, so the client does not take the server's
CPU), then hello and single events at a fixed 1,000 requests/s with an open-loop client
that measures latency from the scheduled send time (no coordinated omission).

Every event carries a messageId unique across the whole run (no request is answered as a
duplicate; the run checks the server's duplicate counter), a user agent and an IP from a
pool of 1,000 visitors, so dedupe, enrichment caches and the durable log all do their real
work. Events are durable: written to the log before the acknowledgement, with the log's
default `synchronous=NORMAL` (survives kill -9) or `--synchronous FULL` (fsync first).

    python bench/ingest.py [--seconds 8] [--rounds 3] [--synchronous FULL] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WRITE_KEY = "wk_bench_write_key"
SECRET_KEY = "sk_bench_secret_key"

USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/12{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.{v} Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{v} like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.{v} Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/12{v}.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:1{v}.0) Gecko/20100101 Firefox/1{v}.0",
]
REFERRERS = [
    "https://www.google.com/",
    "https://www.facebook.com/",
    "",
    "https://news.ycombinator.com/",
]
_OCTETS = ((11, 223), (0, 255), (0, 255), (1, 254))
EVENTS = ["Product Viewed", "Product Added", "Products Searched", "Product Clicked"]


def visitor_events(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """Realistic events from a pool of 1,000 visitors (no messageId: added per request)."""
    rng = random.Random(seed)
    visitors = [
        {
            "anonymousId": f"anon-{i}",
            "ip": ".".join(str(rng.randint(low, high)) for low, high in _OCTETS),
            "ua": rng.choice(USER_AGENTS).format(v=rng.randint(0, 9)),
            "ref": rng.choice(REFERRERS),
        }
        for i in range(1000)
    ]
    events = []
    for _ in range(count):
        v = rng.choice(visitors)
        product = f"p{rng.randint(1, 10_000)}"
        events.append(
            {
                "type": "track",
                "event": rng.choice(EVENTS),
                "anonymousId": v["anonymousId"],
                "timestamp": "2026-11-23T10:00:00.000Z",
                "sentAt": "2026-11-23T10:00:00.150Z",
                "properties": {
                    "product_id": product,
                    "category": rng.choice(["running", "trail", "tennis", "yoga"]),
                    "brand": rng.choice(["Asics", "Brooks", "Hoka", "Nike"]),
                    "price": round(rng.uniform(20, 200), 2),
                    "quantity": 1,
                },
                "context": {
                    "ip": v["ip"],
                    "userAgent": v["ua"],
                    "locale": "en-US",
                    "page": {
                        "url": f"https://shop.example/products/{product}?utm_source=news&utm_medium=email",
                        "path": f"/products/{product}",
                        "referrer": v["ref"],
                        "title": "Running shoes",
                    },
                },
            }
        )
    return events


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def wrk_script(events: list[dict[str, Any]], batch: int, nonce: str) -> str:
    """A wrk Lua script that sends `batch` events per request (1: a bare event), each with a
    messageId unique to this run (`nonce`), its thread and its request. (The nonce comes
    from Python: LuaJIT's math.random starts from the same seed in every wrk process, so
    ids made from it repeat across runs and later runs would measure deduplication.)"""
    templates = []
    for event in events:
        body = json.dumps(event, separators=(",", ":"))
        head = '{"messageId":"'
        tail = '",' + body[1:]
        templates.append((head, tail))
    table = ",\n".join("{" + _lua_string(h) + "," + _lua_string(t) + "}" for h, t in templates)
    return f"""
local templates = {{ {table} }}
local n = #templates
local counter = 0
local threads = 0
local prefix = "{nonce}"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {WRITE_KEY}"
function setup(thread)
  threads = threads + 1
  thread:set("id", tostring(threads))
end
function init(args)
  prefix = prefix .. "-" .. (id or "0")
end
local function event()
  counter = counter + 1
  local t = templates[(counter % n) + 1]
  return t[1] .. prefix .. "-" .. counter .. t[2]
end
function request()
  if {batch} == 1 then
    return wrk.format(nil, nil, nil, event())
  end
  local parts = {{}}
  for i = 1, {batch} do parts[i] = event() end
  return wrk.format(nil, nil, nil, '{{"batch":[' .. table.concat(parts, ",") .. ']}}')
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, data_dir: Path, port: int, synchronous: str | None = None) -> None:
        env = dict(os.environ)
        env.update(
            INTENTLY_WRITE_KEY=WRITE_KEY,
            INTENTLY_SECRET_KEY=SECRET_KEY,
            INTENTLY_BENCH_ENDPOINTS="1",
        )
        if synchronous is not None:
            env["INTENTLY_SYNCHRONOUS"] = synchronous
        self.port = port
        self.process = subprocess.Popen(
            [sys.executable, "-m", "intently", "serve", "--port", str(port),
             "--data-dir", str(data_dir), "--log-level", "warning"],
            env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the server did not start within 30 s")

    def health(self) -> dict[str, Any]:
        # (after a saturating run the server may still be working through what the load
        # left queued: a Redis Cluster worker's 100-event batches took over 5 s)
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=60) as r:
            return dict(json.loads(r.read()))

    def duplicates(self) -> float:
        """Events the server answered as duplicates, from its Prometheus metrics."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        found = re.search(r"^intently_events_duplicate_total ([\d.e+]+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else float("nan")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


_WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_PCT = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_WRK_ERRORS = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


class Wrk:
    """Runs wrk with a freshly generated script per run, so no two runs share ids."""

    def __init__(self, events: list[dict[str, Any]], directory: Path, connections: int) -> None:
        self.events = events
        self.directory = directory
        self.connections = connections
        self.runs = 0

    def run(self, url: str, batch: int, seconds: int) -> dict[str, float]:
        self.runs += 1
        script = self.directory / f"run{self.runs}.lua"
        script.write_text(wrk_script(self.events, batch, f"r{self.runs}-{uuid.uuid4().hex}"))
        out = subprocess.run(
            ["wrk", "-t1", f"-c{self.connections}", f"-d{seconds}s", "--latency", "-s",
             str(script), url],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        rps = float(_WRK_RPS.search(out).group(1))  # type: ignore[union-attr]
        pct = {f"p{p}_ms": float(v) * _UNIT[u] for p, v, u in _WRK_PCT.findall(out)}
        errors = _WRK_ERRORS.search(out)
        return {"requests_per_s": rps, **pct, "non_2xx": float(errors.group(1)) if errors else 0.0}


async def open_loop(
    port: int, path: str, bodies: list[bytes], rate: int, seconds: float, connections: int = 16
) -> dict[str, float]:
    """Send `rate` requests/s for `seconds`, on a pool of keep-alive connections; latency
    counted from each request's scheduled time. Where the server answers a
    `Server-Timing` header (`name;dur=ms`), its own time is reported too: the first
    metric, and the first plus a `queue` metric (time spent waiting for other requests'
    work) when there is one."""
    latencies: list[float] = []
    server: list[float] = []
    server_with_queue: list[float] = []
    errors = 0
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while (item := await queue.get()) is not None:
            scheduled, body = item
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {WRITE_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                elif line.lower().startswith(b"server-timing:"):
                    timings = re.findall(rb"([\w-]+);dur=([\d.]+)", line)
                    own = float(timings[0][1])
                    server.append(own)
                    server_with_queue.append(
                        own + sum(float(v) for name, v in timings if name == b"queue")
                    )
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - scheduled)
            if b" 200 " not in status_line:
                errors += 1
        writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    start = time.perf_counter()
    total = int(rate * seconds)
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((scheduled, bodies[i % len(bodies)]))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - start
    latencies = sorted(x * 1000 for x in latencies)
    server.sort()
    server_with_queue.sort()

    def pct(values: list[float], p: float) -> float:
        return values[min(len(values) - 1, int(p * len(values)))]

    found = {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": pct(latencies, 0.50),
        "p99_ms": pct(latencies, 0.99),
        "max_ms": latencies[-1],
        "non_2xx": float(errors),
    }
    if server:
        found |= {"server_p50_ms": pct(server, 0.50), "server_p99_ms": pct(server, 0.99)}
        found |= {
            "server_with_queue_p50_ms": pct(server_with_queue, 0.50),
            "server_with_queue_p99_ms": pct(server_with_queue, 0.99),
        }
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8, help="per saturation run")
    parser.add_argument("--rounds", type=int, default=3, help="saturation rounds")
    parser.add_argument("--warmup", type=int, default=15, help="seconds of warm-up load")
    parser.add_argument(
        "--pause", type=float, default=3.0,
        help="seconds between runs, for the log's checkpoints to finish",
    )  # fmt: skip
    parser.add_argument("--rate-seconds", type=int, default=10, help="per fixed-rate run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument(
        "--synchronous", choices=["NORMAL", "FULL"], default=None,
        help="the log's durability mode (default: the server's, NORMAL)",
    )  # fmt: skip
    parser.add_argument(
        "--rate-only", action="store_true",
        help="after the warm-up, only the fixed-rate runs (no saturation runs before them)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/ingest.py needs wrk: apt-get install wrk (make bench does)")

    events = visitor_events(2000)
    work = Path(tempfile.mkdtemp(prefix="intently-bench-"))
    wrk = Wrk(events, work, args.connections)
    port = free_port()
    server = Server(work / "data", port, args.synchronous)
    base = f"http://127.0.0.1:{port}"
    results: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "seconds": args.seconds,
        "synchronous": args.synchronous or "NORMAL (default)",
    }
    try:
        # Warm-up to steady state: enrichment caches filled, and the WAL and database
        # files grown to their working size (a new data dir pays for file growth in its
        # first minute; a running server does not).
        wrk.run(f"{base}/v1/events", 1, args.warmup)
        # Saturation: hello, single and batched interleaved, median of the rounds, so
        # drift in the machine's state hits all alike.
        runs = {"hello": ("/_bench/hello", 1), "single": ("/v1/events", 1),
                "batch100": ("/v1/events", 100)}  # fmt: skip
        if not args.rate_only:
            rounds: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
            for _ in range(args.rounds):
                for name, (path, batch) in runs.items():
                    time.sleep(args.pause)
                    rounds[name].append(wrk.run(f"{base}{path}", batch, args.seconds))
            for name, measured in rounds.items():
                measured.sort(key=lambda r: r["requests_per_s"])
                results[name] = measured[len(measured) // 2]
                results[name]["rounds_requests_per_s"] = [r["requests_per_s"] for r in measured]
            results["single"]["events_per_s"] = results["single"]["requests_per_s"]
            results["batch100"]["events_per_s"] = results["batch100"]["requests_per_s"] * 100
            results["single_vs_hello"] = (
                results["single"]["requests_per_s"] / results["hello"]["requests_per_s"]
            )
        # Latency at a fixed 1,000 requests/s, open loop, once the last run's writes are
        # checkpointed. Every request a new event (a repeated messageId would be answered
        # as a duplicate, which is cheaper).
        time.sleep(args.pause * 3)
        total = 1000 * args.rate_seconds
        hello_bodies = [json.dumps(events[i % len(events)]).encode() for i in range(total)]
        results["hello_at_1000"] = asyncio.run(
            open_loop(port, "/_bench/hello", hello_bodies, 1000, args.rate_seconds)
        )
        time.sleep(args.pause)
        bodies = [
            json.dumps({**events[i % len(events)], "messageId": f"rate-{i}"}).encode()
            for i in range(total)
        ]
        results["single_at_1000"] = asyncio.run(
            open_loop(port, "/v1/events", bodies, 1000, args.rate_seconds)
        )
        results["durable_events"] = server.health()["last_seq"]
        results["duplicates"] = server.duplicates()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"intently ingest benchmark ({results['cpus']} CPUs, {args.seconds}s per saturation run,"
        f" synchronous={results['synchronous']})"
    )
    print(f"{'run':<18}{'req/s':>10}{'events/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    print(f"(saturation: wrk, 1 thread, {args.connections} connections; *_at_1000: open loop)")
    for name in ("hello", "single", "batch100", "hello_at_1000", "single_at_1000"):
        if name not in results:
            continue
        r = results[name]
        print(
            f"{name:<18}{r['requests_per_s']:>10.0f}{r.get('events_per_s', 0):>11.0f}"
            f"{r.get('p50_ms', 0):>9.2f}{r.get('p99_ms', 0):>9.2f}{r['non_2xx']:>9.0f}"
        )
    if "single_vs_hello" in results:
        for name in ("hello", "single", "batch100"):
            print(f"{name + ' rounds req/s:':<24}{results[name]['rounds_requests_per_s']}")
        share = results["single_vs_hello"]
        print(f"single-event req/s as share of hello-world (medians): {share:.0%}")
    print(f"durable events in the log at the end: {results['durable_events']}")
    print(f"events answered as duplicates (should be 0): {results['duplicates']:.0f}")


if __name__ == "__main__":
    main()
