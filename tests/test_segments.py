"""Live segments through the API: definitions, membership on every event, entries and exits
with their time, consent, the config file, and signed webhooks to a real HTTP receiver."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from intently import Engine, ManualClock
from intently.configfile import ConfigError
from support import SECRET_KEY, START, client_for, make_settings, track

pytestmark = pytest.mark.anyio

BIG_CART = "session.cart.value > 100"


def at(second: int) -> str:
    return f"2026-11-23T10:{second // 60:02d}:{second % 60:02d}Z"


def added(anonymous: str, price: float, second: int, product: str = "p1") -> dict[str, Any]:
    return track(event="Product Added", anonymousId=anonymous, timestamp=at(second),
                 properties={"product_id": product, "price": price, "quantity": 1})  # fmt: skip


def removed(anonymous: str, second: int, product: str = "p1") -> dict[str, Any]:
    return track(event="Product Removed", anonymousId=anonymous, timestamp=at(second),
                 properties={"product_id": product, "quantity": 1})  # fmt: skip


@pytest.fixture
async def admin(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(engine, SECRET_KEY) as c:
        yield c


async def send(client: httpx.AsyncClient, *events: dict[str, Any]) -> None:
    response = await client.post("/v1/events", json={"batch": list(events)})
    assert response.status_code == 200, response.text


async def define(admin: httpx.AsyncClient, name: str, expression: str, **extra: Any) -> Any:
    return await admin.put(f"/v1/segments/{name}", json={"expression": expression, **extra})


async def segments_of(admin: httpx.AsyncClient, any_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await admin.get(f"/v1/profiles/{any_id}")).json()["segments"]
    return body


async def test_entries_and_exits_follow_the_events_with_their_time(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, engine: Engine
) -> None:
    assert (await define(admin, "big-cart", BIG_CART)).status_code == 201
    await send(client, added("s1", 80, 0))
    assert (await segments_of(admin, "s1"))["current"] == {}
    await send(client, added("s1", 30, 10, product="p2"))
    state = await segments_of(admin, "s1")
    entered_ms = int(time_of(at(10)))
    assert state["current"] == {"big-cart": entered_ms}
    await send(client, removed("s1", 20))
    state = await segments_of(admin, "s1")
    assert state["current"] == {}
    assert state["history"] == [
        {"segment": "big-cart", "entered": True, "at": entered_ms},
        {"segment": "big-cart", "entered": False, "at": int(time_of(at(20)))},
    ]
    listed = (await admin.get("/v1/segments/big-cart")).json()
    assert listed["members"] == 0


def time_of(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp() * 1000


async def test_only_segments_reading_what_changed_are_evaluated(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, engine: Engine
) -> None:
    await define(admin, "big-cart", BIG_CART)
    await define(admin, "in-india", 'geo.country == "IN"')
    await send(client, added("t1", 10, 0))  # a new session: everything is evaluated
    before = engine.membership.evaluations
    # A scroll event with no geo/device change touches neither the cart nor 'where'.
    scroll = track(event="Scroll Depth", anonymousId="t1", timestamp=at(5),
                   properties={"depth": 50}, context={})  # fmt: skip
    await client.post("/v1/events", json=scroll, headers={"user-agent": ""})
    assert engine.membership.evaluations == before
    await send(client, added("t1", 10, 6, product="p2"))
    assert engine.membership.evaluations > before


async def test_defining_a_segment_evaluates_every_profile_at_once(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await send(client, added("b1", 150, 0), added("b2", 20, 1), added("b3", 500, 2))
    response = await define(admin, "big-cart", BIG_CART)
    assert response.json()["members"] == 2
    assert response.json()["changed"] == 2
    # A replacement keeps members that still match and moves the others.
    response = await define(admin, "big-cart", "session.cart.value > 200")
    assert response.status_code == 200
    assert (response.json()["members"], response.json()["changed"]) == (1, 1)
    assert (await segments_of(admin, "b3"))["history"][-1]["entered"] is True
    assert len((await segments_of(admin, "b3"))["history"]) == 1
    assert (await admin.delete("/v1/segments/big-cart")).status_code == 204
    assert (await segments_of(admin, "b3"))["current"] == {}
    assert (await admin.get("/v1/segments/big-cart")).status_code == 404


async def test_refusing_personalization_leaves_every_segment(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await define(admin, "big-cart", BIG_CART)
    await send(client, added("c1", 150, 0))
    assert "big-cart" in (await segments_of(admin, "c1"))["current"]
    response = await admin.put("/v1/profiles/c1/consent", json={"personalization": False})
    assert response.json()["personalization"] is False
    assert (await segments_of(admin, "c1"))["current"] == {}
    await send(client, added("c1", 500, 5, product="p9"))
    state = (await admin.get("/v1/profiles/c1")).json()
    assert state["segments"]["current"] == {}
    # Without consent, the new interest is not kept either.
    assert state["session"]["recent_products"] == []
    assert [i["product_id"] for i in state["session"]["cart"]["items"]] == ["p1"]


async def test_bad_definitions_are_precise_4xx_and_change_nothing(
    admin: httpx.AsyncClient,
) -> None:
    assert (await define(admin, "ok", BIG_CART)).status_code == 201
    response = await define(admin, "ok", "session.cart.value >> 1")
    assert response.status_code == 400
    problem = response.json()
    assert problem["type"] == "urn:intently:problem:invalid-expression"
    assert (problem["pointer"], problem["position"]) == ("/expression", 20)
    assert (await admin.get("/v1/segments/ok")).json()["expression"] == BIG_CART
    assert (await define(admin, "Bad Name", BIG_CART)).status_code == 400
    response = await admin.put("/v1/segments/x", json={"expression": BIG_CART, "bogus": 1})
    assert response.status_code == 400
    response = await define(admin, "x", BIG_CART, webhook="http://127.0.0.1:9/hook")
    assert response.json()["type"] == "urn:intently:problem:webhook-secret-missing"
    assert (await admin.delete("/v1/segments/none")).status_code == 404


async def test_segments_need_the_admin_key(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/segments")).status_code == 403
    assert (await define(client, "x", BIG_CART)).status_code == 403


def test_config_file_segments_load_at_start_and_are_read_only(tmp_path: Path) -> None:
    config = tmp_path / "segments.yaml"
    config.write_text('segments:\n  vip:\n    expression: "profile.traits.vip == true"\n')
    engine = Engine(make_settings(tmp_path / "d", segments_file=config), clock=ManualClock(START))
    try:
        segment = engine.segments.get("vip")
        assert segment is not None
        assert segment.source == "config"
    finally:
        engine.close()
    config.write_text("segments:\n  broken:\n    expression: 'session.cart.value >'\n")
    with pytest.raises(ConfigError, match="broken"):
        Engine(make_settings(tmp_path / "d", segments_file=config))


async def test_api_segments_survive_a_restart(tmp_path: Path) -> None:
    engine = Engine(make_settings(tmp_path / "d"), clock=ManualClock(START))
    async with client_for(engine, SECRET_KEY) as admin:
        await define(admin, "big-cart", BIG_CART)
        await admin.post("/v1/events", json=added("r1", 300, 0))
    engine.close()
    engine = Engine(make_settings(tmp_path / "d"), clock=ManualClock(START))
    try:
        assert engine.membership.members["big-cart"] == 1
        profile = engine.context.lookup("r1")
        assert profile is not None
        assert "big-cart" in profile.segments
    finally:
        engine.close()


# -- webhooks ---------------------------------------------------------------------------------


class Receiver:
    """A real HTTP server that records deliveries and answers with scripted statuses."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver([])
    yield server
    server.close()


