"""POST /v1/events through the real ASGI app: acceptance, partial batches, bad input, keys."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx
import pytest

from intently import Engine, ManualClock
from support import SECRET_KEY, WRITE_KEY, client_for, stored_events, track

pytestmark = pytest.mark.anyio

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"] == f"urn:intently:problem:{code}"
    assert body["title"]
    assert body["detail"]
    return body


async def test_single_event_is_durable_and_enriched(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    response = await client.post("/v1/events", json=track(messageId="m1"))
    assert response.status_code == 200
    assert response.json() == {"accepted": 1}
    [event] = stored_events(engine)
    assert event["messageId"] == "m1"
    assert event["seq"] == 1
    assert event["enrichment"]["device"]["type"] == "mobile"
    assert event["enrichment"]["geo"]["country"] == "US"
    # Stored with the IP truncated (the default privacy setting), after geolocation.
    assert event["context"]["ip"] == "8.8.8.0"


async def test_every_event_type_is_accepted(client: httpx.AsyncClient, engine: Engine) -> None:
    batch = [
        track(),
        {"type": "page", "anonymousId": "a", "name": "Home", "properties": {"path": "/"}},
        {"type": "screen", "userId": "u", "name": "Cart"},
        {"type": "identify", "anonymousId": "a", "userId": "u", "traits": {"email": "x@y.z"}},
        {"type": "alias", "previousId": "a", "userId": "u"},
    ]
    response = await client.post("/v1/events", json={"batch": batch})
    assert response.json() == {"accepted": 5}
    assert [e["type"] for e in stored_events(engine)] == [
        "track", "page", "screen", "identify", "alias",
    ]  # fmt: skip


async def test_one_bad_event_never_drops_the_good_ones(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    batch = [
        track(messageId="good-1"),
        track(anonymousId=5),
        {"type": "purchase", "anonymousId": "a"},
        track(messageId="good-2"),
        {"type": "track", "event": "x"},
    ]
    response = await client.post("/v1/events", json={"batch": batch})
    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 2
    rejected = {error["index"]: error for error in body["rejected"]}
    assert set(rejected) == {1, 2, 4}
    assert rejected[1]["field"] == "anonymousId"
    assert rejected[1]["pointer"] == "/batch/1/anonymousId"
    assert rejected[2]["field"] == "type"
    assert rejected[2]["reason"] == "unknown-type"
    assert rejected[4]["field"] == "anonymousId"
    assert "anonymousId or userId" in rejected[4]["detail"]
    assert [e["messageId"] for e in stored_events(engine)] == ["good-1", "good-2"]


async def test_nothing_usable_is_a_400_listing_every_event(client: httpx.AsyncClient) -> None:
    batch = [{"type": "track"}, {"type": "alias", "previousId": "a"}]
    body = assert_problem(
        await client.post("/v1/events", json={"batch": batch}), 400, "no-usable-event"
    )
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(0, "event"), (1, "userId")]


async def test_empty_batch_is_a_400(client: httpx.AsyncClient) -> None:
    body = assert_problem(
        await client.post("/v1/events", json={"batch": []}), 400, "no-usable-event"
    )
    assert "empty" in body["detail"]


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (track(timestamp="yesterday"), "timestamp"),
        (track(properties={"product_id": "p1", "price": "cheap"}), "properties.price"),
        (track(properties={"products": [{"price": 1}, {"quantity": "2x"}]}, event="Order Updated"),
         "properties.products[1].quantity"),
        (track(context={"page": {"url": 7}}), "context.page.url"),
        (track(context={"ip": "999.1.1.1"}), "context.ip"),
        (track(context={"timezone": "Mars/Olympus"}), "context.timezone"),
        (track(event=""), "event"),
        (track(anonymousId="x" * 300), "anonymousId"),
        (track(properties={"note": "y" * 20_000}), "properties.note"),
        (track(properties={"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {}}}}}}}}}}}),
         "properties.a.b.c.d.e.f.g.h.i.j"),
        ({"type": "identify", "userId": "u", "traits": [1, 2]}, "traits"),
    ],
)  # fmt: skip
async def test_a_wrong_field_is_named(client: httpx.AsyncClient, event: Any, field: str) -> None:
    body = assert_problem(await client.post("/v1/events", json=event), 400, "no-usable-event")
    [error] = body["errors"]
    assert error["field"] == field
    assert "index" not in error


async def test_numeric_strings_are_accepted_for_commerce_numbers(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    event = track(properties={"product_id": 12, "price": "19.99", "quantity": "2"})
    assert (await client.post("/v1/events", json=event)).json() == {"accepted": 1}
    # Properties are stored as sent; the typed view is for later stages.
    assert stored_events(engine)[0]["properties"]["price"] == "19.99"


@pytest.mark.parametrize(
    ("body", "code", "pointer"),
    [
        (b'{"type": "track", "event": ', "malformed-json", None),
        (b"[1, 2, 3]", "invalid-body", None),
        (b'{"batch": 5}', "invalid-body", "/batch"),
        (b'{"type":"track","event":"\xff\xfe","anonymousId":"a"}', "invalid-utf8", None),
        (b"[" * 100_000 + b"]" * 100_000, "invalid-body", None),
        (
            b'{"type":"page","anonymousId":"a","properties":{"x":'
            + b"[" * 100_000
            + b"]" * 100_000
            + b"}}",
            "too-deep",
            None,
        ),
        (b'{"batch": [], "sentAt": "noon"}', "invalid-body", "/sentAt"),
        (b'{"batch": [], "context": {"a": "\xff"}}', "invalid-utf8", "/context"),
        (b'{"batch": [], "writeKey": "\xff"}', "invalid-utf8", "/writeKey"),
    ],
)
async def test_unreadable_bodies_are_400(
    client: httpx.AsyncClient, body: bytes, code: str, pointer: str | None
) -> None:
    response = await client.post(
        "/v1/events", content=body, headers={"content-type": "application/json"}
    )
    problem = assert_problem(response, 400, code)
    assert problem.get("pointer") == pointer


async def test_oversized_body_is_413_with_or_without_content_length(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    big = json.dumps({"batch": [track(properties={"n": "x" * 10_000}) for _ in range(60)]})
    assert len(big) > 512 * 1024
    assert_problem(await client.post("/v1/events", content=big), 413, "body-too-large")

    async def chunks() -> Any:
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536].encode()

    response = await client.post("/v1/events", content=chunks())
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "body-too-large")
    assert stored_events(engine) == []


async def test_batch_of_more_than_500_is_413(client: httpx.AsyncClient, engine: Engine) -> None:
    batch = [{"type": "page", "anonymousId": "a"} for _ in range(501)]
    body = assert_problem(
        await client.post("/v1/events", json={"batch": batch}), 413, "batch-too-large"
    )
    assert "501" in body["detail"]
    assert stored_events(engine) == []
    ok = await client.post("/v1/events", json={"batch": batch[:500]})
    assert ok.json() == {"accepted": 500}


async def test_unsupported_media_type_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/events", content=b"a=b", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert_problem(response, 415, "unsupported-media-type")


async def test_missing_or_wrong_key_is_401_and_stores_nothing(engine: Engine) -> None:
    async with client_for(engine, key=None) as anonymous:
        body = assert_problem(await anonymous.post("/v1/events", json=track()), 401, "unauthorized")
        assert "writeKey" in body["detail"]
        response = await anonymous.post("/v1/events", json=track(writeKey="wk_wrong"))
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
    async with client_for(engine, key="wk_wrong") as wrong:
        assert_problem(await wrong.post("/v1/events", json=track()), 401, "unauthorized")
    async with client_for(engine, key=None) as basic:
        response = await basic.post(
            "/v1/events", json=track(), headers={"Authorization": f"Basic {WRITE_KEY}"}
        )
        assert_problem(response, 401, "unauthorized")
    assert stored_events(engine) == []


async def test_write_key_in_body_for_send_beacon(engine: Engine) -> None:
    async with client_for(engine, key=None) as beacon:
        single = json.dumps(track(writeKey=WRITE_KEY, messageId="b1"))
        response = await beacon.post(
            "/v1/events", content=single, headers={"content-type": "text/plain;charset=UTF-8"}
        )
        assert response.json() == {"accepted": 1}
        batch = json.dumps({"writeKey": WRITE_KEY, "batch": [track(messageId="b2")]})
        response = await beacon.post(
            "/v1/events", content=batch, headers={"content-type": "text/plain"}
        )
        assert response.json() == {"accepted": 1}
    stored = stored_events(engine)
    assert [e["messageId"] for e in stored] == ["b1", "b2"]
    assert all("writeKey" not in e for e in stored)


async def test_secret_key_may_send_events(engine: Engine) -> None:
    async with client_for(engine, key=SECRET_KEY) as admin:
        assert (await admin.post("/v1/events", json=track())).json() == {"accepted": 1}


async def test_duplicate_message_id_is_acknowledged_not_applied(
    client: httpx.AsyncClient, engine: Engine, clock: ManualClock
) -> None:
    assert (await client.post("/v1/events", json=track(messageId="dup"))).json() == {"accepted": 1}
    clock.advance(timedelta(hours=23))
    again = await client.post("/v1/events", json=track(messageId="dup"))
    assert again.json() == {"accepted": 0, "duplicates": 1}
    same_batch = {"batch": [track(messageId="twin"), track(messageId="twin")]}
    assert (await client.post("/v1/events", json=same_batch)).json() == {
        "accepted": 1, "duplicates": 1,
    }  # fmt: skip
    assert [e["messageId"] for e in stored_events(engine)] == ["dup", "twin"]
    # Past the 24 h window the id is new again.
    clock.advance(timedelta(hours=2))
    assert (await client.post("/v1/events", json=track(messageId="dup"))).json() == {"accepted": 1}


async def test_clock_skew_is_corrected_and_receive_time_recorded(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    # The client's clock is 2 hours behind; it created the event 3 s before sending it.
    event = track(timestamp="2026-11-23T07:59:57Z", sentAt="2026-11-23T08:00:00Z")
    await client.post("/v1/events", json=event)
    [stored] = stored_events(engine)
    assert stored["receivedAt"] == "2026-11-23T10:00:00Z"
    assert stored["timestamp"] == "2026-11-23T09:59:57Z"
    assert stored["originalTimestamp"] == "2026-11-23T07:59:57Z"


async def test_batch_level_context_and_sent_at_apply_to_events(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    body = {
        "sentAt": "2026-11-23T10:00:10Z",
        "context": {"locale": "fr-FR", "ip": "81.2.69.160"},
        "batch": [
            {"type": "page", "anonymousId": "a", "timestamp": "2026-11-23T10:00:00Z"},
            {"type": "page", "anonymousId": "a", "context": {"locale": "de-DE"}},
        ],
    }
    await client.post("/v1/events", json=body)
    first, second = stored_events(engine)
    assert first["timestamp"] == "2026-11-23T09:59:50Z"
    assert first["context"]["locale"] == "fr-FR"
    assert second["context"]["locale"] == "de-DE"
    assert second["enrichment"]["geo"]["country"] == "GB"


async def test_request_address_and_user_agent_stand_in_for_missing_context(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    await client.post(
        "/v1/events",
        json={"type": "page", "anonymousId": "a"},
        headers={"user-agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                 "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"},
    )  # fmt: skip
    [stored] = stored_events(engine)
    assert stored["context"]["ip"] == "203.0.113.0"  # the transport's peer, truncated
    assert stored["enrichment"]["device"] == {
        "type": "desktop", "browser": "Chrome", "browser_version": "131.0.0",
        "os": "Windows", "os_version": "10",
    }  # fmt: skip


async def test_metrics_count_accepted_rejected_and_duplicates(client: httpx.AsyncClient) -> None:
    await client.post("/v1/events", json={"batch": [track(messageId="a"), {"type": "nope"}]})
    await client.post("/v1/events", json=track(messageId="a"))
    await client.post("/v1/events", content=b"{", headers={"content-type": "application/json"})
    text = (await client.get("/metrics")).text
    assert 'intently_events_accepted_total{type="track"} 1.0' in text
    assert 'intently_events_rejected_total{reason="unknown-type"} 1.0' in text
    assert 'intently_events_rejected_total{reason="malformed-json"} 1.0' in text
    assert "intently_events_duplicate_total 1.0" in text
    count = "intently_http_request_duration_seconds_count"
    assert f'{count}{{method="POST",route="/v1/events",status="200"}} 2.0' in text
    assert 'route="/v1/events",status="400"' in text


async def test_health(client: httpx.AsyncClient) -> None:
    await client.post("/v1/events", json=track())
    body = (await client.get("/healthz")).json()
    assert body["status"] == "ok"
    assert body["last_seq"] == 1


async def test_odd_but_valid_context_is_accepted_not_a_500(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    odd = [
        track(context={"page": {"url": "http://[::1", "referrer": "http://[::1"}}),
        track(context={"page": {"url": "https://shop.example:99999/"}, "ip": "::1"}),
        track(context={"ip": "2001:db8::1", "timezone": "Pacific/Kiritimati"},
              timestamp="2199-12-31T23:59:59Z", sentAt="1970-01-01T00:00:00Z"),
    ]  # fmt: skip
    response = await client.post("/v1/events", json={"batch": odd})
    assert response.json() == {"accepted": 3}
    assert len(stored_events(engine)) == 3


async def test_a_failure_before_the_log_forgets_the_ids_so_a_retry_is_stored(
    client: httpx.AsyncClient, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = engine.pipeline.enricher
    calls = 0

    def flaky(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("enrichment broke")
        return real(*args)

    monkeypatch.setattr(engine.pipeline, "enricher", flaky)
    batch = {"batch": [track(messageId="r1"), track(messageId="r2")]}
    with pytest.raises(RuntimeError):
        await client.post("/v1/events", json=batch)
    retry = await client.post("/v1/events", json=batch)
    assert retry.json() == {"accepted": 2}
    assert [e["messageId"] for e in stored_events(engine)] == ["r1", "r2"]


@pytest.mark.parametrize(
    ("batch_fields", "pointer"),
    [
        ({"sentAt": "9999-01-01T00:00:00Z"}, "/sentAt"),
        ({"context": {"ip": "nope"}}, "/context/ip"),
        ({"context": {"timezone": "Nowhere/X"}}, "/context/timezone"),
        ({"context": {"traits": {"k": "v" * 20_000}}}, "/context/traits/k"),
    ],
)
async def test_bad_batch_level_fields_are_a_400_naming_them(
    client: httpx.AsyncClient, engine: Engine, batch_fields: dict[str, Any], pointer: str
) -> None:
    # Batch-level sentAt and context are copied into every event, so they are checked too.
    body = {"batch": [track()], **batch_fields}
    problem = assert_problem(await client.post("/v1/events", json=body), 400, "invalid-body")
    assert problem["pointer"] == pointer
    assert stored_events(engine) == []


async def test_a_request_cancelled_while_its_append_commits_is_still_applied(
    engine: Engine,
) -> None:
    # The client went away after the log took the events: they are stored, the state
    # stages see them, and a retry is a duplicate, not a second copy.
    import asyncio

    from intently.events.validate import decode_body

    seen: list[str] = []

    class Sink:
        def apply_many(self, records: Any) -> None:
            seen.extend(r.event.message_id for r in records)

    engine.pipeline.sinks.append(Sink())
    decoded = decode_body(json.dumps({"batch": [track(messageId="c1")]}).encode())
    task = asyncio.create_task(engine.pipeline.ingest(decoded.events))
    await asyncio.sleep(0)  # the append is queued; cancel before it is settled
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    retry = decode_body(json.dumps({"batch": [track(messageId="c1")]}).encode())
    result = await engine.pipeline.ingest(retry.events)
    assert (result.accepted, result.duplicates) == (0, 1)
    assert [e["messageId"] for e in stored_events(engine)] == ["c1"]
    assert seen == ["c1"]
