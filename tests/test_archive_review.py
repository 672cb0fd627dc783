"""Review fixes of the PostgreSQL archive, against the real server (tests/services.py):
erasure by the local event log's rule, rows PostgreSQL cannot store, decision log seqs
that never go back, and a server that stalls (through a relay that stops passing bytes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
import pytest

from intently import Engine, ManualClock
from intently.act.decisions import DecisionLog, DecisionRecord, ExposureRecord, RewardRecord
from intently.log.eventlog import EventLog, LogRow
from intently.stores import archive as archive_module
from intently.stores import postgres
from intently.stores.archive import Archiver, sources
from intently.stores.postgres import connect_postgres, migrate
from services import Relay, postgres_database
from support import SECRET_KEY, START, client_for, make_settings, track

pytestmark = pytest.mark.anyio
T = TypeVar("T")


@pytest.fixture
def database() -> Iterator[str]:
    with postgres_database() as url:
        migrated = connect_postgres(url)
        try:
            migrate(migrated)
        finally:
            migrated.close()
        yield url


@pytest.fixture
def relay(database: str) -> Iterator[Relay]:
    target = urlsplit(database)
    through = Relay(target.hostname or "127.0.0.1", target.port or 5432)
    try:
        yield through
    finally:
        through.close()


def via(relay: Relay, url: str) -> str:
    port = urlsplit(url).port or 5432
    return url.replace(f":{port}/", f":{relay.port}/")


def rows(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as connection:
        return list(connection.execute(query.encode()).fetchall())


def archiver(url: str, directory: Path) -> Archiver:
    """An archiver without its thread (the test ships by hand)."""
    return Archiver(url, "w1", sources(directory / "events.db", directory / "decisions.db"))


def within(seconds: float, work: Callable[[], T]) -> tuple[T | None, BaseException | None]:
    """`work`'s result or error, run on a thread; fails the test if it takes longer than
    `seconds` (without hanging the test run on it)."""
    outcome: list[Any] = [None, None]

    def run() -> None:
        try:
            outcome[0] = work()
        except BaseException as error:  # reported to the test
            outcome[1] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s"
    return outcome[0], outcome[1]


# -- B8: erasure by the event log's rule ---------------------------------------------------


def test_erasing_one_person_keeps_the_archived_events_of_another_on_a_shared_device(
    database: str, tmp_path: Path
) -> None:
    """Anonymous id A was used by U1 and by U2 (no reset between them). Erasing U1 (who
    had A) removes U1's events and A's anonymous ones, here as in the local log, and
    keeps U2's (A, U2) event."""
    log = EventLog.open(tmp_path / "events.db")
    people = [("A", "U1"), ("A", "U2"), ("A", None), ("B", None), ("C", "U1"), (None, "U2")]
    log.append_sync(
        [LogRow(f"m{n}", 0, 0, "track", a, u, b"{}") for n, (a, u) in enumerate(people)]
    )
    archive = archiver(database, tmp_path)
    try:
        archive.drain()
        archived, _ = archive.erase(["A"], ["U1"], ["a:A", "u:U1"], ["profile-1"])
        erased_locally = log.erase(["A"], ["U1"])
    finally:
        archive.close()
        log.close()
    kept = rows(database, "SELECT anonymous_id, user_id FROM events ORDER BY seq")
    assert kept == [("A", "U2"), ("B", None), (None, "U2")]
    assert archived == erased_locally == 3
    local = rows_of_local(tmp_path / "events.db")
    assert local == kept


def rows_of_local(path: Path) -> list[tuple[Any, ...]]:
    import sqlite3

    with sqlite3.connect(path) as local:
        return list(local.execute("SELECT anonymous_id, user_id FROM events ORDER BY seq"))


