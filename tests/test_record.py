"""How the log stores a record: MessagePack, JSON where MessagePack cannot hold a value,
and JSON bodies written by earlier versions; every reader sees the same record."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import pytest

from intently import Engine
from intently.events.enrich import Enrichment, LocalTime
from intently.events.record import (
    EventRecord,
    decode_record,
    encode_record,
    record_as_builtins,
    record_as_json,
    stamp,
)
from intently.events.referrer import Referrer
from intently.events.validate import decode_event
from support import SECRET_KEY, client_for, make_settings, stored_events, track


def record(properties: dict[str, Any], **times: str) -> EventRecord:
    times = {"timestamp": "2026-11-23T10:00:00.123Z", **times}
    raw = json.dumps(track(properties=properties, **times))
    event, error = decode_event(raw.encode(), None)
    assert event is not None, error
    stamp(event, datetime(2026, 11, 23, 10, 0, 1, tzinfo=UTC))
    enrichment = Enrichment(Referrer("search", "Google"), local=LocalTime("Europe/Paris", 11, 0))
    return EventRecord(event, enrichment, seq=7, at_ms=1_795_428_000_123)


USUAL = {"product_id": "p1", "price": 42.5, "tags": ["a", None, 1.5], "deep": {"x": [{}]}}
HUGE = {"product_id": "p1", "count": 2**70, "negative": -(2**64)}


@pytest.mark.parametrize("properties", [USUAL, HUGE])
def test_a_body_decodes_to_the_record_it_was_encoded_from(properties: dict[str, Any]) -> None:
    original = record(properties)
    body = encode_record(original)
    # MessagePack unless an integer does not fit in 64 bits; then JSON, as before.
    assert body[:1] == (b"{" if properties is HUGE else b"\x84")
    again = decode_record(body)
    assert again == original
    assert again.event.properties == properties  # 2**70 exactly, not a float


@pytest.mark.parametrize("properties", [USUAL, HUGE])
def test_exports_read_any_body_as_the_json_of_its_record(properties: dict[str, Any]) -> None:
    original = record(properties)
    as_json = msgspec.json.encode(original)
    body = encode_record(original)
    assert record_as_json(body) == as_json
    assert msgspec.json.encode(record_as_builtins(body)) == as_json


@pytest.mark.parametrize(
    "times",
    [
        {"originalTimestamp": "2026-11-23T12:00:00+02:00"},  # kept as the client wrote it
        {"timestamp": "2026-11-23T05:00:00-05:00"},  # no sentAt: the client's time is kept
        {"timestamp": "2026-11-23T12:00:00+02:00", "sentAt": "2026-11-23T12:00:01+02:00"},
    ],
)
def test_times_with_an_offset_keep_it_through_every_reader(times: dict[str, str]) -> None:
    """A MessagePack timestamp is an instant (it would come back in UTC): records holding a
    time with another offset are stored as JSON, and read back as they were."""
    original = record(USUAL, **times)
    body = encode_record(original)
    assert body[:1] == b"{"
    again = decode_record(body)
    for name in ("timestamp", "original_timestamp", "sent_at", "received_at"):
        sent, read = getattr(original.event, name), getattr(again.event, name)
        assert (sent, sent and sent.utcoffset()) == (read, read and read.utcoffset())
    assert record_as_json(body) == msgspec.json.encode(original)
    assert msgspec.json.encode(record_as_builtins(body)) == msgspec.json.encode(original)


def test_bodies_written_as_json_by_earlier_versions_still_decode() -> None:
    original = record(USUAL)
    old_body = msgspec.json.encode(original)
    assert decode_record(old_body) == original
    assert record_as_json(old_body) == old_body


@pytest.mark.anyio
async def test_an_event_too_big_for_msgpack_is_stored_applied_and_exported(
    engine: Engine, client: httpx.AsyncClient
) -> None:
    sent = [track(messageId="m1", properties=HUGE), track(messageId="m2", properties=USUAL)]
    response = await client.post("/v1/events", json={"batch": sent})
    assert response.json() == {"accepted": 2}
    assert [e["properties"] for e in stored_events(engine)] == [HUGE, USUAL]
    async with client_for(engine, SECRET_KEY) as admin:
        exported = (await admin.get("/v1/profiles/anon-1/export")).json()
    assert [e["event"]["properties"] for e in exported["events"]] == [HUGE, USUAL]
    assert exported["profile"]["counts"]["Product Viewed"] == 2


def test_a_restart_reapplies_both_kinds_of_body(engine: Engine) -> None:
    """The store had persisted nothing: start-up re-applies the log, MessagePack and JSON
    bodies alike, to the same state."""
    import asyncio

    from intently.pipeline import ClientInfo

    events = [
        decode_event(json.dumps(track(messageId=f"m{i}", properties=p)).encode(), None)[0]
        for i, p in enumerate([USUAL, HUGE, USUAL])
    ]
    asyncio.run(engine.pipeline.ingest([(i, e) for i, e in enumerate(events) if e], ClientInfo()))
    before = engine.context.describe(engine.context.lookup("anon-1"), engine.now_ms())  # type: ignore[arg-type]
    settings = engine.settings
    engine.close()
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (settings.data_dir / name).unlink(missing_ok=True)
    reopened = Engine(make_settings(settings.data_dir), clock=engine.clock)
    try:
        assert reopened.context.applied == 3  # all re-applied from the log
        profile = reopened.context.lookup("anon-1")
        assert profile is not None
        assert reopened.context.describe(profile, reopened.now_ms()) == before
    finally:
        reopened.close()
