"""Cluster benchmark: two workers sharing state in Redis, against one worker on its own.

Measures in one run (each part can be left out with --parts):

1. throughput: the real server as subprocesses (`python -m intently serve`): one worker on
   the embedded store (the default), then two workers on one Redis (`--store redis://...`,
   one key prefix for both, each its own data dir and port). Each worker is loaded with
   bench/decide.py's shop (10,000 items, 50 offers, 20 segments, an experiment, 1,000
   sessions), each worker loading it (with a database the catalog and definitions are
   shared: written twice). Then, at saturation with wrk (closed loop, C):
   `POST /_bench/hello` (the ceiling: same server, same middleware, no work), single events,
   100-event batches, decides; and p50/p99 at a fixed
   open-loop rate per worker (latency from each request's scheduled send time, as
   bench/ingest.py's open loop). The two Redis workers are driven at once, one wrk per
   worker: what the pair sustains together is the sum, and contention for the shared
   profiles (both wrk send the same 1,000 visitors' events) and for Redis is in it. On a
   machine with fewer cores than workers + Redis + clients, the pair shares the cores
   with its clients: the hello ceiling, measured the same way, shows what is left to it.
2. spike: on the two Redis workers, single events open loop at R per worker for 10 s, 10R
   for --spike-seconds, R for 10 s: errors (503 apart) and p50/p99 per phase, and each
   worker's RSS before, at its peak during and after (/proc/<pid>/status).
3. memory: Redis memory per 1,000,000 profiles of typical state. N visitors (a few sessions
   of page and product views with categories, searches, adds, orders, one identify in
   ten, over the last 14 days) are applied in time order through the real ContextStage in
   process, and the resulting profiles and identity links written to Redis with the real
   RedisStore.commit on a fresh prefix; INFO used_memory before/after and MEMORY USAGE of
   every key, extrapolated linearly. (Applying every event as a worker does, with leases
   and a commit script per event, runs at ~3,000 events/s in one process: 100,000 visitors
   would take 5 minutes.) A sample is also applied that way, event by event, to check
   that it leaves the same bytes per profile, and to measure the event stream's entries.

    python bench/cluster.py [--seconds 5] [--rate 300] [--spike-seconds 30]
                            [--profiles 100000] [--parts throughput,spike,memory] [--json]

Needs wrk (apt-get install wrk) and a Redis (--redis, default redis://127.0.0.1:6379/0);
every key this run writes is under its own prefixes, deleted at the end. The two Redis
workers also get a PostgreSQL database of the run's own (--postgres, dropped at the end):
events and decisions shipped there, the catalog, definitions and the experiment log shared
through it.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import multiprocessing
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import psycopg
import redis
from psycopg import sql
from redis.cluster import RedisCluster

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decide import degraded, set_up
from decide import wrk as wrk_bodies
from decide import wrk_script as bodies_script
from ingest import WRITE_KEY, Server, Wrk, free_port, open_loop, visitor_events
from intently.context.stage import ContextStage
from intently.events.enrich import Enricher
from intently.events.geo import GeoLocator
from intently.events.record import EventRecord, stamp
from intently.events.referrer import ReferrerClassifier
from intently.events.validate import decode_event
from intently.stores.connect import connect_redis
from intently.stores.embedded import EmbeddedStore
from intently.stores.layout import shared_key
from intently.stores.protocol import Changes
from intently.stores.redisstate import RedisStore

T = TypeVar("T")
MB = 1024 * 1024
MILLION = 1_000_000
PARTS = ("throughput", "spike", "memory")
# How many applied events a RedisStore keeps in its stream by default.
STREAM_LENGTH: int = inspect.signature(RedisStore).parameters["stream_length"].default


# -- workers -----------------------------------------------------------------------------------


@contextmanager
def _spawning(env: dict[str, str], log: Path) -> Iterator[None]:
    """While a `Server` (bench/ingest.py) starts: its environment gets `env`, and its
    standard error (the server's log) goes to `log`, to be read for warnings later."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    stderr = os.dup(2)
    with log.open("ab") as file:
        os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(stderr, 2)
        os.close(stderr)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Worker:
    def __init__(
        self, work: Path, name: str, store: str | None, prefix: str | None, connections: int,
        database: str | None = None,
    ) -> None:  # fmt: skip
        self.name = name
        self.shared_definitions = database is not None
        self.port = free_port()
        self.log = work / f"{name}.log"
        env = {"INTENTLY_STORE": "", "INTENTLY_STATE_STORE": ""}  # (empty: the default)
        if store is not None:
            assert prefix is not None
            env = {
                "INTENTLY_STORE": store,
                "INTENTLY_REDIS_PREFIX": prefix,
                "INTENTLY_WORKER_ID": name,
                "INTENTLY_DATABASE": database or "",
            }
        with _spawning(env, self.log):
            self.server = Server(work / name, self.port)
        self.pid = self.server.process.pid
        self.wrk = Wrk(visitor_events(2000), work / f"{name}-wrk", connections)
        (work / f"{name}-wrk").mkdir()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> dict[str, float]:
        """Resident set now and its peak so far (VmRSS, VmHWM), in MB."""
        found = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0]) / 1024
        return found

    def last_seq(self) -> int:
        return int(self.server.health()["last_seq"])

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines() if self.log.exists() else []

    def stop(self) -> None:
        self.server.stop()


