"""Failures found in review of the scale-out work, each kept from coming back: requests
that met a Redis outage answer 503 and never 500, whatever the endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from intently import Engine, ManualClock
from intently.api.app import _tick
from intently.cli import _announce
from intently.config import Settings
from intently.context.identity import derived_profile_id
from intently.context.stage import ProfileChanged
from intently.segments.registry import SegmentSpec
from intently.stores.stream import EventStream
from services import (
    REDIS_URL,
    PrivateRedis,
    Relay,
    postgres_database,
    redis_client,
    redis_namespace,
)
from support import SECRET_KEY, START, client_for, make_settings

pytestmark = pytest.mark.anyio


def view(visitor: str) -> dict[str, object]:
    return {"type": "track", "event": "Product Viewed", "anonymousId": visitor,
            "properties": {"product_id": "p1", "category": "running", "price": 10}}  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/profiles/v1", None),
        ("GET", "/v1/profiles/v1/export", None),
        ("PUT", "/v1/profiles/v1/consent", {"marketing": False}),
        ("PUT", "/v1/segments/engaged", {"expression": "session.events >= 3"}),
    ],
)
async def test_a_request_that_meets_a_redis_outage_is_a_503_to_retry(
    private_redis: PrivateRedis, tmp_path: Path, method: str, path: str, body: object
) -> None:
    engine = Engine(
        make_settings(tmp_path / "data", state_store=private_redis.url), clock=ManualClock(START)
    )
    try:
        async with client_for(engine) as client:
            assert (await client.post("/v1/events", json=view("v1"))).status_code == 200
        private_redis.stop()
        async with client_for(engine, SECRET_KEY) as admin:
            answer = await admin.request(method, path, json=body)
            assert answer.status_code == 503, answer.text
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json()["type"].endswith(":state-unavailable")
            assert int(answer.headers["retry-after"]) > 0
            private_redis.start()
            engine.store.recover()
            again = await admin.request(method, path, json=body)
            assert again.status_code < 300, again.text
    finally:
        engine.close()


def worker(data_dir: Path, prefix: str) -> Settings:
    return make_settings(data_dir, state_store=REDIS_URL, redis_prefix=prefix,
                         worker_id=data_dir.name)  # fmt: skip


async def test_a_segment_definition_keeps_what_other_workers_wrote_during_its_scan(
    tmp_path: Path,
) -> None:
    """A definition is evaluated over every profile a scan finds; another worker applies
    events to one of them and erases another after the scan read them. Each page is read
    again under the leases before it is written: neither change is undone."""
    with redis_namespace() as prefix:
        a, b = (Engine(worker(tmp_path / n, prefix), clock=ManualClock(START)) for n in "ab")
        try:
            async with client_for(b) as client:
                for visitor in ("busy", "gone", "quiet"):
                    assert (await client.post("/v1/events", json=view(visitor))).is_success
                scanned = list(a.store.profiles())  # what a's scan read...
                for _ in range(5):  # ...before b applied these
                    assert (await client.post("/v1/events", json=view("busy"))).is_success
            async with client_for(b, SECRET_KEY) as admin:
                assert (await admin.delete("/v1/profiles/gone")).status_code == 200
            a.store.profiles = lambda: iter(scanned)  # type: ignore[method-assign]
            _, moved = a.define_segment("viewers", SegmentSpec("session.product_views > 0"))
            assert moved == 2  # busy and quiet entered; gone is no more
            busy = b.context.lookup("busy")
            assert busy is not None
            assert busy.counts["Product Viewed"] == 6
            assert "viewers" in busy.segments
            assert b.context.lookup("gone") is None
            assert b.store.get(derived_profile_id("a:gone")) is None
        finally:
            a.close()
            b.close()


def test_the_event_stream_erases_a_person_by_the_event_logs_rule() -> None:
    """A shared device: anonymous id A was used by U1 and U2. Erasing U1 (who had A)
    removes U1's entries and A's anonymous ones, and keeps U2's."""
    with redis_namespace() as prefix:
        client = redis_client()
        stream = EventStream(client, prefix)
        people = [("A", "U1"), ("A", "U2"), ("A", None), ("B", None), ("C", "U1")]
        for seq, (anonymous, user) in enumerate(people, 1):
            event = {"event": {"anonymousId": anonymous, "userId": user, "event": "Viewed"}}
            client.xadd(stream.key, {"worker": "w", "seq": seq, "event": json.dumps(event)})
        assert stream.erase(["A"], ["U1"], page=2) == 3  # (pages of 2: crossing pages)
        kept = [json.loads(fields[b"event"])["event"] for _, fields in client.xrange(stream.key)]
        assert [(e["anonymousId"], e["userId"]) for e in kept] == [("A", "U2"), ("B", None)]
        client.close()


