"""PostgreSQL for durable records, for real: the schema and its migrations, what a worker
ships (compared row for row with its local logs), an outage in which records wait on
local disk and drain afterwards, erasure, and the start-up errors.

Each test has a database of its own on the shared server (tests/services.py); the outage
goes through a relay the test cuts, so the server stays up for everyone else."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import msgspec
import psycopg
import pytest

from intently import Engine, ManualClock
from intently.configfile import ConfigError
from intently.stores.connect import BackendUnavailable
from intently.stores.postgres import SCHEMA_VERSION, connect_postgres, migrate, schema_version
from services import Relay, postgres_database
from support import SECRET_KEY, START, client_for, free_port, make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def database() -> Iterator[str]:
    with postgres_database() as url:
        yield url


def rows(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as connection:
        return list(connection.execute(query.encode()).fetchall())


def view(n: int, visitor: str) -> dict[str, object]:
    return {"type": "track", "event": "Product Viewed", "anonymousId": visitor,
            "messageId": f"{visitor}-{n}", "properties": {"product_id": f"p{n}"}}  # fmt: skip


async def load_banner(client: httpx.AsyncClient) -> None:
    banner = {"offers": [{"id": "hero-sale", "kind": "banner"}]}
    admin = {"Authorization": f"Bearer {SECRET_KEY}"}
    assert (await client.post("/v1/catalog/offers", json=banner, headers=admin)).is_success


async def traffic(
    client: httpx.AsyncClient, visitors: list[str], per_visitor: int, *, banner: bool = True
) -> list[str]:
    """Events, a decision, its viewing and a click on it, per visitor; the decision ids."""
    if banner:
        await load_banner(client)
    decided: list[str] = []
    for visitor in visitors:
        batch = [view(n, visitor) for n in range(per_visitor)]
        assert (await client.post("/v1/events", json={"batch": batch})).status_code == 200
        answer = await client.post(
            "/v1/decide", json={"anonymousId": visitor, "placements": [{"id": "home_hero"}]}
        )
        decision = answer.json()["decisions"][0]
        assert [item["id"] for item in decision["items"]] == ["hero-sale"]
        decided.append(decision["decision_id"])
        named = {"decision_id": decision["decision_id"], "placement": "home_hero"}
        seen = {"type": "track", "event": "Decision Viewed", "anonymousId": visitor,
                "messageId": f"{visitor}-seen", "properties": named}  # fmt: skip
        click = {"type": "track", "event": "Promotion Clicked", "anonymousId": visitor,
                 "messageId": f"{visitor}-click",
                 "properties": {**named, "promotion_id": "hero-sale"}}  # fmt: skip
        sent = await client.post("/v1/events", json={"batch": [seen, click]})
        assert sent.status_code == 200
    return decided


def local_events(data_dir: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(data_dir / "events.db") as local:
        return list(local.execute("SELECT seq, message_id, anonymous_id FROM events ORDER BY seq"))


def test_a_fresh_database_is_migrated_once_and_a_newer_schema_refused(database: str) -> None:
    connection = connect_postgres(database)
    try:
        assert schema_version(connection) == 0
        assert migrate(connection) == list(range(1, SCHEMA_VERSION + 1))
        assert migrate(connection) == []  # a second worker starting finds it done
        assert schema_version(connection) == SCHEMA_VERSION
        connection.execute("INSERT INTO intently_schema VALUES (%s)", (SCHEMA_VERSION + 1,))
        with pytest.raises(ConfigError, match="newer intently"):
            migrate(connection)
    finally:
        connection.close()


def test_a_schema_of_an_older_version_is_migrated_at_start_keeping_its_rows(
    database: str, tmp_path: Path
) -> None:
    from intently.stores.postgres import MIGRATIONS

    with psycopg.connect(database, autocommit=True) as old:  # as version 1 left it
        old.execute(b"CREATE TABLE intently_schema (version INTEGER NOT NULL)")
        old.execute(MIGRATIONS[1].encode())
        old.execute(b"INSERT INTO intently_schema VALUES (1)")
        old.execute(b"INSERT INTO events VALUES ('old', 1, 'm1', 0, 0, 'track', 'a', NULL, '{}')")
    Engine(make_settings(tmp_path / "data", database=database)).close()
    assert rows(database, "SELECT max(version) FROM intently_schema") == [(SCHEMA_VERSION,)]
    assert rows(database, "SELECT worker, seq FROM events WHERE worker = 'old'") == [("old", 1)]
    assert rows(database, "SELECT count(*) FROM catalog") == [(0,)]  # version 2 is there


async def test_records_are_shipped_row_for_row_and_erased_with_the_person(
    database: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir, database=database, worker_id="w1")
    engine = Engine(settings, clock=ManualClock(START))
    try:
        async with client_for(engine) as client:
            decided = await traffic(client, ["ann", "bob", "cid"], per_visitor=5)
        engine.decisions.flush()
        assert engine.archive is not None
        engine.archive.drain()
        assert engine.archive.backlog() == 0
        shipped = rows(database, "SELECT seq, message_id, anonymous_id FROM events ORDER BY seq")
        assert shipped == local_events(data_dir)
        archived = {r[0] for r in rows(database, "SELECT decision_id FROM decisions")}
        assert archived == set(decided)
        body = rows(database, "SELECT body FROM decisions LIMIT 1")[0][0]
        assert isinstance(body, dict)
        assert body["placement"] == "home_hero"
        clicked = rows(database, "SELECT decision_id, value FROM rewards WHERE value > 0")
        assert {r[0] for r in clicked} == set(decided)
        assert len(rows(database, "SELECT decision_id FROM exposures")) == 3
        # (positions go under the worker id and its event log's id: engine.records_name)
        assert engine.records_name.startswith("w1/")
        name = engine.records_name
        assert rows(database, "SELECT worker, source FROM shipped ORDER BY source") == [
            (name, "decisions"), (name, "events"), (name, "exposures"), (name, "rewards")
        ]  # fmt: skip

        async with client_for(engine, SECRET_KEY) as admin:
            erased = await admin.delete("/v1/profiles/bob")
        assert erased.status_code == 200, erased.text
        left = rows(database, "SELECT DISTINCT anonymous_id FROM events ORDER BY 1")
        assert left == [("ann",), ("cid",)]
        assert {r[0] for r in rows(database, "SELECT decision_id FROM decisions")} == {
            decided[0], decided[2]
        }  # fmt: skip
        assert {r[0] for r in rows(database, "SELECT decision_id FROM rewards")} <= set(decided)
        assert decided[1] not in {r[0] for r in rows(database, "SELECT decision_id FROM rewards")}
        # Shipping goes on after the erasure without bringing anything of bob back.
        engine.archive.drain()
        assert ("bob",) not in rows(database, "SELECT DISTINCT anonymous_id FROM events")
    finally:
        engine.close()


async def test_records_wait_on_local_disk_while_postgres_is_away_then_drain(
    database: str, tmp_path: Path
) -> None:
    target = urlsplit(database)
    relay = Relay(target.hostname or "127.0.0.1", target.port or 5432)
    through_relay = database.replace(f":{target.port}/", f":{relay.port}/")
    data_dir = tmp_path / "data"
    engine = Engine(make_settings(data_dir, database=through_relay), clock=ManualClock(START))
    try:
        assert engine.archive is not None
        engine.archive.close()  # the test ships by hand: no background thread racing it
        async with client_for(engine) as client:
            await load_banner(client)
        engine.archive.drain()
        relay.cut()
        async with client_for(engine) as client:
            # Events and decisions are acknowledged as usual: PostgreSQL is not on the path.
            await traffic(client, ["dan", "eve"], per_visitor=4, banner=False)
        engine.decisions.flush()
        with pytest.raises((psycopg.Error, OSError)):
            engine.archive.ship_once()
        assert rows(database, "SELECT count(*) FROM events") == [(0,)]
        assert engine.archive.backlog() > 0
        relay.restore()
        engine.archive.drain()
        assert engine.archive.available
        assert engine.archive.backlog() == 0
        shipped = rows(database, "SELECT seq, message_id, anonymous_id FROM events ORDER BY seq")
        assert shipped == local_events(data_dir)
        assert rows(database, "SELECT count(*) FROM decisions") == [(2,)]
        # And an erasure while PostgreSQL is away is refused, not half done.
        relay.cut()
        async with client_for(engine, SECRET_KEY) as admin:
            refused = await admin.delete("/v1/profiles/dan")
            assert refused.status_code == 503
            # (the experiment log, in PostgreSQL too, is the first to say so)
            assert refused.json()["type"].rsplit(":", 1)[1] in (
                "experiments-unavailable",
                "archive-unavailable",
            )
            assert (await admin.get("/v1/profiles/dan")).status_code == 200  # still there
            relay.restore()
            erased = await admin.delete("/v1/profiles/dan")
            assert erased.status_code == 200, erased.text
        assert rows(database, "SELECT count(*) FROM events WHERE anonymous_id = 'dan'") == [(0,)]
    finally:
        engine.close()
        relay.close()


def test_bad_database_settings_stop_the_start_with_a_clear_error(
    database: str, tmp_path: Path
) -> None:
    cases: list[tuple[str, type[Exception], str]] = [
        ("mysql://127.0.0.1/x", ConfigError, "not a PostgreSQL URL"),
        (f"postgresql://127.0.0.1:{free_port()}/x", BackendUnavailable, "cannot reach"),
        (database.rsplit("/", 1)[0] + "/no_such_database_here", ConfigError, "does not exist"),
    ]
    for number, (url, error, message) in enumerate(cases):
        with pytest.raises(error, match=message):
            Engine(make_settings(tmp_path / f"d{number}", database=url))
        # Nothing is left held: the same data dir opens without the database.
        Engine(make_settings(tmp_path / f"d{number}")).close()


def test_the_shipped_event_body_is_the_logged_record_as_json(database: str, tmp_path: Path) -> None:
    import asyncio

    data_dir = tmp_path / "data"
    engine = Engine(make_settings(data_dir, database=database), clock=ManualClock(START))
    try:

        async def send() -> None:
            async with client_for(engine) as client:
                await traffic(client, ["fay"], per_visitor=1)

        asyncio.run(send())
        assert engine.archive is not None
        engine.archive.drain()
        body = rows(database, "SELECT body FROM events WHERE message_id = 'fay-0'")[0][0]
        assert isinstance(body, dict)
        assert body["event"]["properties"] == {"product_id": "p0"}
        assert msgspec.json.encode(body)  # plain JSON, readable by any consumer
    finally:
        engine.close()


async def test_the_catalog_written_on_one_worker_reaches_the_others(
    database: str, tmp_path: Path
) -> None:
    def worker(name: str, url: str = database) -> Engine:
        settings = make_settings(tmp_path / name, database=url, worker_id=name)
        return Engine(settings, clock=ManualClock(START))

    target = urlsplit(database)
    relay = Relay(target.hostname or "127.0.0.1", target.port or 5432)
    a = worker("a", database.replace(f":{target.port}/", f":{relay.port}/"))
    b = worker("b")
    try:
        shoe = {"id": "shoe-1", "title": "Trail shoe", "category": ["Shoes", "running"],
                "price": 90, "stock": 3}  # fmt: skip
        items = {"items": [shoe]}
        offers = {"offers": [{"id": "hero-sale", "kind": "banner"}]}
        async with client_for(a, SECRET_KEY) as admin:
            assert (await admin.post("/v1/catalog/items", json=items)).status_code == 200
            assert (await admin.post("/v1/catalog/offers", json=offers)).status_code == 200
        assert b.catalog.get("shoe-1") is None
        assert b.sync_catalog() == 2
        shoe = b.catalog.get("shoe-1")
        assert shoe is not None
        assert shoe.title == "Trail shoe"
        async with client_for(b) as client:
            answer = await client.post(
                "/v1/decide", json={"anonymousId": "v", "placements": [{"id": "home_hero"}]}
            )
        assert [item["id"] for item in answer.json()["decisions"][0]["items"]] == ["hero-sale"]
        assert b.sync_catalog() == 0  # once only
        assert a.sync_catalog() == 0  # its own rows are not applied twice

        # A worker that starts with an empty data dir gets the whole catalog at once.
        c = worker("c")
        try:
            assert c.catalog.get("shoe-1") is not None
            assert c.catalog.get_offer("hero-sale") is not None
        finally:
            c.close()

        # PostgreSQL away: an upload is refused, and nothing changes anywhere.
        relay.cut()
        changed = {"items": [{"id": "shoe-1", "title": "Renamed", "price": 1, "stock": 3}]}
        async with client_for(a, SECRET_KEY) as admin:
            refused = await admin.post("/v1/catalog/items", json=changed)
        assert refused.status_code == 503
        assert refused.json()["type"].endswith("catalog-unavailable")
        still = a.catalog.get("shoe-1")
        assert still is not None
        assert still.title == "Trail shoe"
        assert b.sync_catalog() == 0
    finally:
        a.close()
        b.close()
        relay.close()
