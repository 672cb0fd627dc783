"""Shipping a worker's records to PostgreSQL: its event log, and its decisions, rewards
and exposures, from the local files where they are first made durable.

The local logs are the buffer: a request never waits for PostgreSQL, and when it is down
nothing is lost; records wait on the local disk and drain, in order, once it answers
again. One thread per worker ships them: it reads the rows after the position recorded in
`shipped`, and inserts them together with the new position in one transaction, so a
crash between the two is impossible and a batch shipped twice (after a lost answer) is
ignored by the primary keys.

An erasure holds the shipping lock: a batch read before the local erasure is either in
PostgreSQL (and deleted with the person) or read again afterwards (without them).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from intently.act.decisions import DecisionRecord
from intently.background import lower_priority
from intently.events.record import record_as_json
from intently.stores.postgres import reconnect_postgres

log = logging.getLogger(__name__)

_decode_batch = msgspec.msgpack.Decoder(list[DecisionRecord]).decode
_to_json = msgspec.json.Encoder().encode
BATCH_ROWS = 2_000
# Between rounds when everything is shipped, and the longest pause after failures.
IDLE_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0


# (worker, a local row) -> the PostgreSQL rows it becomes
Convert = Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]


class Source:
    """One local table shipped to one PostgreSQL table."""

    def __init__(
        self, name: str, path: Path, table: str, select: str, insert: str, convert: Convert
    ) -> None:
        self.name = name
        self.path = path
        self.table = table
        self.select = select  # rows after a position: (position, ...), in order
        self.insert = insert
        self.convert = convert  # (worker, local row) -> PostgreSQL rows
        self.shipped = 0  # the position in PostgreSQL, as last read or written

    def last_position(self) -> int:
        """The local log's latest position (0 while it has no table yet)."""
        if not self.path.exists():
            return 0
        local = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            found = local.execute(f"SELECT max(seq) FROM {self.table}").fetchone()  # noqa: S608
        except sqlite3.OperationalError:
            return 0
        finally:
            local.close()
        return int(found[0] or 0) if found else 0