async def test_erasing_a_person_through_the_api_keeps_the_archived_events_of_who_shared_the_browser(
    database: str, tmp_path: Path
) -> None:
    engine = Engine(make_settings(tmp_path / "data", database=database), clock=ManualClock(START))
    try:
        async with client_for(engine) as client:
            batch = [
                {"type": "identify", "anonymousId": "shared", "userId": "alice"},
                track(anonymousId="shared", messageId="alice-view"),
                {"type": "identify", "anonymousId": "shared", "userId": "bob"},
                track(anonymousId="shared", userId="bob", messageId="bob-view"),
            ]
            assert (await client.post("/v1/events", json={"batch": batch})).status_code == 200
        assert engine.archive is not None
        engine.archive.drain()
        async with client_for(engine, SECRET_KEY) as admin:
            assert (await admin.delete("/v1/profiles/alice")).status_code == 200
        left = rows(database, "SELECT anonymous_id, user_id FROM events ORDER BY seq")
        assert left == [("shared", "bob"), ("shared", "bob")]
        assert left == rows_of_local(tmp_path / "data" / "events.db")
    finally:
        engine.close()


# -- C11: what PostgreSQL cannot store ------------------------------------------------------


async def test_an_event_with_nul_characters_is_shipped_and_so_are_the_events_after_it(
    database: str, tmp_path: Path
) -> None:
    engine = Engine(make_settings(tmp_path / "data", database=database), clock=ManualClock(START))
    nul = "nul\u0000id"
    try:
        async with client_for(engine) as client:
            batch = [
                track(anonymousId=nul, messageId="m\u00001",
                      properties={"note": "a\u0000b", "k\u0000": ["\u0000"]}),
                # Not a NUL: a backslash and "u0000", which must stay as they are.
                track(anonymousId="plain", messageId="m2", properties={"note": "\\u0000"}),
            ]  # fmt: skip
            assert (await client.post("/v1/events", json={"batch": batch})).status_code == 200
            answer = await client.post(
                "/v1/decide", json={"anonymousId": nul, "placements": [{"id": "home_hero"}]}
            )
            assert answer.status_code == 200
            after = track(anonymousId="after", messageId="m3")
            assert (await client.post("/v1/events", json=after)).status_code == 200
        engine.decisions.flush()
        assert engine.archive is not None
        engine.archive.drain()  # raised DataError, for ever, before the fix
        assert engine.archive.backlog() == 0
        assert engine.archive.available
        shipped = rows(database, "SELECT message_id, anonymous_id, body FROM events ORDER BY seq")
        assert [(m, a) for m, a, _ in shipped] == [
            ("m\ufffd1", "nul\ufffdid"), ("m2", "plain"), ("m3", "after")
        ]  # fmt: skip
        first, second = shipped[0][2]["event"], shipped[1][2]["event"]
        assert first["properties"] == {"note": "a\ufffdb", "k\ufffd": ["\ufffd"]}
        assert first["anonymousId"] == "nul\ufffdid"
        assert second["properties"] == {"note": "\\u0000"}
        assert rows(database, "SELECT visitor FROM decisions") == [("a:nul\ufffdid",)]
        # The person is erased by the id as sent (mapped the same way).
        events, decisions = engine.archive.erase([nul], [], [f"a:{nul}"], [])
        assert (events, decisions) == (1, 1)
        assert rows(database, "SELECT count(*) FROM events WHERE anonymous_id LIKE 'nul%'") == [
            (0,)
        ]
    finally:
        engine.close()


def test_a_row_postgres_refuses_is_set_aside_and_the_rows_after_it_are_shipped(
    database: str, tmp_path: Path
) -> None:
    """A refusal is a row's problem, not an outage: before the fix the batch was retried
    for ever and nothing after it was shipped."""
    log = EventLog.open(tmp_path / "events.db")
    bodies = [b'{"n": 1}', b'{"n": 2, broken', b'{"n": 3}']
    log.append_sync([LogRow(f"m{n}", 0, 0, "track", "a", None, b) for n, b in enumerate(bodies)])
    log.close()
    archive = archiver(database, tmp_path)
    try:
        archive.drain()
        assert archive.available
        assert archive.refused_rows == 1
        assert archive.backlog() == 0
    finally:
        archive.close()
    assert rows(database, "SELECT seq FROM events ORDER BY seq") == [(1,), (3,)]
    assert rows(database, "SELECT source, position FROM shipped WHERE source = 'events'") == [
        ("events", 3)
    ]


