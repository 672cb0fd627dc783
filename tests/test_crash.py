"""Durability with real processes: kill -9 at any moment loses no acknowledged event, and a
torn last write is detected and skipped at restart."""

from __future__ import annotations

import http.client
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import msgspec
import pytest

from intently.log.eventlog import EventLog, LogRow
from support import SECRET_KEY, WRITE_KEY, free_port, wait_ready

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent


def start_server(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "INTENTLY_WRITE_KEY": WRITE_KEY, "INTENTLY_SECRET_KEY": SECRET_KEY}
    process = subprocess.Popen(
        [sys.executable, "-m", "intently", "serve", "--port", str(port), "--data-dir",
         str(data_dir), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wait_ready(port, process)
    return process


def post(port: int, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/events",
        data=msgspec.json.encode(body),
        headers={"Authorization": f"Bearer {WRITE_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(msgspec.json.decode(response.read()))


def stored_ids(data_dir: Path) -> set[str]:
    return {row.message_id for row in EventLog.reader(data_dir / "events.db").scan()}


def test_kill_9_under_load_loses_no_acknowledged_event(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    rng = random.Random(11)
    acknowledged: set[str] = set()
    for round_ in range(3):
        port = free_port()
        server = start_server(data_dir, port)
        stop = threading.Event()
        lock = threading.Lock()

        def send(
            worker: int,
            port: int = port,
            stop: threading.Event = stop,
            lock: threading.Lock = lock,
            round_: int = round_,
        ) -> None:
            while not stop.is_set():
                ids = [f"r{round_}-w{worker}-{uuid.uuid4().hex}" for _ in range(10)]
                batch = [
                    {"type": "track", "event": "Tick", "anonymousId": "a", "messageId": m}
                    for m in ids
                ]
                try:
                    result = post(port, {"batch": batch})
                except (OSError, urllib.error.URLError, http.client.HTTPException):
                    # The server is gone (maybe mid-response): these were never acknowledged.
                    return
                assert result["accepted"] == 10
                with lock:
                    acknowledged.update(ids)

        senders = [threading.Thread(target=send, args=(w,)) for w in range(4)]
        for thread in senders:
            thread.start()
        time.sleep(rng.uniform(0.5, 1.5))  # kill at an arbitrary moment under load
        server.send_signal(signal.SIGKILL)
        server.wait()
        stop.set()
        for thread in senders:
            thread.join()
        missing = acknowledged - stored_ids(data_dir)
        assert not missing, f"round {round_}: {len(missing)} acknowledged events lost"
    assert len(acknowledged) > 300

    # After the crashes the engine starts, remembers the ids (dedupe) and takes new events.
    port = free_port()
    server = start_server(data_dir, port)
    try:
        some_id = sorted(acknowledged)[0]
        again = post(port, {"type": "page", "anonymousId": "a", "messageId": some_id})
        assert again == {"accepted": 0, "duplicates": 1}
        assert post(port, {"type": "page", "anonymousId": "a"}) == {"accepted": 1}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    connection = sqlite3.connect(data_dir / "events.db")
    assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert connection.execute("SELECT value FROM meta WHERE key='shutdown'").fetchone() == (
        "clean",
    )


def run_writer_and_kill(path: Path, groups: int, size: int) -> list[tuple[int, int]]:
    child = subprocess.Popen(
        [sys.executable, str(HERE / "crash_writer.py"), str(path), str(groups), str(size)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    acked: list[tuple[int, int]] = []
    assert child.stdout is not None
    for line in child.stdout:
        if line.strip() == "done":
            break
        _, first, count = line.split()
        acked.append((int(first), int(count)))
    child.send_signal(signal.SIGKILL)
    child.wait()
    return acked


def test_torn_last_write_is_detected_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    acked = run_writer_and_kill(path, groups=20, size=25)
    wal = path.with_name("events.db-wal")
    size = wal.stat().st_size
    assert size > 0, "the WAL holds the commits (no checkpoint ran)"
    # Tear the last write: cut the final frame in half, as a crash mid-write would.
    with wal.open("r+b") as file:
        file.truncate(size - 2000)
    log = EventLog.open(path)
    try:
        assert log.unclean_shutdown
        stored = list(log.scan())
        # Every group but the torn one is whole; the torn one is gone entirely.
        last_first, _ = acked[-1]
        assert [r.seq for r in stored] == list(range(1, last_first))
        assert len(stored) == sum(count for _, count in acked[:-1])
        # The log goes on from there.
        assert log.append_sync([LogRow("after", 0, 0, "track", "a", None, b"{}")]) == last_first
    finally:
        log.close()
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_garbage_after_the_last_commit_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    acked = run_writer_and_kill(path, groups=5, size=10)
    with path.with_name("events.db-wal").open("ab") as file:
        file.write(os.urandom(5000))  # a half-written frame of a next transaction
    log = EventLog.open(path)
    try:
        assert log.count() == sum(count for _, count in acked) == 50
    finally:
        log.close()