def _event_rows(worker: str, row: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    seq, message_id, received_ms, at_ms, kind, anonymous_id, user_id, body = row
    return [(worker, seq, message_id, received_ms, at_ms, kind, anonymous_id, user_id,
             record_as_json(body).decode())]  # fmt: skip


def _decision_rows(worker: str, row: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    _, body = row
    return [
        (record.decision_id, worker, record.at_ms, record.placement, record.visitor,
         record.profile_id, record.arm, record.policy, _to_json(record).decode())
        for record in _decode_batch(body)
    ]  # fmt: skip


def _plain_rows(worker: str, row: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    return [(worker, *row)]


def sources(event_log: Path, decision_log: Path) -> list[Source]:
    return [
        Source(
            "events",
            event_log,
            "events",
            "SELECT seq, message_id, received_ms, timestamp_ms, type, anonymous_id, user_id,"
            " body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            "INSERT INTO events VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            _event_rows,
        ),
        Source(
            "decisions",
            decision_log,
            "decision_batches",
            "SELECT seq, body FROM decision_batches WHERE seq > ? ORDER BY seq LIMIT ?",
            "INSERT INTO decisions VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            _decision_rows,
        ),
        Source(
            "rewards",
            decision_log,
            "rewards",
            "SELECT seq, decision_id, at_ms, item, value FROM rewards WHERE seq > ?"
            " ORDER BY seq LIMIT ?",
            "INSERT INTO rewards VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            _plain_rows,
        ),
        Source(
            "exposures",
            decision_log,
            "exposures",
            "SELECT seq, decision_id, at_ms FROM exposures WHERE seq > ? ORDER BY seq LIMIT ?",
            "INSERT INTO exposures VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            _plain_rows,
        ),
    ]


class Archiver:
    """Ships the local logs of one worker to PostgreSQL in the background."""

    def __init__(self, url: str, worker: str, local: Sequence[Source]) -> None:
        self.url = url
        self.worker = worker
        self.sources = list(local)
        self.shipped_rows = 0
        self.failures = 0
        self.available = True  # False from a failed round until one succeeds
        self._connection: psycopg.Connection | None = None
        self._lock = threading.Lock()  # one round, or one erasure, at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="intently-archiver", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        lower_priority()
        pause = IDLE_SECONDS
        while not self._stop.is_set():
            try:
                moved = self.ship_once()
            except (psycopg.Error, OSError) as error:
                self._lost(error)
                pause = min(max(pause * 2, 1.0), MAX_BACKOFF_SECONDS)
            except Exception:  # a bug: logged, tried again later
                log.exception("shipping records to PostgreSQL failed")
                pause = MAX_BACKOFF_SECONDS
            else:
                pause = IDLE_SECONDS
                if moved:
                    continue  # more may wait: no pause while draining
            self._wake.wait(pause)
            self._wake.clear()

    def _lost(self, error: BaseException) -> None:
        if self.available:
            log.warning("PostgreSQL is unavailable; records wait on local disk (%s)", error)
        self.available = False
        self.failures += 1
        self._lost_connection()

    def _lost_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _connect(self) -> psycopg.Connection:
        if self._connection is None or self._connection.closed:
            self._connection = reconnect_postgres(self.url)
        return self._connection

    def ship_once(self) -> int:
        """One round: up to `BATCH_ROWS` of each source; returns how many rows moved."""
        moved = 0
        with self._lock:
            connection = self._connect()
            positions: dict[str, int] = dict(
                connection.execute(
                    "SELECT source, position FROM shipped WHERE worker = %s", (self.worker,)
                ).fetchall()
            )
            for source in self.sources:
                moved += self._ship(connection, source, int(positions.get(source.name, 0)))
        if not self.available:
            log.warning("PostgreSQL is back; shipping what waited")
            self.available = True
        return moved

    def _ship(self, connection: psycopg.Connection, source: Source, position: int) -> int:
        if not source.path.exists():
            return 0
        local = sqlite3.connect(f"file:{source.path}?mode=ro", uri=True)
        try:
            rows = local.execute(source.select, (position, BATCH_ROWS)).fetchall()
        except sqlite3.OperationalError:  # the table does not exist yet
            return 0
        finally:
            local.close()
        source.shipped = position
        if not rows:
            return 0
        converted = [out for row in rows for out in source.convert(self.worker, row)]
        with connection.transaction(), connection.cursor() as cursor:
            if converted:
                cursor.executemany(source.insert.encode(), converted)
            cursor.execute(
                "INSERT INTO shipped VALUES (%s, %s, %s) ON CONFLICT (worker, source)"
                " DO UPDATE SET position = excluded.position",
                (self.worker, source.name, rows[-1][0]),
            )
        self.shipped_rows += len(rows)
        source.shipped = rows[-1][0]
        return len(rows)

    def erase(
        self, anonymous_ids: Sequence[str], user_ids: Sequence[str], visitors: Sequence[str],
        profile_ids: Sequence[str],
    ) -> tuple[int, int]:  # fmt: skip
        """Delete a person's archived events and decisions (with their rewards and
        exposures) from every worker's records; returns (events, decisions). Raises
        `psycopg.Error` when PostgreSQL cannot be reached: the caller must not report the
        erasure done."""
        with self._lock:
            try:
                return self._erase(anonymous_ids, user_ids, visitors, profile_ids)
            except psycopg.OperationalError:
                # Most often the connection went stale in an outage that has ended (its
                # first use fails): once more, on a new one.
                self._lost_connection()
                return self._erase(anonymous_ids, user_ids, visitors, profile_ids)

    def _erase(
        self, anonymous_ids: Sequence[str], user_ids: Sequence[str], visitors: Sequence[str],
        profile_ids: Sequence[str],
    ) -> tuple[int, int]:  # fmt: skip
        connection = self._connect()
        with connection.transaction():
            events = connection.execute(
                "DELETE FROM events WHERE anonymous_id = ANY(%s) OR user_id = ANY(%s)",
                (list(anonymous_ids), list(user_ids)),
            ).rowcount
            ids = [
                row[0]
                for row in connection.execute(
                    "DELETE FROM decisions WHERE visitor = ANY(%s) OR profile_id = ANY(%s)"
                    " RETURNING decision_id",
                    (list(visitors), list(profile_ids)),
                ).fetchall()
            ]
            if ids:
                connection.execute("DELETE FROM rewards WHERE decision_id = ANY(%s)", (ids,))
                connection.execute("DELETE FROM exposures WHERE decision_id = ANY(%s)", (ids,))
        return events, len(ids)

    def wake(self) -> None:
        self._wake.set()

    def drain(self, timeout: float = 30.0) -> None:
        """Ship until nothing waits (tests, shutdown); raises if PostgreSQL is down."""
        import time

        deadline = time.monotonic() + timeout
        while self.ship_once() and time.monotonic() < deadline:
            pass

    def backlog(self) -> int:
        """Positions of the local logs not yet in PostgreSQL (an upper bound: positions
        erased locally count until shipping passes them)."""
        return sum(max(0, s.last_position() - s.shipped) for s in self.sources)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
