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

A row PostgreSQL refuses (`psycopg.DataError`) is not an outage: retried as one, it would
stop shipping for good. What it cannot store (the NUL character, which JSON strings may
carry) is mapped before shipping; a row refused anyway is set aside (logged, counted in
`refused_rows`, kept in the local log) and the rows after it are shipped.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import psycopg

from intently.act.decisions import DecisionRecord
from intently.background import lower_priority
from intently.events.record import record_as_json
from intently.stores.postgres import reconnect_postgres

_T = TypeVar("_T")

log = logging.getLogger(__name__)

_decode_batch = msgspec.msgpack.Decoder(list[DecisionRecord]).decode
_to_json = msgspec.json.Encoder().encode
_from_json = msgspec.json.Decoder().decode
BATCH_ROWS = 2_000
# Between rounds when everything is shipped, and the longest pause after failures.
IDLE_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
# How long `close` waits for a round in progress. Every wait for PostgreSQL is bounded
# (stores/postgres.py, ANSWER_SECONDS), so a round always ends; a stop does not wait for
# one held up by a stalled server.
CLOSE_SECONDS = 10.0
# A failure that means PostgreSQL cannot be reached: the records wait, and shipping
# resumes where it was once it answers.
_OUTAGE = (psycopg.OperationalError, psycopg.InterfaceError, OSError)
# PostgreSQL's text (and JSONB's strings) cannot hold U+0000, which JSON may carry
# ("\u0000"): it is stored as U+FFFD, the replacement character, and erasures look for
# the ids the same way.
_NUL = "\x00"
_NUL_ESCAPE = b"\\u0000"
_REPLACEMENT = "\ufffd"


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


def postgres_text(value: str) -> str:
    """`value` as a PostgreSQL text column can hold it (no NUL)."""
    return value.replace(_NUL, _REPLACEMENT) if _NUL in value else value


