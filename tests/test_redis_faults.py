"""Faults of the scale-out setup, each for real: Redis stopped and started again under an
engine, and a worker killed with SIGKILL while events stream in.

Each test runs its own redis-server (tests/services.py `PrivateRedis`), so it can stop it
without disturbing the shared one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest

from intently import Engine, ManualClock
from services import PrivateRedis
from support import START, client_for, free_port, make_settings, wait_ready

WRITE_KEY, SECRET_KEY = "wk_faults", "sk_faults"


def view(n: int, visitor: str = "v1") -> dict[str, object]:
    return {"type": "track", "event": "Product Viewed", "anonymousId": visitor,
            "messageId": f"{visitor}-m{n}",
            "properties": {"product_id": f"p{n}", "category": "running", "price": 10}}  # fmt: skip


@pytest.mark.anyio
async def test_redis_down_degrades_refuses_with_503_and_recovers_by_itself(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path / "data", state_store=private_redis.url)
    engine = Engine(settings, clock=ManualClock(START))
    admin_headers = {"Authorization": f"Bearer {settings.secret_key}"}
    try:
        async with client_for(engine) as client:
            answer = await client.post("/v1/events", json={"batch": [view(n) for n in range(3)]})
            assert answer.json() == {"accepted": 3}
            private_redis.stop()

            # Decisions answer at once with their fallbacks, saying why.
            started = time.perf_counter()
            decided = await client.post(
                "/v1/decide", json={"anonymousId": "v1", "placements": [{"id": "home_hero"}]}
            )
            elapsed = time.perf_counter() - started
            assert decided.status_code == 200
            decision = decided.json()["decisions"][0]
            assert decision["policy"]["name"] == "fallback"
            assert "state store is unavailable" in decision["degraded"]
            assert elapsed < 1.0  # one connection attempt at most (0.5 s timeout)

            # Events in flight when the outage is found: durable, not applied, 503.
            in_flight = [view(n) for n in range(3, 6)]
            refused = await client.post("/v1/events", json={"batch": in_flight})
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert refused.headers["content-type"] == "application/problem+json"
            assert "kept and applied" in refused.json()["detail"]
            # While behind, new events are refused before anything is stored.
            later = await client.post("/v1/events", json={"batch": [view(6)]})
            assert later.status_code == 503
            assert "nothing was stored" in later.json()["detail"]
            assert engine.context.recover(engine.log) == 0  # still down

            private_redis.start()  # same port, its append-only file kept the state
            assert engine.context.recover(engine.log) == 3  # what waited in the log
            assert not engine.context.behind
            # The clients retry with the same messageIds: duplicates, counted once.
            again = await client.post("/v1/events", json={"batch": [*in_flight, view(6)]})
            assert again.json() == {"accepted": 1, "duplicates": 3}
        async with client_for(engine, SECRET_KEY) as admin:
            profile = (await admin.get("/v1/profiles/v1", headers=admin_headers)).json()
        assert profile["counts"] == {"Product Viewed": 7}
        assert "p6" in profile["session"]["recent_products"]
    finally:
        engine.close()


# -- kill -9 of a worker under load -----------------------------------------------------------


def serve(
    data_dir: Path, port: int, redis_url: str, prefix: str = "intently:"
) -> subprocess.Popen[bytes]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("INTENTLY_")}
    environment.update(
        INTENTLY_STORE=redis_url, INTENTLY_WRITE_KEY=WRITE_KEY, INTENTLY_SECRET_KEY=SECRET_KEY,
        INTENTLY_GEOIP_DB="off", INTENTLY_REDIS_PREFIX=prefix,
    )  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "intently", "serve", "--port", str(port), "--data-dir",
         str(data_dir), "--log-level", "warning"],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def post(port: int, path: str, body: object, key: str = WRITE_KEY) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
def test_a_worker_killed_under_load_loses_no_acknowledged_event(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # (on a Cluster, under a prefix of its own: the cluster serves the whole run)
    server: Any = request.getfixturevalue(
        "redis_cluster" if kind == "redis-cluster" else "private_redis"
    )
    url = server.url
    data_dir, port = tmp_path / "worker", free_port()
    prefix = f"kill-{tmp_path.name}:"
    worker = serve(data_dir, port, url, prefix)
    wait_ready(port, worker)
    acknowledged: list[int] = []
    sent: list[int] = []
    stop = threading.Event()

    def load(visitor: str) -> None:
        n = 0
        while not stop.is_set():
            sent.append(n)
            try:
                if post(port, "/v1/events", view(n, visitor)) == 200:
                    acknowledged.append(n)
            except OSError:  # the worker is gone: this one was never acknowledged
                return
            n += 1

    thread = threading.Thread(target=load, args=("steady",))
    thread.start()
    time.sleep(1.5)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    stop.set()
    thread.join(timeout=30)
    assert len(acknowledged) > 20

    # The worker comes back on the same data dir: its log holds every acknowledged event,
    # and it applies to Redis what it had not applied yet.
    restarted = serve(data_dir, port, url, prefix)
    try:
        wait_ready(port, restarted)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            answer = client.get(
                "/v1/profiles/steady", headers={"Authorization": f"Bearer {SECRET_KEY}"}
            )
        assert answer.status_code == 200, answer.text
        views = answer.json()["counts"]["Product Viewed"]
        # Every acknowledged event is counted; one sent as the worker died may be too.
        assert len(acknowledged) <= views <= len(sent)
    finally:
        restarted.terminate()
        restarted.wait(timeout=30)