async def test_an_erasure_removes_the_persons_entries_from_the_event_stream(
    tmp_path: Path,
) -> None:
    with redis_namespace() as prefix:
        engine = Engine(worker(tmp_path / "a", prefix), clock=ManualClock(START))
        try:
            async with client_for(engine) as client:
                for visitor in ("alice", "bob", "alice"):
                    assert (await client.post("/v1/events", json=view(visitor))).is_success
            stream = EventStream(engine.store.client, prefix)  # type: ignore[attr-defined]
            assert stream.length() == 3
            async with client_for(engine, SECRET_KEY) as admin:
                assert (await admin.delete("/v1/profiles/alice")).status_code == 200
            rows = stream.client.xrange(stream.key)
            assert [json.loads(f[b"event"])["event"]["anonymousId"] for _, f in rows] == ["bob"]
        finally:
            engine.close()


def test_the_default_worker_id_is_kept_in_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis and PostgreSQL key the worker's log positions by its id: a container
    recreated with a new host name must not become a new worker (it would apply its
    whole log again)."""
    first = make_settings(tmp_path / "data").worker
    monkeypatch.setattr(socket, "gethostname", lambda: "recreated-container")
    assert make_settings(tmp_path / "data").worker == first
    assert make_settings(tmp_path / "other").worker.startswith("recreated-container:")
    assert make_settings(tmp_path / "data", worker_id="app1").worker == "app1"


def test_a_secret_key_from_the_environment_is_not_written_to_the_logs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "sk_" + "x" * 40
    settings = make_settings(tmp_path / "data", secret_key=secret)
    _announce("wk_public", secret, created=False, settings=settings)
    shown = capsys.readouterr().out
    assert secret not in shown
    assert "wk_public" in shown  # the write key is public (it is in every page's tag)


def until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def scraped(engine: Engine, name: str) -> float:
    for line in engine.metrics.render().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not exported")


async def test_the_archive_backlog_and_an_outage_are_exported_as_metrics(
    tmp_path: Path,
) -> None:
    with postgres_database() as database:
        target = urlsplit(database)
        relay = Relay(target.hostname or "127.0.0.1", target.port or 5432)
        url = database.replace(f":{target.port}/", f":{relay.port}/")
        engine = Engine(make_settings(tmp_path / "data", database=url), clock=ManualClock(START))
        try:
            archive = engine.archive
            assert archive is not None
            relay.cut()
            async with client_for(engine) as client:
                assert (await client.post("/v1/events", json=view("v1"))).is_success
            archive.wake()
            assert until(lambda: scraped(engine, "intently_archive_available") == 0)
            assert scraped(engine, "intently_archive_backlog") >= 1
            relay.restore()
            archive.wake()
            assert until(lambda: scraped(engine, "intently_archive_backlog") == 0, seconds=40)
            assert until(lambda: scraped(engine, "intently_archive_available") == 1)
            assert scraped(engine, "intently_events_failed") == 0
        finally:
            engine.close()
            relay.close()


async def test_a_worker_catching_up_does_not_bring_back_a_person_erased_meanwhile(
    tmp_path: Path,
) -> None:
    """b lost Redis with some of alice's events in its log, not applied; a erased alice
    meanwhile. b's next tick carries out the erasure before it catches up: otherwise the
    catch-up re-applies alice's logged events and brings her back."""
    target = urlsplit(REDIS_URL)
    relay = Relay(target.hostname or "127.0.0.1", target.port or 6379)
    through_relay = REDIS_URL.replace(f":{target.port}/", f":{relay.port}/")
    with redis_namespace() as prefix:
        a = Engine(worker(tmp_path / "a", prefix), clock=ManualClock(START))
        b = Engine(
            make_settings(tmp_path / "b", state_store=through_relay, redis_prefix=prefix,
                          worker_id="b"),
            clock=ManualClock(START),
        )  # fmt: skip
        try:
            async with client_for(b) as client:
                assert (await client.post("/v1/events", json=view("alice"))).is_success
                relay.cut()
                kept = await client.post("/v1/events", json=view("alice"))
                assert kept.status_code == 503  # logged, applied when Redis returns
            assert b.context.behind
            async with client_for(a, SECRET_KEY) as admin:
                assert (await admin.delete("/v1/profiles/alice")).status_code == 200
            relay.restore()
            ticking = asyncio.create_task(_tick(b, asyncio.Lock(), seconds=0.05))
            assert await async_until(lambda: not b.context.behind)
            ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticking
            assert a.context.lookup("alice") is None
            assert b.context.lookup("alice") is None
            assert b.log.rows_of(["alice"], []) == []
        finally:
            a.close()
            b.close()
            relay.close()