def metric_sum(port: int, name: str) -> float:
    """The sum of a Prometheus metric's series (0 when the server has none)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([\d.e+]+)$", text, re.MULTILINE)
    )


def at_once(workers: list[Worker], job: Callable[[Worker], T]) -> list[T]:
    """`job` on every worker at the same time (wrk runs are subprocesses: threads do)."""
    with ThreadPoolExecutor(len(workers)) as pool:
        return list(pool.map(job, workers))


def summed(per_worker: list[dict[str, float]], events_per_request: int = 0) -> dict[str, Any]:
    """The cluster's figures from each worker's: rates add up; latencies are the worst."""
    total = sum(r["requests_per_s"] for r in per_worker)
    found: dict[str, Any] = {
        "requests_per_s": total,
        "p50_ms": max(r.get("p50_ms", 0.0) for r in per_worker),
        "p99_ms": max(r.get("p99_ms", 0.0) for r in per_worker),
        "non_2xx": sum(r.get("non_2xx", 0.0) for r in per_worker),
        "per_worker": per_worker,
    }
    if events_per_request:
        found["events_per_s"] = total * events_per_request
    return found


class RedisCounters:
    """EVALSHA calls (lease, commit and release scripts) and Redis's CPU seconds: Redis is
    shared, so other clients' work would show too (the run prints the database size)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def read(self) -> dict[str, float]:
        calls = cpu_s = 0.0
        for server in servers_of(self.client):  # (a Cluster's primaries: summed)
            stats = server.info("commandstats")
            cpu = server.info("cpu")
            calls += sum(
                float(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
                for name in ("evalsha", "eval")
            )
            cpu_s += float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        return {"evalsha": calls, "cpu_s": cpu_s}


def servers_of(client: Any) -> list[Any]:
    """The client of each server: the one, or each primary of a Cluster."""
    if isinstance(client, RedisCluster):
        return [client.get_redis_connection(node) for node in client.get_primaries()]
    return [client]


def connect(url: str) -> Any:
    """A client for `url`: a Cluster's if the node it names is in a cluster."""
    plain = redis.Redis.from_url(url)
    mode = plain.info("server").get("redis_mode")
    if mode != "cluster":
        return plain
    plain.close()
    return RedisCluster.from_url(url)


def throughput(
    workers: list[Worker], args: argparse.Namespace, counters: RedisCounters | None
) -> dict[str, Any]:
    """Set-up, warm-up, saturation (all workers at once), then the fixed-rate runs."""
    found: dict[str, Any] = {"workers": len(workers)}
    started = time.perf_counter()
    if len(workers) > 1 and workers[0].shared_definitions:
        # Definitions are shared, and a change is compare-and-set against the version
        # the worker installed: the workers set up one after the other, each once it
        # has installed what the one before defined (a tick, about a second).
        decide_bodies = set_up(workers[0].port, random.Random(3))
        for worker in workers[1:]:
            time.sleep(2.5)
            set_up(worker.port, random.Random(3))
    else:
        decide_bodies = at_once(workers, lambda w: set_up(w.port, random.Random(3)))[0]
    found["set_up_seconds"] = round(time.perf_counter() - started, 1)
    work = workers[0].log.parent
    decide_lua = work / "decide.lua"
    decide_lua.write_text(bodies_script(decide_bodies))
    c = args.connections
    # Warm-up: enrichment caches, the log's files, every decide path once.
    at_once(workers, lambda w: w.wrk.run(f"{w.base}/v1/events", 1, args.warmup))
    at_once(workers, lambda w: wrk_bodies(f"{w.base}/v1/decide", decide_lua, args.warmup, c))
    runs: dict[str, tuple[Callable[[Worker], dict[str, float]], int]] = {
        "hello": (lambda w: w.wrk.run(f"{w.base}/_bench/hello", 1, args.seconds), 0),
        "single": (lambda w: w.wrk.run(f"{w.base}/v1/events", 1, args.seconds), 1),
        "batch100": (lambda w: w.wrk.run(f"{w.base}/v1/events", 100, args.seconds), 100),
        "decide": (lambda w: wrk_bodies(f"{w.base}/v1/decide", decide_lua, args.seconds, c), 0),
    }
    for name, (job, events) in runs.items():
        time.sleep(args.pause)
        seq = [w.last_seq() for w in workers]
        before = counters.read() if counters else None
        found[name] = summed(at_once(workers, job), events)
        if events:
            applied = sum(w.last_seq() for w in workers) - sum(seq)
            found[name]["events_logged"] = applied
            if counters and before:
                after = counters.read()
                found[name]["evalsha_per_event"] = (after["evalsha"] - before["evalsha"]) / applied
                found[name]["redis_cpu_share"] = (after["cpu_s"] - before["cpu_s"]) / args.seconds
    # Fixed rate, open loop, every worker at once.
    rate, seconds = args.rate, args.rate_seconds
    total = rate * seconds
    visitors = visitor_events(2000, seed=11)
    nonce = uuid.uuid4().hex[:8]

    def bodies(worker: int) -> list[bytes]:
        return [
            json.dumps({**visitors[i % 2000], "messageId": f"{nonce}-{worker}-{i}"}).encode()
            for i in range(total)
        ]

    async def fixed(path: str, make: Callable[[int], list[bytes]]) -> list[dict[str, float]]:
        return list(
            await asyncio.gather(
                *(open_loop(w.port, path, make(n), rate, seconds) for n, w in enumerate(workers))
            )
        )

    for name, path, make in (
        ("hello_at_rate", "/_bench/hello", bodies),
        ("single_at_rate", "/v1/events", bodies),
        ("decide_at_rate", "/v1/decide", lambda _: decide_bodies),
    ):
        time.sleep(args.pause)
        found[name] = summed(asyncio.run(fixed(path, make)))
    found["duplicates"] = sum(w.server.duplicates() for w in workers)
    found["decisions"] = [degraded(w.port) for w in workers]
    found["seconds_taken"] = round(time.perf_counter() - started, 1)
    return found


# -- the spike ---------------------------------------------------------------------------------


async def phased_open_loop(
    port: int,
    bodies: list[bytes],
    phases: list[tuple[str, int, float]],
    connections: int,
    grace_seconds: float = 30.0,
) -> dict[str, dict[str, float]]:
    """ingest.open_loop with phases: `rate` requests/s for `seconds` each, one after the
    other, latency from each request's scheduled time; answers are counted by phase (of
    the scheduled time) and by status: 2xx, 503, other non-2xx, and failures (connection
    lost, or no answer within `grace_seconds` after the last send)."""
    queue: asyncio.Queue[tuple[str, float, bytes] | None] = asyncio.Queue()
    answers: dict[str, list[tuple[float, int]]] = {name: [] for name, _, _ in phases}
    sent: dict[str, int] = dict.fromkeys(answers, 0)

    head = (
        "POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {WRITE_KEY}\r\nContent-Length: %d\r\n\r\n"
    ).encode()

    async def client() -> None:
        reader = writer = None
        while (item := await queue.get()) is not None:
            phase, scheduled, body = item
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert reader is not None
                writer.write(head % len(body) + body)
                status_line = await reader.readline()
                status = int(status_line.split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                status = 0
                if writer is not None:
                    writer.close()
                reader = writer = None
            answers[phase].append((time.perf_counter() - scheduled, status))
        if writer is not None:
            writer.close()

    clients = [asyncio.create_task(client()) for _ in range(connections)]
    start = time.perf_counter()
    offset = 0.0
    n = 0
    for name, rate, seconds in phases:
        for i in range(int(rate * seconds)):
            scheduled = start + offset + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait((name, scheduled, bodies[n % len(bodies)]))
            sent[name] += 1
            n += 1
        offset += seconds
    for _ in clients:
        queue.put_nowait(None)
    _, pending = await asyncio.wait(clients, timeout=grace_seconds)
    for task in pending:
        task.cancel()
    found = {}
    for name, rate, seconds in phases:
        got = answers[name]
        latencies = sorted(x * 1000 for x, _ in got)
        statuses = [s for _, s in got]

        def pct(p: float, values: list[float] = latencies) -> float:
            return values[min(len(values) - 1, int(p * len(values)))] if values else float("nan")

        ok = sum(1 for s in statuses if 200 <= s < 300)
        unavailable = statuses.count(503)
        failed = statuses.count(0) + (sent[name] - len(got))
        found[name] = {
            "rate": rate,
            "seconds": seconds,
            "sent": sent[name],
            "ok": ok,
            "status_503": unavailable,
            "other_non_2xx": len(got) - ok - unavailable - statuses.count(0),
            "failed": failed,
            "error_rate": (sent[name] - ok) / max(1, sent[name]),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": latencies[-1] if latencies else float("nan"),
        }
    return found


def spike(
    workers: list[Worker], args: argparse.Namespace, counters: RedisCounters | None
) -> dict[str, Any]:
    base = args.spike_base
    phases = [
        ("before", base, 10.0),
        ("spike", base * 10, float(args.spike_seconds)),
        ("after", base, 10.0),
    ]
    events = visitor_events(2000, seed=13)
    nonce = uuid.uuid4().hex[:8]
    total = int(sum(r * s for _, r, s in phases))
    bodies = [
        [
            json.dumps({**events[i % len(events)], "messageId": f"{nonce}-s{n}-{i}"}).encode()
            for i in range(total)
        ]
        for n in range(len(workers))
    ]
    time.sleep(args.pause)
    rss: dict[str, Any] = {w.name: {"before": w.rss()} for w in workers}
    peaks = {w.name: 0.0 for w in workers}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            for w in workers:
                peaks[w.name] = max(peaks[w.name], w.rss()["VmRSS"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    seq = [w.last_seq() for w in workers]
    before = counters.read() if counters else None

    async def run() -> list[dict[str, dict[str, float]]]:
        return list(
            await asyncio.gather(
                *(
                    phased_open_loop(w.port, bodies[n], phases, args.spike_connections)
                    for n, w in enumerate(workers)
                )
            )
        )

    started = time.perf_counter()
    per_worker = asyncio.run(run())
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    for w in workers:
        rss[w.name]["peak_rss_mb"] = peaks[w.name]
        rss[w.name]["after"] = w.rss()
    time.sleep(5)
    for w in workers:
        rss[w.name]["after_5s"] = w.rss()
    found: dict[str, Any] = {"phases": {}, "rss": rss, "seconds_taken": round(elapsed, 1)}
    for name, rate, seconds in phases:
        rows = [r[name] for r in per_worker]
        sent = sum(r["sent"] for r in rows)
        ok = sum(r["ok"] for r in rows)
        found["phases"][name] = {
            "rate_per_worker": rate,
            "seconds": seconds,
            "sent": sent,
            "ok": ok,
            "status_503": sum(r["status_503"] for r in rows),
            "other_non_2xx": sum(r["other_non_2xx"] for r in rows),
            "failed": sum(r["failed"] for r in rows),
            "error_rate": (sent - ok) / max(1, sent),
            "p50_ms": max(r["p50_ms"] for r in rows),
            "p99_ms": max(r["p99_ms"] for r in rows),
            "max_ms": max(r["max_ms"] for r in rows),
            "per_worker": rows,
        }
    applied = sum(w.last_seq() for w in workers) - sum(seq)
    found["events_logged"] = applied
    if counters and before:
        after = counters.read()
        found["evalsha_per_event"] = (after["evalsha"] - before["evalsha"]) / max(1, applied)
        found["redis_cpu_share"] = (after["cpu_s"] - before["cpu_s"]) / elapsed
    found["duplicates"] = sum(w.server.duplicates() for w in workers)
    found["shed"] = sum(metric_sum(w.port, "intently_requests_shed_total") for w in workers)
    return found


# -- Redis memory per profile ------------------------------------------------------------------

SHOP_CATEGORIES = [
    f"{sport}-{kind}"
    for sport in ("running", "trail", "tennis", "yoga", "hiking")
    for kind in ("shoes", "shirts", "shorts", "jackets", "socks", "bags", "watches", "caps")
]
BRANDS = ["Asics", "Brooks", "Hoka", "Nike", "Adidas", "Salomon", "On", "Saucony", "Garmin"]
QUERIES = ["trail shoes", "running jacket", "waterproof", "gps watch", "yoga mat", "socks"]
AGENTS = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{v} like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.{v} Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/12{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/12{v}.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.{v} Safari/605.1.15",
]
REFERRERS = ["https://www.google.com/", "https://www.google.com/", "", "",
             "https://www.facebook.com/", "https://www.instagram.com/"]  # fmt: skip
CAMPAIGN = "?utm_source=newsletter&utm_medium=email&utm_campaign=spring"
DAY_MS = 86_400_000
MINUTE_MS = 60_000


def visitor_timeline(index: int, seed: int, end_ms: int) -> list[tuple[int, dict[str, Any]]]:
    """One visitor's events, (epoch ms, event), in order: 1-4 sessions (2 on average)
    over the last 14 days, each a landing page (from a search engine, social or direct;
    one in five from an email campaign) then 1-6 of: product views (mostly within the
    visitor's favourite category), searches, category pages, adds to cart; an order after
    half the sessions with a cart; an identify (with two traits) in the last session of
    one visitor in ten. Every event with the browser's context (address, user agent,
    page), as analytics.js sends it."""
    rng = random.Random(seed * 1_000_003 + index)

    def new_id() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    anonymous_id = new_id()
    ip = ".".join(
        str(rng.randint(low, high)) for low, high in ((11, 223), (0, 255), (0, 255), (1, 254))
    )
    agent = rng.choice(AGENTS).format(v=rng.randint(0, 9))
    favourite = rng.choice(SHOP_CATEGORIES)
    starts: list[int] = []
    for start in sorted(
        rng.randint(end_ms - 14 * DAY_MS, end_ms - 5 * MINUTE_MS)
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4)))
    ):
        if not starts or start - starts[-1] > 60 * MINUTE_MS:
            starts.append(start)
    events: list[tuple[int, dict[str, Any]]] = []
    at, referrer = 0, ""

    def add(body: dict[str, Any], path: str, query: str = "") -> None:
        nonlocal at
        page = {"url": f"https://shop.example{path}{query}", "path": path,
                "referrer": referrer, "title": "Shop"}  # fmt: skip
        context = {"ip": ip, "userAgent": agent, "locale": "en-US", "page": page}
        when = datetime.fromtimestamp(at / 1000, UTC).isoformat()
        events.append((at, {**body, "anonymousId": anonymous_id, "messageId": new_id(),
                            "timestamp": when, "context": context}))  # fmt: skip
        at += rng.randint(10_000, 120_000)

    for number, start in enumerate(starts):
        at, referrer = start, rng.choice(REFERRERS)
        add({"type": "page", "name": "Home"}, "/", CAMPAIGN if rng.random() < 0.2 else "")
        if index % 10 == 0 and number == len(starts) - 1:
            traits = {"email": f"visitor{index}@example.com", "firstName": "Alex"}
            add({"type": "identify", "userId": f"user-{new_id()[:18]}", "traits": traits},
                "/account")  # fmt: skip
        cart: list[dict[str, Any]] = []
        for _ in range(rng.randint(1, 6)):
            category = favourite if rng.random() < 0.7 else rng.choice(SHOP_CATEGORIES)
            product = {"product_id": f"p{rng.randint(1, 20_000)}", "category": category,
                       "brand": rng.choice(BRANDS),
                       "price": round(rng.uniform(15, 250), 2)}  # fmt: skip
            roll = rng.random()
            if roll < 0.65:
                add({"type": "track", "event": "Product Viewed", "properties": product},
                    f"/products/{product['product_id']}")  # fmt: skip
            elif roll < 0.75:
                add({"type": "track", "event": "Products Searched",
                     "properties": {"query": rng.choice(QUERIES)}}, "/search")  # fmt: skip
            elif roll < 0.88:
                add({"type": "page", "name": "Category", "properties": {"category": category}},
                    f"/c/{category}")  # fmt: skip
            else:
                cart.append({**product, "quantity": 1})
                add({"type": "track", "event": "Product Added", "properties": cart[-1]}, "/cart")
        if cart and rng.random() < 0.5:
            order = {"order_id": new_id()[:12], "currency": "USD", "products": cart,
                     "revenue": round(sum(line["price"] for line in cart), 2)}  # fmt: skip
            add({"type": "track", "event": "Order Completed", "properties": order}, "/done")
    return events


class Records:
    """Typical visitors' events as the log would hand them to the context stage: decoded,
    stamped and enriched (with the packaged GeoIP database, as the server does), all in
    time order, as a live shop's events arrive. (In order across all visitors: expiry
    sweeps follow the latest time seen, and the embedded store's activity index assumes
    time goes forward.) The visitors' events are held encoded while they are sorted:
    about 6 KB per visitor."""

    def __init__(self, seed: int, end_ms: int) -> None:
        self.seed = seed
        self.end_ms = end_ms
        self.enricher = Enricher(GeoLocator(), ReferrerClassifier(frozenset()), "truncate")
        self.events = 0

    def __call__(self, first: int, count: int) -> Iterator[EventRecord]:
        encode = msgspec.json.encode
        timeline = [
            (at_ms, encode(body))
            for index in range(first, first + count)
            for at_ms, body in visitor_timeline(index, self.seed, self.end_ms)
        ]
        timeline.sort(key=lambda pair: pair[0])  # (stable: a visitor's order is kept)
        for at_ms, body in timeline:
            event, error = decode_event(body, None)
            assert event is not None, error
            stamp(event, datetime.fromtimestamp(at_ms / 1000, UTC))
            self.events += 1
            yield EventRecord(
                event, self.enricher(event, None, None, at_ms), seq=self.events, at_ms=at_ms
            )


def copy_state(source: EmbeddedStore, target: RedisStore, watermark_ms: int) -> int:
    """Write every profile and identity link of `source` with `target.commit` (one commit
    script per profile: what a worker's last event on that profile writes, less the event
    stream entry). Returns how many profiles."""
    links: dict[str, list[str]] = defaultdict(list)
    for key, profile_id in source.links().items():
        links[profile_id].append(key)
    written = 0
    for profile in source.profiles():
        changes = Changes(source.applied_seq, watermark_ms)
        changes.put(profile)
        for key in links.get(profile.id, ()):
            changes.link(key, profile.id)
        for change in source.segment_history(profile.id, 1000):  # (none: no segments)
            changes.add_transition(change)
        target.commit(changes)
        written += 1
    return written


def keys_of(client: redis.Redis, prefix: str) -> list[bytes]:
    return list(client.scan_iter(match=f"{prefix}*", count=5000))


def memory_by_kind(client: redis.Redis, prefix: str) -> dict[str, dict[str, float]]:
    """MEMORY USAGE (key, value and its entry; all elements counted) of every key under
    `prefix`, summed by kind: profile, link, history, lease, and each other key by name."""
    keys = keys_of(client, prefix)
    sizes: dict[str, list[int]] = defaultdict(list)
    for start in range(0, len(keys), 2000):
        page = keys[start : start + 2000]
        pipe = client.pipeline(transaction=False)
        for key in page:
            pipe.memory_usage(key, samples=0)
        for key, usage in zip(page, pipe.execute(), strict=True):
            name = key.decode()[len(prefix) :]
            sizes[name.rsplit(":", 1)[-1] if name.startswith("{") else name].append(usage or 0)
    found: dict[str, dict[str, float]] = {}
    for kind, values in sizes.items():
        values.sort()
        found[kind] = {
            "keys": len(values),
            "bytes": sum(values),
            "median": values[len(values) // 2],
            "p90": values[int(0.9 * len(values))],
        }
    return found


def shared_keys(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """What the workers' run left in Redis besides profiles and links: the streams (with
    their length) and the indexes."""
    found: dict[str, Any] = {}
    for kind, row in memory_by_kind(client, prefix).items():
        if kind in ("events", "erasures"):
            row["entries"] = client.xlen(shared_key(prefix, kind))
        elif kind == "learning":
            row["entries"] = client.xlen(f"{prefix}learning")
        found[kind] = row
    return found


def fresh_prefix(client: redis.Redis, stem: str, digits: int = 6) -> str:
    """A key prefix under which Redis holds nothing yet."""
    while True:
        prefix = f"{stem}{uuid.uuid4().hex[:digits]}:"
        if not keys_of(client, prefix):
            return prefix


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    deleted = 0
    keys = keys_of(client, prefix)
    for start in range(0, len(keys), 1000):
        if isinstance(client, RedisCluster):  # (one slot per command)
            pipe = client.pipeline()
            for key in keys[start : start + 1000]:
                pipe.unlink(key)
            deleted += sum(pipe.execute())
        else:
            deleted += client.unlink(*keys[start : start + 1000])
    return deleted


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def load_range(
    url: str, prefix: str, seed: int, end_ms: int, first: int, count: int, work: str
) -> dict[str, Any]:
    """Apply visitors first..first+count through a ContextStage on an embedded store (in
    memory; never flushed), then write the state to Redis under `prefix`."""
    records = Records(seed, end_ms)
    embedded = EmbeddedStore(Path(work) / f"{prefix.strip(':')}-{first}.db", flush_seconds=1e9)
    stage = ContextStage(embedded)
    started = time.perf_counter()
    for record in records(first, count):
        stage.apply(record)
    applied = time.perf_counter() - started
    target = RedisStore(connect_redis(url), prefix=prefix, worker=f"bench-memory-{first}")
    started = time.perf_counter()
    written = copy_state(embedded, target, stage.watermark_ms)
    wrote = time.perf_counter() - started
    target.close()
    embedded.close()
    return {
        "events": records.events,
        "apply_seconds": round(applied, 1),
        "write_seconds": round(wrote, 1),
        "profiles": written,
        "failed": stage.failed,
    }


def memory(
    args: argparse.Namespace, client: redis.Redis, prefixes: list[str], work: Path
) -> dict[str, Any]:
    n = args.profiles
    sample = min(n, max(1000, n // 100))
    end_ms = int(time.time() * 1000)
    seed = 5
    found: dict[str, Any] = {"profiles": n, "sample": sample}
    # Short prefixes of the default's length ("intently:", 9 characters), so that key
    # sizes are the ones a deployment would have.
    live, fast_sample, fast = (fresh_prefix(client, "ib") for _ in range(3))
    prefixes.extend([live, fast_sample, fast])

    # (a) The sample, event by event, as a worker applies them: leases, one commit script
    # (with the event stream entry) per event.
    records = Records(seed, end_ms)
    store = RedisStore(connect_redis(args.redis), prefix=live, worker="bench-memory")
    stage = ContextStage(store)
    commands = RedisCounters(client).read()["evalsha"]
    started = time.perf_counter()
    for record in records(0, sample):
        stage.apply(record)
    seconds = time.perf_counter() - started
    found["worker_path"] = {
        "events": records.events,
        "seconds": round(seconds, 2),
        "events_per_s": records.events / seconds,
        "evalsha_per_event": (RedisCounters(client).read()["evalsha"] - commands) / records.events,
        "lease_retries": store.lease_retries,
        "failed": stage.failed,
        "profiles": store.profile_count(),
        "by_kind": memory_by_kind(client, live),
    }
    store.close()

    # (b) The same sample, then the whole population (in two processes, half the visitors
    # each), applied in process through the same ContextStage on the embedded store and
    # written with RedisStore.commit.
    found["sample_fast_path"] = load_range(
        args.redis, fast_sample, seed, end_ms, 0, sample, str(work)
    )
    found["sample_fast_path"]["by_kind"] = memory_by_kind(client, fast_sample)
    delete_prefix(client, live)
    delete_prefix(client, fast_sample)
    halves = [(0, n // 2), (n // 2, n - n // 2)]
    before = used_memory(client)
    started = time.perf_counter()
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(halves), mp_context=spawn) as pool:
        futures = [
            pool.submit(load_range, args.redis, fast, seed, end_ms, first, count, str(work))
            for first, count in halves
        ]
        loads = [future.result() for future in futures]
    seconds = time.perf_counter() - started
    after = used_memory(client)
    events = sum(x["events"] for x in loads)
    found["population"] = {
        "events": events,
        "events_per_profile": events / n,
        "seconds": round(seconds, 1),
        "apply_seconds": max(x["apply_seconds"] for x in loads),
        "write_seconds": max(x["write_seconds"] for x in loads),
        "profiles": sum(x["profiles"] for x in loads),
        "failed": sum(x["failed"] for x in loads),
        "used_memory_delta": after - before,
        "by_kind": memory_by_kind(client, fast),
    }
    pop = found["population"]
    live_ids = client.zrange(f"{fast}live-sessions", 0, -1)
    pipe = client.pipeline(transaction=False)
    for profile_id in live_ids:
        pipe.memory_usage(f"{fast}{{{_text(profile_id)}}}:profile", samples=0)
    sizes = sorted(x or 0 for x in pipe.execute()) if live_ids else [0]
    found["live_session_profiles"] = {
        "count": len(live_ids),
        "median_bytes": sizes[len(sizes) // 2],
    }

    def per_profile(by_kind: dict[str, dict[str, float]], profiles: int) -> float:
        return sum(row["bytes"] for kind, row in by_kind.items() if kind != "events") / profiles

    found["per_profile"] = {
        "used_memory_bytes": pop["used_memory_delta"] / pop["profiles"],
        "memory_usage_bytes": per_profile(pop["by_kind"], pop["profiles"]),
        "worker_path_memory_usage_bytes": per_profile(
            found["worker_path"]["by_kind"], found["worker_path"]["profiles"]
        ),
        "sample_fast_path_memory_usage_bytes": per_profile(
            found["sample_fast_path"]["by_kind"], found["sample_fast_path"]["profiles"]
        ),
    }
    found["per_million_gb"] = found["per_profile"]["used_memory_bytes"] * MILLION / 1e9
    stream = found["worker_path"]["by_kind"].get("events", {"bytes": 0})
    found["stream_entry_bytes"] = stream["bytes"] / found["worker_path"]["events"]
    found["stream_at_cap_gb"] = found["stream_entry_bytes"] * STREAM_LENGTH / 1e9
    delete_prefix(client, fast)
    return found


# -- the run -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="the shared Redis")
    parser.add_argument("--seconds", type=int, default=5, help="per saturation run")
    parser.add_argument("--warmup", type=int, default=4, help="seconds of each warm-up load")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between runs")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections per worker")
    parser.add_argument("--rate", type=int, default=300, help="open-loop requests/s per worker")
    parser.add_argument("--rate-seconds", type=int, default=5, help="per fixed-rate run")
    parser.add_argument(
        "--spike-base",
        type=int,
        default=100,
        help="events/s per worker before and after the spike (10x during)",
    )
    parser.add_argument("--spike-seconds", type=int, default=30)
    parser.add_argument(
        "--spike-connections",
        type=int,
        default=128,
        help="open-loop client connections per worker in the spike",
    )
    parser.add_argument(
        "--profiles", type=int, default=100_000, help="profiles for the memory part"
    )
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS)
    )
    parser.add_argument(
        "--postgres", default="postgresql://127.0.0.1:5432/postgres",
        help="a PostgreSQL the run may create a database of its own in, for the Redis "
        "workers' --database (dropped at the end); 'none' to leave PostgreSQL out",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := set(parts) - set(PARTS):
        sys.exit(f"unknown parts: {sorted(unknown)}")
    if {"throughput", "spike"} & set(parts) and shutil.which("wrk") is None:
        sys.exit("bench/cluster.py needs wrk: apt-get install wrk")
    client = connect(args.redis)
    client.ping()
    cluster = isinstance(client, RedisCluster)
    if cluster and {"memory"} & set(parts):
        sys.exit("the memory part needs one Redis, not a Cluster: --parts throughput,spike")
    prefix = fresh_prefix(client, "intently-bench-cluster:", 12)
    prefixes = [prefix]
    work = Path(tempfile.mkdtemp(prefix="intently-bench-cluster-"))
    results: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "redis_version": servers_of(client)[0].info("server")["redis_version"],
        "redis_primaries": len(servers_of(client)),
        "redis_keys_before": client.dbsize(),
        "command": command_line(args),
        "load_average_before": os.getloadavg()[0],
    }
    workers: list[Worker] = []
    databases: list[str] = []
    started = time.perf_counter()
    try:
        if "throughput" in parts:
            workers = [Worker(work, "embedded", None, None, args.connections)]
            results["embedded"] = throughput(workers, args, None)
            results["embedded"]["log"] = warnings(workers)
            stop(workers)
        if {"throughput", "spike"} & set(parts):
            database = create_database(args.postgres)
            if database:
                databases.append(database)
            results["postgres"] = database is not None
            workers = [
                Worker(work, f"w{n}", args.redis, prefix, args.connections, database)
                for n in range(2)
            ]
            counters = RedisCounters(client)
            if "throughput" in parts:
                results["redis"] = throughput(workers, args, counters)
            if "spike" in parts:
                if "throughput" not in parts:  # the spike's visitors exist from the start
                    at_once(workers, lambda w: w.wrk.run(f"{w.base}/v1/events", 1, args.warmup))
                results["spike"] = spike(workers, args, counters)
            results["redis_log"] = warnings(workers)
            if database:  # what waited to be shipped when the load stopped, and after 10 s
                results["archive_backlog"] = [
                    metric_sum(w.port, "intently_archive_backlog") for w in workers
                ]
                time.sleep(10)
                results["archive_backlog_after_10s"] = [
                    metric_sum(w.port, "intently_archive_backlog") for w in workers
                ]
                results["archived_events"] = count_rows(database, "events")
                results["archived_decisions"] = count_rows(database, "decisions")
            stop(workers)
            results["redis_shared_keys"] = shared_keys(client, prefix)
        if "memory" in parts:
            began = time.perf_counter()
            results["memory"] = memory(args, client, prefixes, work)
            results["memory"]["seconds_taken"] = round(time.perf_counter() - began, 1)
    finally:
        stop(workers)
        for name in prefixes:
            delete_prefix(client, name)
        for database in databases:
            drop_database(args.postgres, database)
        shutil.rmtree(work, ignore_errors=True)
    results["seconds_taken"] = round(time.perf_counter() - started, 1)
    results["redis_keys_after"] = client.dbsize()
    results["load_average_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        report(results, args)


def create_database(admin_url: str) -> str | None:
    """A database of this run's own on the PostgreSQL at `admin_url`; its URL."""
    if admin_url == "none":
        return None
    name = f"intently_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_database(admin_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def count_rows(url: str, table: str) -> int:
    with psycopg.connect(url) as connection:
        found = connection.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        ).fetchone()
    return int(found[0]) if found else 0


def stop(workers: list[Worker]) -> None:
    while workers:
        workers.pop().stop()


_NOTEWORTHY = re.compile(r"WARNING|ERROR|Traceback|CRITICAL")


def warnings(workers: list[Worker]) -> dict[str, list[str]]:
    """The workers' log lines at WARNING and above (the last 20 of each)."""
    return {
        w.name: [line for line in w.log_lines() if _NOTEWORTHY.search(line)][-20:] for w in workers
    }


def command_line(args: argparse.Namespace) -> str:
    options = " ".join(
        f"--{name.replace('_', '-')} {value}"
        for name, value in vars(args).items()
        if name not in ("json", "redis") and value is not None
    )
    return f"python bench/cluster.py {options}"


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"intently cluster benchmark: {r['cpus']} CPUs, Redis {r['redis_version']} at "
        f"{args.redis} ({r['redis_primaries']} primaries; "
        f"{r['redis_keys_before']} keys in it before the run); "
        f"{r['seconds_taken']:.0f} s; 1-minute load average {r['load_average_before']:.2f} "
        f"before, {r['load_average_after']:.2f} after"
    )
    if r.get("postgres"):
        print(
            "PostgreSQL: the Redis pair's --database (a fresh database of this run): "
            f"{r.get('archived_events', 0):,} events and {r.get('archived_decisions', 0):,} "
            f"decision batches archived; shipping backlog when the load stopped "
            f"{r.get('archive_backlog')}, 10 s later {r.get('archive_backlog_after_10s')}"
        )
    else:
        print("PostgreSQL: not in this run (--postgres none)")
    print(f"reproduce: {r['command']}")
    taken = [
        f"{name} {r[name]['seconds_taken']:.0f} s"
        + (f" (set-up {r[name]['set_up_seconds']:.0f} s)" if "set_up_seconds" in r[name] else "")
        for name in ("embedded", "redis", "spike", "memory")
        if name in r
    ]
    print("time taken: " + ", ".join(taken))
    if "embedded" in r:
        report_throughput(r["embedded"], r.get("redis"), args)
    if "spike" in r:
        report_spike(r["spike"], r.get("redis"), args)
    if "redis_shared_keys" in r:
        report_shared_keys(r["redis_shared_keys"])
    logs = {**r.get("embedded", {}).get("log", {}), **r.get("redis_log", {})}
    for name, lines in logs.items():
        if lines:
            print(f"worker {name}: {len(lines)} log lines at WARNING or above; the last ones:")
            for line in lines[-5:]:
                print(f"  {line[:200]}")
    if "memory" in r:
        report_memory(r["memory"])
    print(f"Redis keys after the run (this run's all deleted): {r['redis_keys_after']}")


def share(x: dict[str, Any], of: dict[str, Any]) -> str:
    return f"{x['requests_per_s'] / of['requests_per_s']:.0%}"


def report_throughput(e: dict[str, Any], d: dict[str, Any] | None, args: Any) -> None:
    print()
    print(
        f"saturation: wrk -t1 -c{args.connections} per worker, {args.seconds} s; the two Redis "
        "workers driven at once, one wrk each (req/s summed; p50/p99: the worse worker's)"
    )
    side = f"{'req/s':>9}{'events/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'non2xx':>7}"
    print(f"{'run':<16}{'1 worker, embedded':>41}{'2 workers, Redis':>41}")
    print(f"{'':<16}{side}{side}")
    for name in ("hello", "single", "batch100", "decide"):
        print(row(name, e, d))
    print(
        f"open loop, {args.rate} req/s per worker for {args.rate_seconds} s (latency from "
        "each request's scheduled send):"
    )
    for name in ("hello_at_rate", "single_at_rate", "decide_at_rate"):
        print(row(name, e, d))
    print(f"share of hello: embedded single {share(e['single'], e['hello'])}, decide "
          f"{share(e['decide'], e['hello'])}", end="")  # fmt: skip
    if d is None:
        print()
        return
    print(f"; Redis x2 single {share(d['single'], d['hello'])}, "
          f"decide {share(d['decide'], d['hello'])}")  # fmt: skip
    for name in ("single", "batch100"):
        x = d[name]
        each = [round(w["requests_per_s"]) for w in x["per_worker"]]
        print(
            f"Redis {name}: req/s per worker {each}"
            f"; EVALSHA per event {x['evalsha_per_event']:.2f} (3 without contention: lease "
            f"the identity, lease the profile, commit); Redis CPU "
            f"{x['redis_cpu_share']:.0%} of a core"
        )
    print(f"duplicates (should be 0): embedded {e['duplicates']:.0f}, Redis {d['duplicates']:.0f}")
    print(f"decisions by placement and outcome: embedded {e['decisions']}; Redis {d['decisions']}")


def row(name: str, *sides: dict[str, Any] | None) -> str:
    line = f"{name:<16}"
    for side in sides:
        if side is None or name not in side:
            continue
        x = side[name]
        line += (
            f"{x['requests_per_s']:>9.0f}{x.get('events_per_s', 0):>9.0f}"
            f"{x['p50_ms']:>8.1f}{x['p99_ms']:>8.1f}{x['non_2xx']:>7.0f}"
        )
    return line


def report_spike(s: dict[str, Any], d: dict[str, Any] | None, args: Any) -> None:
    workers = len(s["rss"])
    print()
    print(
        f"spike: {workers} Redis workers, single events open loop, "
        f"{args.spike_connections} client connections per worker; rate per worker"
    )
    print(
        f"{'phase':<8}{'rate':>6}{'s':>4}{'sent':>8}{'2xx':>8}{'503':>6}{'other':>6}"
        f"{'fail':>6}{'err %':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
    )
    for name, x in s["phases"].items():
        print(
            f"{name:<8}{x['rate_per_worker']:>6}{x['seconds']:>4.0f}{x['sent']:>8}{x['ok']:>8}"
            f"{x['status_503']:>6}{x['other_non_2xx']:>6}{x['failed']:>6}"
            f"{100 * x['error_rate']:>7.2f}{x['p50_ms']:>9.1f}{x['p99_ms']:>9.1f}"
            f"{x['max_ms']:>9.1f}"
        )
    for name, m in s["rss"].items():
        print(
            f"RSS {name}: before {m['before']['VmRSS']:.0f} MB, peak during "
            f"{m['peak_rss_mb']:.0f} MB, after {m['after']['VmRSS']:.0f} MB, "
            f"5 s later {m['after_5s']['VmRSS']:.0f} MB"
        )
    if d is not None:
        peak = workers * 10 * args.spike_base
        capacity = d["single"]["requests_per_s"]
        print(
            f"the spike's {peak} events/s in all: {peak / capacity:.0%} of the saturation "
            f"rate measured above ({capacity:.0f} single-event requests/s)"
        )
    print(
        f"shed by the workers (intently_requests_shed_total): {s['shed']:.0f}; events "
        f"logged {s['events_logged']}; EVALSHA per event {s['evalsha_per_event']:.2f}; "
        f"Redis CPU {s['redis_cpu_share']:.0%} of a core; duplicates {s['duplicates']:.0f}"
    )


def report_shared_keys(keys: dict[str, dict[str, Any]]) -> None:
    print("what the Redis workers left in Redis (MEMORY USAGE):")
    for kind, x in sorted(keys.items(), key=lambda pair: -pair[1]["bytes"]):
        # (the learning stream is kept by age, 60 s, not by length)
        cap = {"events": STREAM_LENGTH}.get(kind)
        line = f"  {kind:<20}{x['keys']:>6} keys {x['bytes'] / MB:>8.1f} MB"
        if x.get("entries"):
            line += f"; {x['entries']} entries, {x['bytes'] / x['entries']:.0f} B each"
            if cap:
                line += (
                    f"; at its cap of about {cap:,}: {x['bytes'] / x['entries'] * cap / 1e9:.2f} GB"
                )
        print(line)


def report_memory(m: dict[str, Any]) -> None:
    pop, worker = m["population"], m["worker_path"]
    pp = m["per_profile"]
    print()
    print(
        f"Redis memory: {pop['profiles']} typical profiles, {pop['events']} events "
        f"({pop['events_per_profile']:.1f} each) in {pop['seconds']} s: two processes, each "
        f"applying half through ContextStage ({pop['apply_seconds']} s) then writing it "
        f"with RedisStore.commit ({pop['write_seconds']} s)"
    )
    print(f"{'kind':<28}{'keys':>7}{'bytes':>12}{'per profile':>13}{'median':>8}{'p90':>8}")
    for kind, x in sorted(pop["by_kind"].items(), key=lambda pair: -pair[1]["bytes"]):
        spread = f"{x['median']:>8}{x['p90']:>8}" if x["keys"] > 1 else ""
        per = x["bytes"] / pop["profiles"]
        print(f"{kind:<28}{x['keys']:>7}{x['bytes']:>12}{per:>13.0f}{spread}")
    live = m["live_session_profiles"]
    print(
        f"profiles whose session is still live at the end (last event within 30 min): "
        f"{live['count']}, median {live['median_bytes']} B (the others' sessions have ended)"
    )
    print(
        f"per profile: {pp['used_memory_bytes']:.0f} B (INFO used_memory, before/after); "
        f"{pp['memory_usage_bytes']:.0f} B (MEMORY USAGE of every key, summed)"
    )
    print(
        f"per 1,000,000 profiles: {m['per_million_gb']:.2f} GB (used_memory; the floor: at "
        "most 1 GB; Metarank reports ~0.8 GB)"
    )
    print(
        f"check: {m['sample']} of them applied event by event as a worker does (ContextStage "
        f"on RedisStore, {worker['events_per_s']:.0f} events/s in one process, "
        f"{worker['evalsha_per_event']:.2f} EVALSHA per event, {worker['lease_retries']} lease "
        f"retries): {pp['worker_path_memory_usage_bytes']:.0f} B per profile, against "
        f"{pp['sample_fast_path_memory_usage_bytes']:.0f} B written from the in-process state"
    )
    print(
        "not per profile: the event stream (<prefix>{shared}:events, "
        f"about {STREAM_LENGTH:,} entries "
        f"kept): {m['stream_entry_bytes']:.0f} B per entry of these events, "
        f"{m['stream_at_cap_gb']:.2f} GB when full"
    )


if __name__ == "__main__":
    main()