# -- C10: decision log seqs never go back --------------------------------------------------


def decision(n: int, visitor: str) -> DecisionRecord:
    return DecisionRecord(
        decision_id=f"d{n}", at_ms=n, placement="home_hero", visitor=visitor,
        policy="rules", policy_version="v1",
    )  # fmt: skip


def write(log: DecisionLog, n: int, visitor: str) -> None:
    log.record(decision(n, visitor))
    log.reward(RewardRecord(decision_id=f"d{n}", at_ms=n, item=None, value=1.0))
    log.exposure(ExposureRecord(decision_id=f"d{n}", at_ms=n))
    log.flush()


def archived(url: str) -> list[list[Any]]:
    return [
        [r[0] for r in rows(url, f"SELECT decision_id FROM {table} ORDER BY 1")]  # noqa: S608
        for table in ("decisions", "rewards", "exposures")
    ]


def test_a_decision_written_after_the_latest_was_erased_is_shipped(
    database: str, tmp_path: Path
) -> None:
    log = DecisionLog(tmp_path / "decisions.db")
    archive = archiver(database, tmp_path)
    try:
        write(log, 1, "a:ann")
        write(log, 2, "a:bob")
        archive.drain()
        assert archived(database) == [["d1", "d2"]] * 3
        # Bob's records are the latest in every table: erased, their seqs are free...
        archive.erase(["bob"], [], ["a:bob"], [])
        assert log.erase(["a:bob"], []) == 1
        write(log, 3, "a:cid")  # ...and were given again before the fix: never shipped
        archive.drain()
        assert archived(database) == [["d1", "d3"]] * 3
        # Also across a restart, which reads the mark back.
        assert log.erase(["a:cid"], []) == 1
        log.close()
        log = DecisionLog(tmp_path / "decisions.db")
        write(log, 4, "a:dan")
        archive.drain()
        assert archived(database) == [["d1", "d3", "d4"]] * 3
        assert archive.backlog() == 0
    finally:
        archive.close()
        log.close()