@pytest.fixture
async def hooked(tmp_path: Path) -> AsyncIterator[Engine]:
    engine = Engine(
        make_settings(tmp_path / "d", webhook_secret="whsec", webhook_max_attempts=3),
        clock=ManualClock(START),
    )
    engine.webhooks.backoff_seconds = 0.01
    engine.webhooks.start()  # what the app's lifespan does when serving
    engine.membership.listeners.append(engine.webhooks.enqueue)
    yield engine
    await engine.webhooks.stop()
    engine.close()


async def wait_for(condition: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_webhooks_are_signed_retried_and_dead_lettered(
    hooked: Engine, receiver: Receiver
) -> None:
    receiver.statuses = [500, 503]  # two failures, then success
    async with client_for(hooked, SECRET_KEY) as admin:
        await define(admin, "big-cart", BIG_CART, webhook=receiver.url)
        await admin.post("/v1/events", json=added("w1", 300, 0))
        await wait_for(lambda: hooked.webhooks.delivered == 1)
        assert len(receiver.requests) == 3
        headers, body = receiver.requests[-1]
        timestamp, signature = (part.split("=", 1)[1] for part in
                                headers["Intently-Signature"].split(","))  # fmt: skip
        expected = hmac.new(b"whsec", f"{timestamp}.".encode() + body, hashlib.sha256)
        assert hmac.compare_digest(signature, expected.hexdigest())
        payload = json.loads(body)
        assert (payload["type"], payload["segment"]) == ("segment.entered", "big-cart")
        assert headers["Intently-Delivery"] == payload["id"]
        # All attempts fail: dead-lettered after max_attempts, with the reason.
        receiver.statuses = [500] * 10
        await admin.post("/v1/events", json=removed("w1", 5))
        dead_file = hooked.settings.data_dir / "webhooks-dead.jsonl"
        await wait_for(lambda: hooked.webhooks.dead == 1)
        [dead] = [json.loads(line) for line in dead_file.read_text().splitlines()]
        assert dead["attempts"] == 3
        assert "gave up after 3" in dead["reason"]
        assert dead["body"]["type"] == "segment.exited"
        # A 4xx other than 408/429 is not retried.
        receiver.statuses = [410]
        before = len(receiver.requests)
        await admin.post("/v1/events", json=added("w1", 300, 6, product="p3"))
        await wait_for(lambda: hooked.webhooks.dead == 2)
        assert len(receiver.requests) == before + 1


async def test_a_hanging_receiver_never_slows_ingestion(hooked: Engine, tmp_path: Path) -> None:
    # A receiver that accepts connections but never answers.
    import socket

    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(100)
    url = f"http://127.0.0.1:{hang.getsockname()[1]}/hook"
    hooked.webhooks.timeout_seconds = 30
    try:
        async with client_for(hooked, SECRET_KEY) as admin:
            await define(admin, "any-cart", "session.cart.value > 0", webhook=url)
            for n in range(50):  # 50 entries, each a delivery stuck on the receiver
                response = await admin.post("/v1/events", json=added(f"h{n}", 5, n))
                assert response.status_code == 200
            # Every event was acknowledged while not one delivery had finished or failed:
            # ingestion did not wait on the webhooks.
            assert hooked.membership.members["any-cart"] == 50
            assert (hooked.webhooks.delivered, hooked.webhooks.dead) == (0, 0)
        await hooked.webhooks.stop()
        dead_file = hooked.settings.data_dir / "webhooks-dead.jsonl"
        reasons = [json.loads(line)["reason"] for line in dead_file.read_text().splitlines()]
        assert len(reasons) == 50  # nothing silently dropped at shutdown
        hooked.webhooks.start()
    finally:
        hang.close()