async def async_until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_an_export_holds_the_events_every_worker_applied(tmp_path: Path) -> None:
    """With several workers, a person's events are in several logs: the export reads this
    worker's own and the others' from the PostgreSQL archive, each once."""
    with redis_namespace() as prefix, postgres_database() as database:
        a, b = (
            Engine(
                make_settings(tmp_path / n, state_store=REDIS_URL, redis_prefix=prefix,
                              database=database, worker_id=n),
                clock=ManualClock(START),
            )
            for n in "ab"
        )  # fmt: skip
        try:
            for engine, count in ((a, 3), (b, 2)):
                async with client_for(engine) as client:
                    for n in range(count):
                        sent = await client.post("/v1/events", json=view("alice") | {
                            "messageId": f"{engine.settings.worker}-{n}"})  # fmt: skip
                        assert sent.is_success
                    assert (await client.post("/v1/events", json=view("bob"))).is_success
            for engine in (a, b):
                assert engine.archive is not None
                engine.archive.drain()
            async with client_for(a, SECRET_KEY) as admin:
                exported = (await admin.get("/v1/profiles/alice/export")).json()
            ids = sorted(e["event"]["messageId"] for e in exported["events"])
            assert ids == ["a-0", "a-1", "a-2", "b-0", "b-1"]
        finally:
            a.close()
            b.close()


async def test_an_erasure_that_finds_the_profile_linked_meanwhile_asks_to_be_repeated(
    tmp_path: Path,
) -> None:
    """The person signed in (their profile gained a user id) while their erasure was
    under way: erasing the profile as it was would leave the new id's link (and events).
    The erasure says so; asked again, it erases everything."""
    with redis_namespace() as prefix:
        engine = Engine(worker(tmp_path / "a", prefix), clock=ManualClock(START))
        try:
            async with client_for(engine) as client:
                assert (await client.post("/v1/events", json=view("x"))).is_success
                as_found = engine.context.lookup("x")  # what the erasure started from
                assert as_found is not None
                login = view("x") | {"userId": "u1", "event": "Signed In"}
                assert (await client.post("/v1/events", json=login)).is_success
            with pytest.raises(ProfileChanged):
                engine.context.forget(as_found)
            now = engine.context.lookup("u1")
            assert now is not None  # nothing half removed
            assert now.id == as_found.id
            assert engine.context.lookup("x") is not None
            async with client_for(engine, SECRET_KEY) as admin:
                assert (await admin.delete("/v1/profiles/x")).status_code == 200
            assert engine.context.lookup("x") is None
            assert engine.context.lookup("u1") is None
        finally:
            engine.close()


async def test_a_worker_id_reused_with_a_new_data_dir_ships_and_exports_its_new_log(
    tmp_path: Path,
) -> None:
    """A fixed worker id (as deploy/compose.yaml sets) and a replaced volume: the new
    event log starts at position 1 again. Its rows are shipped (not taken for shipped
    ones) and an export holds the old log's archived events and the new log's."""
    with postgres_database() as database:
        for volume, visitor_events in (("old", 3), ("new", 2)):
            engine = Engine(
                make_settings(tmp_path / volume, database=database, worker_id="app1"),
                clock=ManualClock(START),
            )
            try:
                async with client_for(engine) as client:
                    for n in range(visitor_events):
                        event = view("alice") | {"messageId": f"{volume}-{n}"}
                        assert (await client.post("/v1/events", json=event)).is_success
                assert engine.archive is not None
                engine.archive.drain()
                if volume == "new":
                    async with client_for(engine, SECRET_KEY) as admin:
                        exported = (await admin.get("/v1/profiles/alice/export")).json()
            finally:
                engine.close()
        with psycopg.connect(database) as connection:
            shipped = connection.execute("SELECT message_id FROM events").fetchall()
        assert sorted(m for (m,) in shipped) == ["new-0", "new-1", "old-0", "old-1", "old-2"]
        ids = sorted(e["event"]["messageId"] for e in exported["events"])
        assert ids == ["new-0", "new-1", "old-0", "old-1", "old-2"]