def postgres_json(body: bytes) -> str:
    """JSON `body` as PostgreSQL's JSONB takes it: a NUL in any string, key or value,
    becomes U+FFFD. JSON writes NUL only as the escape \\u0000, so a body without that
    text (nearly all) is taken as it is; the others are decoded and encoded again, not
    edited as text: the same six characters may be an escaped backslash and "u0000",
    which the round trip keeps."""
    if _NUL_ESCAPE not in body:
        return body.decode()
    return _to_json(_without_nul(_from_json(body))).decode()


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return postgres_text(value)
    if isinstance(value, dict):
        return {postgres_text(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


def _texts(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """`row` with its strings as text columns hold them (ids come from clients)."""
    return tuple(postgres_text(v) if isinstance(v, str) else v for v in row)


def _event_rows(worker: str, row: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    seq, message_id, received_ms, at_ms, kind, anonymous_id, user_id, body = row
    return [_texts((worker, seq, message_id, received_ms, at_ms, kind, anonymous_id, user_id,
                    postgres_json(record_as_json(body))))]  # fmt: skip


def _decision_rows(worker: str, row: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    _, body = row
    return [
        _texts((record.decision_id, worker, record.at_ms, record.placement, record.visitor,
                record.profile_id, record.arm, record.policy,
                postgres_json(_to_json(record))))
        for record in _decode_batch(body)
    ]  # fmt: skip


def _plain_rows(worker: str, row: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    return [_texts((worker, *row))]


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
        self.refused_rows = 0  # rows PostgreSQL refused (set aside, in the local log only)
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
            except _OUTAGE as error:
                self._lost(error)
                pause = min(max(pause * 2, 1.0), MAX_BACKOFF_SECONDS)
            except Exception:  # a bug, or a refusal that is not a row's: logged, tried later
                log.exception("shipping records to PostgreSQL failed")
                pause = MAX_BACKOFF_SECONDS
            else:
                pause = IDLE_SECONDS
                if moved:
                    continue  # more may wait: no pause while draining
            self._wake.wait(pause)
            self._wake.clear()
        with self._lock:  # (a `close` that stopped waiting for this round left it open)
            self._lost_connection()

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
        last = int(rows[-1][0])
        try:
            self._insert(connection, source, converted, last)
        except psycopg.DataError:  # a row refused: the others go without it
            self._insert_each(connection, source, converted, last)
        self.shipped_rows += len(rows)
        source.shipped = last
        return len(rows)

    def _insert(
        self, connection: psycopg.Connection, source: Source, converted: list[tuple[Any, ...]],
        last: int,
    ) -> None:  # fmt: skip
        """The batch and the position after it, in one transaction."""
        with connection.transaction(), connection.cursor() as cursor:
            if converted:
                cursor.executemany(source.insert.encode(), converted)
            self._advance(cursor, source, last)

    def _insert_each(
        self, connection: psycopg.Connection, source: Source, converted: list[tuple[Any, ...]],
        last: int,
    ) -> None:  # fmt: skip
        """The batch row by row, each in a savepoint, setting aside the rows PostgreSQL
        refuses (rare: one round trip a row), then the position after it."""
        with connection.transaction(), connection.cursor() as cursor:
            for row in converted:
                try:
                    with connection.transaction():
                        cursor.execute(source.insert.encode(), row)
                except psycopg.DataError as error:
                    self.refused_rows += 1
                    log.error(
                        "PostgreSQL refused a row of %s (worker %s, a batch up to position "
                        "%d); it stays in the local log only: %s",
                        source.name, self.worker, last, error,
                    )  # fmt: skip
            self._advance(cursor, source, last)

    def _advance(self, cursor: psycopg.Cursor[Any], source: Source, last: int) -> None:
        cursor.execute(
            "INSERT INTO shipped VALUES (%s, %s, %s) ON CONFLICT (worker, source)"
            " DO UPDATE SET position = excluded.position",
            (self.worker, source.name, last),
        )

    def others_events_of(
        self, anonymous_ids: Sequence[str], user_ids: Sequence[str]
    ) -> list[tuple[int, bytes]]:
        """A person's events that other workers applied and shipped, by the event log's
        rule: (received_ms, body as JSON). For an export, beside this worker's own log.
        Raises `psycopg.Error` when PostgreSQL cannot be reached."""
        query = (
            "SELECT received_ms, body::text FROM events WHERE worker <> %(worker)s AND"
            " (user_id = ANY(%(users)s) OR (anonymous_id = ANY(%(anonymous)s)"
            " AND user_id IS NULL)) ORDER BY received_ms, worker, seq"
        )
        values = {
            "worker": self.worker,
            "users": [postgres_text(i) for i in user_ids],
            "anonymous": [postgres_text(i) for i in anonymous_ids],
        }
        with self._lock:
            rows = self._twice(lambda: self._connect().execute(query, values).fetchall())
        return [(int(at), body.encode()) for at, body in rows]

    def erase(
        self, anonymous_ids: Sequence[str], user_ids: Sequence[str], visitors: Sequence[str],
        profile_ids: Sequence[str],
    ) -> tuple[int, int]:  # fmt: skip
        """Delete a person's archived events and decisions (with their rewards and
        exposures) from every worker's records; returns (events, decisions). Raises
        `psycopg.Error` when PostgreSQL cannot be reached (or does not answer: every wait
        is bounded): the caller must not report the erasure done."""
        with self._lock:
            return self._twice(lambda: self._erase(anonymous_ids, user_ids, visitors, profile_ids))

    def _twice(self, work: Callable[[], _T]) -> _T:
        """`work`, and once more on a new connection if it fails as a lost connection
        does: most often it went stale in an outage that has ended (its first use fails)."""
        try:
            return work()
        except psycopg.OperationalError:
            self._lost_connection()
        return work()

    def _erase(
        self, anonymous_ids: Sequence[str], user_ids: Sequence[str], visitors: Sequence[str],
        profile_ids: Sequence[str],
    ) -> tuple[int, int]:  # fmt: skip
        # The ids as they were shipped (`postgres_text`).
        anonymous = [postgres_text(i) for i in anonymous_ids]
        users = [postgres_text(i) for i in user_ids]
        connection = self._connect()
        with connection.transaction():
            # The local event log's rule (eventlog.py, `_person_filter`): every event with
            # one of the person's user ids, and those with one of their anonymous ids and
            # no user id (its "or one of their own user ids" is the first clause). An
            # anonymous id is a device, which two people may share without a reset: the
            # other person's events on it (with their own user id) are not this person's.
            events = connection.execute(
                "DELETE FROM events WHERE user_id = ANY(%(users)s)"
                " OR (anonymous_id = ANY(%(anonymous)s) AND user_id IS NULL)",
                {"users": users, "anonymous": anonymous},
            ).rowcount
            ids = [
                row[0]
                for row in connection.execute(
                    "DELETE FROM decisions WHERE visitor = ANY(%s) OR profile_id = ANY(%s)"
                    " RETURNING decision_id",
                    ([postgres_text(v) for v in visitors], [postgres_text(p) for p in profile_ids]),
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

    def close(self, timeout: float | None = None) -> None:
        """Stop shipping and close the connection, waiting at most about `timeout`
        (`CLOSE_SECONDS`) for a round (or an erasure) in progress; one held up longer by a
        stalled server is left to end on its own (it is bounded), closing its connection
        then."""
        timeout = CLOSE_SECONDS if timeout is None else timeout
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive() or not self._lock.acquire(timeout=timeout):
            log.warning("PostgreSQL has not answered for %g s; not waiting for it", timeout)
            return
        try:
            self._lost_connection()
        finally:
            self._lock.release()
