"""`/v1/admin/*`, what the dashboard reads: its figures equal what was sent, the totals
kept as things happen equal the ones computed from the decision log, the secret key is
required, and bad input gets a problem."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from intently import Engine, ManualClock
from intently.act.decisions import DecisionLogReader, DecisionRecord
from intently.api.latencies import bucket_upper_us, latency_bucket, quantile_us
from intently.api.live import LiveSeries
from intently.api.live_placements import from_log
from support import SECRET_KEY, START, WRITE_KEY, client_for, track

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_collection_pauses")]

ROUTES = (
    "/v1/admin/live",
    "/v1/admin/placements",
    "/v1/admin/segments",
    "/v1/admin/profiles/anyone/timeline",
)
BANNERS = [
    {"id": f"b{i}", "kind": "banner", "title": f"Banner {i}", "fields": {"headline": f"H{i}"}}
    for i in range(3)
]
ITEMS = [
    {"id": f"p{i}", "title": f"Shoe {i}", "category": ["Shoes", "running"], "price": 50.0 + i,
     "stock": 10}
    for i in range(12)
]  # fmt: skip


@pytest.fixture
async def admin(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(engine, SECRET_KEY) as found:
        yield found


async def load_catalog(admin: httpx.AsyncClient) -> None:
    assert (await admin.post("/v1/catalog/items", json={"items": ITEMS})).status_code == 200
    assert (await admin.post("/v1/catalog/offers", json={"offers": BANNERS})).status_code == 200


async def decide(client: httpx.AsyncClient, visitor: str) -> dict[str, Any]:
    body = {"anonymousId": visitor, "placements": [{"id": "home_hero"}, {"id": "pdp_recs"}],
            "context": {"product_id": "p1"}}  # fmt: skip
    answer = await client.post("/v1/decide", json=body)
    assert answer.status_code == 200, answer.text
    return {d["placement"]: d for d in answer.json()["decisions"]}


async def send(client: httpx.AsyncClient, *events: dict[str, Any]) -> None:
    answer = await client.post("/v1/events", json={"batch": list(events)})
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == len(events)


def viewed(visitor: str, decision: dict[str, Any]) -> dict[str, Any]:
    return track(event="Decision Viewed", anonymousId=visitor,
                 properties={"decision_id": decision["decision_id"],
                             "placement": decision["placement"]})  # fmt: skip


def clicked(visitor: str, decision: dict[str, Any]) -> dict[str, Any]:
    return track(event="Promotion Clicked", anonymousId=visitor,
                 properties={"promotion_id": decision["items"][0]["id"],
                             "decision_id": decision["decision_id"],
                             "placement": decision["placement"]})  # fmt: skip


def logged(engine: Engine) -> list[DecisionRecord]:
    engine.decisions.flush()
    reader = DecisionLogReader(engine.settings.decision_log_path)
    try:
        return list(reader.decisions())
    finally:
        reader.close()


def exact_quantile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


# -- keys and bad input ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ROUTES)
async def test_the_admin_routes_need_the_secret_key(engine: Engine, path: str) -> None:
    async with client_for(engine, None) as anonymous:
        answer = await anonymous.get(path)
        assert answer.status_code == 401
        assert answer.headers["content-type"] == "application/problem+json"
    async with client_for(engine, WRITE_KEY) as browser:
        answer = await browser.get(path)
        assert answer.status_code == 403
        assert answer.json()["type"] == "urn:intently:problem:forbidden"
    async with client_for(engine, "sk_wrong") as wrong:
        assert (await wrong.get(path)).status_code == 401


async def test_bad_parameters_and_unknown_people_are_problems(
    admin: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    for step in ("0", "7", "x", ""):
        answer = await admin.get("/v1/admin/live", params={"step": step})
        assert answer.status_code == 400, step
        assert answer.headers["content-type"] == "application/problem+json"
        assert "step" in answer.json()["detail"]
    answer = await admin.get("/v1/admin/profiles/nobody/timeline")
    assert answer.status_code == 404
    assert answer.json()["type"] == "urn:intently:problem:profile-not-found"
    assert answer.json()["pointer"] == "/id"
    await send(client, track(anonymousId="someone"))
    for name, value in (("events", "0"), ("events", "1001"), ("decisions", "x"),
                        ("decisions", "201"), ("events", "-3")):  # fmt: skip
        answer = await admin.get("/v1/admin/profiles/someone/timeline", params={name: value})
        assert answer.status_code == 400, (name, value)
        assert name in answer.json()["detail"]
    answer = await admin.get("/v1/admin/profiles/someone/timeline", params={"events": "1000"})
    assert answer.status_code == 200


# -- live tiles and series ------------------------------------------------------------------


async def test_the_live_figures_are_what_was_sent(
    engine: Engine, client: httpx.AsyncClient, admin: httpx.AsyncClient, clock: ManualClock
) -> None:
    await load_catalog(admin)
    body = (await admin.get("/v1/admin/live", params={"step": "1"})).json()
    assert body["totals"] == {"events": 0, "decisions": 0, "degraded": 0}
    assert body["tiles"]["live_sessions"] == 0
    assert body["tiles"]["latency_p50_ms"] is None

    # Second 0: 7 events from 3 visitors, 4 decides (2 placements each).
    await send(client, *[track(anonymousId=f"v{i % 3}") for i in range(7)])
    for i in range(4):
        await decide(client, f"v{i % 3}")
    clock.advance(timedelta(seconds=3))
    # Second 3: 5 more events from a fourth visitor.
    await send(client, *[track(anonymousId="v3") for _ in range(5)])

    body = (await admin.get("/v1/admin/live", params={"step": "1"})).json()
    assert body["totals"] == {"events": 12, "decisions": 8, "degraded": 0}
    series = body["series"]
    assert len(series["t"]) == 900
    assert series["t"][-1] == engine.now_ms() // 1000 * 1000
    assert series["events_per_s"][-4:] == [7, 0, 0, 5]
    assert series["decisions_per_s"][-4:] == [8, 0, 0, 0]
    assert sum(series["events_per_s"]) == 12
    tiles = body["tiles"]
    assert tiles["events_per_s"] == pytest.approx(1.2)  # 12 in the last 10 s
    assert tiles["decisions_per_s"] == pytest.approx(0.8)
    assert tiles["live_sessions"] == 4
    assert tiles["latency_decisions"] == 8
    # p50 / p99: the bucket of the exact quantile of the logged latencies.
    latencies = [record.latency_us for record in logged(engine)]
    assert len(latencies) == 8
    for q, name in ((0.5, "latency_p50_ms"), (0.99, "latency_p99_ms")):
        exact = exact_quantile(latencies, q)
        assert tiles[name] == round(bucket_upper_us(latency_bucket(exact)) / 1000, 3)
        assert exact / 1000 <= tiles[name] < exact / 1000 * 1.091 + 0.001

    # In points of 5 s: second 0 to 4 are one point; its rate is over the 4 s it has had.
    body = (await admin.get("/v1/admin/live", params={"step": "5"})).json()
    assert len(body["series"]["t"]) == 180
    assert body["series"]["events_per_s"][-1] == pytest.approx(12 / 4)
    # Eleven seconds on, the tiles' window is past: the series still holds the events.
    clock.advance(timedelta(seconds=11))
    body = (await admin.get("/v1/admin/live", params={"step": "1"})).json()
    assert body["tiles"]["events_per_s"] == 0
    assert sum(body["series"]["events_per_s"]) == 12
    # A late event (a retried queue) of a fifth visitor, from two hours ago: not live,
    # and the four live ones are still counted.
    late = (START + timedelta(seconds=3) - timedelta(hours=2)).isoformat()
    await send(client, track(anonymousId="v-late", timestamp=late))
    tiles = (await admin.get("/v1/admin/live", params={"step": "1"})).json()["tiles"]
    assert tiles["live_sessions"] == 4


def test_the_ring_buffer_forgets_what_is_older_than_its_window() -> None:
    now = [1_000_000]
    series = LiveSeries(lambda: now[0], seconds=60)
    for second in range(150):  # 2.5 windows, an event per second, 3 in each tenth
        now[0] = 1_000_000 + second * 1000
        count = 3 if second % 10 == 0 else 1
        series.apply_many([object()] * count)  # type: ignore[list-item]
    points = series.series(1)
    assert len(points["t"]) == 60
    # The last 60 seconds (90..149): 60 events and 2 more in each of 6 tenths.
    assert sum(points["events_per_s"]) == 60 + 2 * 6
    assert points["t"][0] == 1_000_000 + 90 * 1000
    assert series.events == 150 + 2 * 15  # totals since start are kept
    series.sample_sessions(17)
    assert series.series(10)["live_sessions"][-1] == 17
    assert series.series(10)["live_sessions"][0] is None


def test_histogram_quantiles_bound_the_exact_ones() -> None:
    draw = random.Random(7)
    for size in (1, 2, 3, 10, 99, 1000):
        values = [int(draw.lognormvariate(7, 1.5)) for _ in range(size)]
        histogram: dict[int, int] = {}
        for value in values:
            bucket = latency_bucket(value)
            histogram[bucket] = histogram.get(bucket, 0) + 1
        for q in (0.5, 0.9, 0.99, 1.0):
            exact = exact_quantile(values, q)
            found = quantile_us(histogram, q)
            assert found == bucket_upper_us(latency_bucket(exact))
            assert max(exact, 1) <= found < max(exact, 1) * 2 ** (1 / 8) + 1e-9
    assert quantile_us({}, 0.5) is None


# -- placements -----------------------------------------------------------------------------


async def test_placement_totals_equal_the_ones_computed_from_the_decision_log(
    engine: Engine, client: httpx.AsyncClient, admin: httpx.AsyncClient, clock: ManualClock
) -> None:
    await load_catalog(admin)
    made: list[dict[str, Any]] = []
    for i in range(9):
        visitor = f"shopper{i}"
        decisions = await decide(client, visitor)
        made.append(decisions)
        hero = decisions["home_hero"]
        if i % 3 != 2:  # six exposures
            await send(client, viewed(visitor, hero))
        if i % 3 == 0:  # three clicks
            await send(client, clicked(visitor, hero))
    clock.advance(timedelta(minutes=31))  # every window closes: the zeros are logged
    engine.decider.tick(engine.now_ms())

    body = (await admin.get("/v1/admin/placements")).json()
    by_id = {p["id"]: p for p in body["placements"]}
    assert {"home_hero", "pdp_recs", "cart_recs"} <= set(by_id)
    hero = by_id["home_hero"]
    assert hero["defined"] is True
    assert hero["policy"] == engine.placements.get("home_hero").spec.policy.name  # type: ignore[union-attr]
    assert hero["version"] == made[-1]["home_hero"]["policy"]["version"]
    assert (hero["decisions"], hero["exposures"], hero["rewards"]) == (9, 6, 3)
    assert hero["rewards_per_exposure"] == pytest.approx(3 / 6)
    assert hero["mean_reward"] == pytest.approx(3 / 9)
    assert hero["degraded_share"] == 0
    assert by_id["pdp_recs"]["decisions"] == 9
    assert by_id["cart_recs"]["decisions"] == 0  # defined, never asked

    # The same figures from the log, from scratch.
    engine.decisions.flush()
    reader = DecisionLogReader(engine.settings.decision_log_path)
    try:
        scratch = from_log(reader)
    finally:
        reader.close()
    assert set(scratch.by_placement) == set(engine.live.placements.by_placement)
    for placement_id, totals in scratch.by_placement.items():
        view = totals.view()
        listed = {k: by_id[placement_id][k] for k in view}
        assert listed == view, placement_id


async def test_degraded_decisions_are_counted_apart(
    engine: Engine, client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await decide(client, "early")  # an empty catalog: both placements fall back
    body = (await admin.get("/v1/admin/placements")).json()
    hero = next(p for p in body["placements"] if p["id"] == "home_hero")
    assert (hero["decisions"], hero["degraded"], hero["degraded_share"]) == (1, 1, 1.0)
    assert hero["served_by"] == {"fallback": 1}
    live = (await admin.get("/v1/admin/live")).json()
    assert live["totals"]["degraded"] == 2


# -- segments -------------------------------------------------------------------------------


async def test_segment_sizes_and_entries(
    engine: Engine, client: httpx.AsyncClient, admin: httpx.AsyncClient, clock: ManualClock
) -> None:
    answer = await admin.put(
        "/v1/segments/browsers", json={"expression": "session.events >= 2", "description": "2+"}
    )
    assert answer.status_code == 201, answer.text
    for visitor in ("a", "b", "c"):
        await send(client, track(anonymousId=visitor), track(anonymousId=visitor))
    await send(client, track(anonymousId="d"))  # one event: not in
    body = (await admin.get("/v1/admin/segments")).json()
    (segment,) = body["segments"]
    assert segment["name"] == "browsers"
    assert segment["description"] == "2+"
    assert segment["members"] == 3
    assert segment["entries_last_minute"] == 3
    assert segment["entries_last_15_minutes"] == 3
    clock.advance(timedelta(minutes=2))
    await send(client, track(anonymousId="d"))
    segment = (await admin.get("/v1/admin/segments")).json()["segments"][0]
    assert (segment["members"], segment["entries_last_minute"]) == (4, 1)
    assert segment["entries_last_15_minutes"] == 4
    assert segment["entries_since_start"] == 4


# -- the profile inspector ------------------------------------------------------------------


async def test_a_timeline_shows_events_profile_and_decisions_with_reasons(
    engine: Engine, client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await load_catalog(admin)
    await send(client, *[track(anonymousId="ann", properties={"product_id": f"p{i}"})
                         for i in range(3)])  # fmt: skip
    decisions = await decide(client, "ann")
    await send(client, viewed("ann", decisions["home_hero"]))
    await send(client, track(anonymousId="bob"))  # someone else
    await decide(client, "bob")

    answer = await admin.get("/v1/admin/profiles/ann/timeline")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["identities"]["anonymous_ids"] == ["ann"]
    assert body["profile"]["session"]["events"] == 4
    assert body["profile"]["consent"]["personalization"] is True
    events = body["events"]
    assert [e["name"] for e in events] == ["Decision Viewed"] + ["Product Viewed"] * 3
    assert [e["properties"].get("product_id") for e in events[1:]] == ["p2", "p1", "p0"]
    assert events[0]["seq"] > events[1]["seq"]  # the latest first
    assert all(e["anonymous_id"] == "ann" for e in events)
    shown = {d["decision_id"]: d for d in body["decisions"]}
    assert set(shown) == {d["decision_id"] for d in decisions.values()}
    hero = shown[decisions["home_hero"]["decision_id"]]
    assert hero["reasons"] == decisions["home_hero"]["reasons"]
    assert hero["items"] == [item["id"] for item in decisions["home_hero"]["items"]]
    assert hero["reward"] is None  # its window is open
    assert hero["latency_us"] > 0
    # Limits: the latest ones.
    body = (await admin.get("/v1/admin/profiles/ann/timeline?events=2&decisions=1")).json()
    assert [e["name"] for e in body["events"]] == ["Decision Viewed", "Product Viewed"]
    assert len(body["decisions"]) == 1

    # Erased: the inspector finds nothing more.
    assert (await admin.delete("/v1/profiles/ann")).status_code == 200
    assert (await admin.get("/v1/admin/profiles/ann/timeline")).status_code == 404
    assert (await admin.get("/v1/admin/profiles/bob/timeline")).json()["decisions"]
