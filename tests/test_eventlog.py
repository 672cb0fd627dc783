"""The durable event log: order, group commit under concurrency, reopen, read while written."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from intently.log.eventlog import EventLog, LogClosed, LogRow


def rows(prefix: str, count: int, start_ms: int = 0) -> list[LogRow]:
    return [
        LogRow(f"{prefix}{i}", start_ms + i, start_ms + i, "track", "a", None, b'{"n":%d}' % i)
        for i in range(count)
    ]


def test_appends_are_numbered_in_order_and_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = EventLog.open(path)
    assert log.append_sync(rows("a", 3)) == 1
    assert log.append_sync(rows("b", 2)) == 4
    log.close()
    reopened = EventLog.open(path)
    assert not reopened.unclean_shutdown
    assert reopened.last_seq == 5
    assert reopened.append_sync(rows("c", 1)) == 6
    assert [r.message_id for r in reopened.scan()] == ["a0", "a1", "a2", "b0", "b1", "c0"]
    reopened.close()


def test_group_commit_under_concurrency_keeps_every_append_whole(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "events.db")

    async def main() -> list[int]:
        return await asyncio.gather(*(log.append(rows(f"r{n}-", 1 + n % 7)) for n in range(300)))

    firsts = asyncio.run(main())
    stored = list(log.scan(chunk=97))
    log.close()
    assert [r.seq for r in stored] == list(range(1, len(stored) + 1))
    assert len(stored) == sum(1 + n % 7 for n in range(300))
    # Each append's rows are contiguous and start at the seq it was told.
    by_seq = {r.seq: r.message_id for r in stored}
    for n, first in enumerate(firsts):
        assert [by_seq[first + i] for i in range(1 + n % 7)] == [
            f"r{n}-{i}" for i in range(1 + n % 7)
        ]


def test_large_appends_span_several_statements(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "events.db")
    log.append_sync(rows("x", 2048 + 512 + 3))
    assert log.count() == 2563
    assert [r.seq for r in log.scan()][-1] == 2563
    log.close()


def test_scan_since_receive_time_and_seq(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "events.db")
    log.append_sync(rows("a", 10, start_ms=1000))
    assert [r.message_id for r in log.scan(since_ms=1007)] == ["a7", "a8", "a9"]
    assert [r.message_id for r in log.scan(since_seq=8)] == ["a8", "a9"]
    assert list(log.scan(since_ms=5000)) == []
    assert log.message_ids(1002, 1003) == [("a2", 1002), ("a3", 1003)]
    log.close()


def test_history_appended_late_is_judged_by_its_receive_time(tmp_path: Path) -> None:
    # A replay appends old events after newer ones: scans by receive time and the newest
    # receive time must look at every row, not at log order.
    log = EventLog.open(tmp_path / "events.db")
    log.append_sync(rows("live", 3, start_ms=5000))
    log.append_sync(rows("old", 3, start_ms=1000))
    assert [r.message_id for r in log.scan(since_ms=5001)] == ["live1", "live2"]
    assert log.latest_received_ms() == 5002
    log.close()


def test_a_reader_sees_the_log_while_it_is_written(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = EventLog.open(path)
    log.append_sync(rows("a", 5))
    reader = EventLog.reader(path)
    assert reader.count() == 5
    log.append_sync(rows("b", 1))
    assert reader.latest_received_ms() == 4
    assert reader.count() == 6
    log.close()


def test_closed_log_refuses_appends(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "events.db")
    log.close()
    with pytest.raises(LogClosed):
        log.append_sync(rows("a", 1))


def test_a_failed_write_is_reported_to_the_caller_and_the_log_goes_on(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "events.db")
    bad = [LogRow("m", 0, 0, "track", "a", None, b"{}"), LogRow(None, 0, 0, "t", None, None, b"")]  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        log.append_sync(bad)
    assert log.count() == 0  # the whole group rolled back: nothing half-written
    assert log.append_sync(rows("ok", 1)) == 1
    log.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    EventLog.open(path).close()
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(RuntimeError, match="newer than this intently"):
        EventLog.open(path)


def test_a_waiter_whose_loop_closed_does_not_stop_the_writer(tmp_path: Path) -> None:
    import asyncio

    log = EventLog.open(tmp_path / "events.db", checkpoint_seconds=0)
    loop = asyncio.new_event_loop()

    async def append_and_leave() -> None:
        log.append(rows("gone", 1))  # never awaited: the loop closes first

    # Hold the writer so the append is settled only after its loop has closed.
    gate = log._connect()
    gate.execute("BEGIN IMMEDIATE")
    loop.run_until_complete(append_and_leave())
    loop.close()
    gate.execute("ROLLBACK")
    gate.close()
    assert log.append_sync(rows("next", 1)) == 2
    log.close()
    assert [r.message_id for r in EventLog.reader(tmp_path / "events.db").scan()] == [
        "gone0",
        "next0",
    ]


def test_the_wal_starts_over_under_steady_writes(tmp_path: Path) -> None:
    """Checkpoints let the WAL restart from its beginning even when commits never pause,
    so it stays a bounded, reused file instead of growing for as long as the load lasts
    (with PASSIVE checkpoints alone it grew by every commit's pages)."""
    import time

    path = tmp_path / "events.db"
    log = EventLog.open(
        path, synchronous="NORMAL", checkpoint_seconds=0.1, wal_restart_bytes=1024 * 1024
    )
    body = b"x" * 600
    deadline = time.monotonic() + 2
    number = 0
    while time.monotonic() < deadline:  # small commits, back to back, with no pause
        number += 1
        log.append_sync([LogRow(f"m{number}", number, number, "track", "a", None, body)])
    wal = (tmp_path / "events.db-wal").stat().st_size
    log.close()
    assert number > 500
    # Every commit writes at least one whole page (about 2.5 here); a WAL that never
    # restarted would hold them all, one that restarts about a checkpoint interval's worth.
    pages = number * 4096
    assert wal < pages / 2, f"WAL of {wal} bytes after {number} commits"
    assert [r.message_id for r in EventLog.reader(path).scan()][-1] == f"m{number}"