def test_a_decision_log_from_before_the_mark_starts_it_at_its_latest_rows(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "decisions.db"
    log = DecisionLog(path)
    write(log, 1, "a:ann")
    write(log, 2, "a:bob")
    log.close()
    with sqlite3.connect(path) as old:  # as an earlier version left it
        old.execute("DROP TABLE seq_high")
    log = DecisionLog(path)
    try:
        write(log, 3, "a:cid")
    finally:
        log.close()
    with sqlite3.connect(path) as db:
        for table in ("decision_batches", "rewards", "exposures"):
            seqs = [r[0] for r in db.execute(f"SELECT seq FROM {table} ORDER BY seq")]  # noqa: S608
            assert seqs == [1, 2, 3]


# -- C13: a stalled server -----------------------------------------------------------------


def test_connections_carry_the_timeouts_and_keep_the_urls_own_settings(database: str) -> None:
    connection = connect_postgres(database)
    try:
        assert connection.execute("SHOW statement_timeout").fetchone() == ("30s",)
        given = connection.info.get_parameters()
        assert (given["keepalives"], given["tcp_user_timeout"]) == ("1", "30000")
        assert connection.answer_seconds == postgres.ANSWER_SECONDS
    finally:
        connection.close()
    own = connect_postgres(f"{database}?keepalives_idle=60&options=-c%20statement_timeout%3D5s")
    try:
        assert own.execute("SHOW statement_timeout").fetchone() == ("5s",)
        assert own.info.get_parameters()["keepalives_idle"] == "60"
    finally:
        own.close()


@pytest.mark.timeout(60)
def test_a_query_to_a_stalled_server_fails_within_the_bound(
    database: str, relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's kernel acknowledges every byte and nothing comes back: no keepalive
    or TCP timeout fires, and the server's statement_timeout never starts."""
    monkeypatch.setattr(postgres, "ANSWER_SECONDS", 1.0, raising=False)
    connection = connect_postgres(via(relay, database))
    try:
        assert connection.execute("SELECT 1").fetchone() == (1,)
        relay.stall()
        started = time.monotonic()
        _, error = within(10, lambda: connection.execute("SELECT 2").fetchone())
        assert isinstance(error, psycopg.OperationalError), error
        assert "did not answer within 1 s" in str(error)
        assert 0.9 < time.monotonic() - started < 5
        assert connection.closed
    finally:
        connection.close()


@pytest.mark.timeout(60)
def test_shipping_and_erasing_against_a_stalled_server_fail_within_the_bound(
    database: str, relay: Relay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "ANSWER_SECONDS", 1.0, raising=False)
    log = EventLog.open(tmp_path / "events.db")
    log.append_sync([LogRow("m1", 0, 0, "track", "a", None, b"{}")])
    archive = archiver(via(relay, database), tmp_path)
    try:
        archive.drain()
        log.append_sync([LogRow("m2", 0, 0, "track", "a", None, b"{}")])
        relay.stall()
        _, error = within(10, archive.ship_once)
        assert isinstance(error, psycopg.OperationalError), error
        # (an erasure tries once more on a new connection, which stalls as well)
        _, error = within(15, lambda: archive.erase(["a"], [], ["a:a"], []))
        assert isinstance(error, psycopg.OperationalError), error
        relay.restore()
        archive.drain()
        assert rows(database, "SELECT message_id FROM events ORDER BY seq") == [("m1",), ("m2",)]
    finally:
        archive.close()
        log.close()


@pytest.mark.timeout(60)
def test_closing_the_archiver_does_not_wait_for_a_stalled_server(
    database: str, relay: Relay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the default (long) answer bound, a round held up by a stalled server does
    not hold up `close` past its own timeout (before the fix: for ever, on the lock the
    round holds)."""
    monkeypatch.setattr(archive_module, "CLOSE_SECONDS", 0.5, raising=False)
    archive = archiver(via(relay, database), tmp_path)
    archive.drain()  # connected
    relay.stall()
    archive.start()
    time.sleep(0.3)  # the first round is waiting for PostgreSQL
    started = time.monotonic()
    _, error = within(15, archive.close)
    assert error is None
    assert time.monotonic() - started < 3
    relay.cut()  # the round fails now: the thread ends, closing its connection
    archive._thread.join(10)
    assert not archive._thread.is_alive()
    assert archive._connection is None


def test_migrations_are_not_cut_by_the_timeouts(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = postgres.SCHEMA_VERSION + 1
    monkeypatch.setattr(postgres, "STATEMENT_TIMEOUT_MS", 100, raising=False)
    monkeypatch.setattr(postgres, "ANSWER_SECONDS", 0.3, raising=False)
    monkeypatch.setitem(postgres.MIGRATIONS, step, "SELECT pg_sleep(0.6);")
    monkeypatch.setattr(postgres, "SCHEMA_VERSION", step)
    connection = connect_postgres(database)
    try:
        assert migrate(connection) == [step]
        # Outside a migration, both bounds hold again.
        assert connection.execute("SHOW statement_timeout").fetchone() == ("100ms",)
        with pytest.raises(psycopg.errors.QueryCanceled):
            connection.execute("SELECT pg_sleep(0.6)")
        assert connection.answer_seconds == 0.3
    finally:
        connection.close()
