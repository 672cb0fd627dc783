"""The durable event log: SQLite in WAL mode, written by one thread with group commit.

An event is acknowledged only after the transaction holding it has committed, and with
`synchronous=FULL` a commit returns only after the WAL is fsynced, so neither a kill -9
nor a power cut loses an acknowledged event. Fsyncs are shared: while one commit is on
disk, the appends that arrive queue up and go into the next transaction together, so the
cost of durability is paid per group, not per event.

A crash in the middle of a commit leaves a torn tail in the WAL. SQLite checksums every WAL
frame and, at the next open, replays only the frames up to the last complete commit, so
the torn transaction (never acknowledged) is skipped. `EventLog.open` reports when the
previous run did not close cleanly.

A log position (`seq`) is never handed out twice, even after an erasure deleted the last
rows (the highest position given is kept in `meta`): a state store says "applied up to
N", and a new event at a position it had counted would be skipped. Each log also has a
random id, made when it is created, which a state store keeps beside its position: a
position is only ever compared with the log it came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future as ThreadFuture
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal, NamedTuple

from intently.background import lower_priority
from intently.sqlite_rows import insert_flat

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
Synchronous = Literal["FULL", "NORMAL"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY,
    message_id   TEXT    NOT NULL,
    received_ms  INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    type         TEXT    NOT NULL,
    anonymous_id TEXT,
    user_id      TEXT,
    body         BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS events_received ON events (received_ms);
"""
_COLUMNS = 8
# Past this size the writer makes the WAL start over; a WAL that grew past twice this (a
# burst) is also cut back then. Restarting costs the writer a checkpoint with its fsyncs
# (3-10 ms measured), so it is not done at every checkpoint.
WAL_RESTART_BYTES = 32 * 1024 * 1024
# Appends grouped into one transaction, at most.
MAX_GROUP_ROWS = 20_000
# What the log stores of an event, in column order: messageId, received and event times
# (epoch ms), type, anonymousId, userId, body (the encoded `EventRecord`). The pipeline
# builds plain tuples (a NamedTuple costs ten times more to build, per event); `LogRow`
# names the same columns for readers and tests.
Row = tuple[str, int, int, str, str | None, str | None, bytes]


class LogRow(NamedTuple):
    """What the log stores of an event (the body is the encoded `EventRecord`)."""

    message_id: str
    received_ms: int
    timestamp_ms: int
    type: str
    anonymous_id: str | None
    user_id: str | None
    body: bytes


class StoredRow(NamedTuple):
    seq: int
    message_id: str
    received_ms: int
    body: bytes


class LogClosed(RuntimeError):
    pass


# Told the outcome of an append: the seq of its first row, or the error that lost it.
Done = Callable[[int, BaseException | None], None]


@dataclass
class _Append:
    rows: Sequence[Row]
    done: Done
    # The event loop `done` runs on; None: run it on the writer thread (blocking callers).
    loop: asyncio.AbstractEventLoop | None
    first_seq: int = field(default=0)


class EventLogReader:
    """Read access to an event log; safe while another process writes it (WAL readers
    see a consistent snapshot)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def scan(
        self, since_seq: int = 0, since_ms: int | None = None, chunk: int = 2000
    ) -> Generator[StoredRow]:
        """Rows in log order, from `since_seq` (exclusive) and/or `since_ms` received."""
        connection = self._connect(readonly=True)
        try:
            if since_ms is not None:
                found = connection.execute(
                    "SELECT min(seq) FROM events WHERE received_ms >= ?", (since_ms,)
                ).fetchone()[0]
                if found is None:
                    return
                since_seq = max(since_seq, found - 1)
            # Replayed history can sit later in the log than newer events: the receive
            # time filter holds on every row, not only on where the scan starts.
            floor_ms = -(2**62) if since_ms is None else since_ms
            while True:
                rows = connection.execute(
                    "SELECT seq, message_id, received_ms, body FROM events"
                    " WHERE seq > ? ORDER BY seq LIMIT ?",
                    (since_seq, chunk),
                ).fetchall()
                for row in rows:
                    if row[2] >= floor_ms:
                        yield StoredRow(*row)
                if len(rows) < chunk:
                    return
                since_seq = rows[-1][0]
        finally:
            connection.close()

    def message_ids(self, from_ms: int, to_ms: int) -> list[tuple[str, int]]:
        """(messageId, received_ms) of the events received in [from_ms, to_ms]."""
        connection = self._connect(readonly=True)
        try:
            return connection.execute(
                "SELECT message_id, received_ms FROM events"
                " WHERE received_ms BETWEEN ? AND ? ORDER BY received_ms",
                (from_ms, to_ms),
            ).fetchall()
        finally:
            connection.close()

    def log_id(self) -> str | None:
        """The id this log was given when it was created (None: an old log never opened
        by a version that gives them)."""
        connection = self._connect(readonly=True)
        try:
            row = connection.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()
            return None if row is None else str(row[0])
        finally:
            connection.close()

    def latest_received_ms(self) -> int | None:
        connection = self._connect(readonly=True)
        try:
            # The newest receive time, not the last row's: a replay appends old history.
            value: int | None = connection.execute(
                "SELECT max(received_ms) FROM events"
            ).fetchone()[0]
            return value
        finally:
            connection.close()

    def rows_of(self, anonymous_ids: Sequence[str], user_ids: Sequence[str]) -> list[StoredRow]:
        """The events of one person, in log order: every event with one of `user_ids`,
        and every event with one of `anonymous_ids` and no other user's id (a browser
        shared without a reset does not hand one person's events to another)."""
        where, parameters = _person_filter(anonymous_ids, user_ids)
        connection = self._connect(readonly=True)
        try:
            rows = connection.execute(
                f"SELECT seq, message_id, received_ms, body FROM events WHERE {where}"  # noqa: S608
                " ORDER BY seq",
                parameters,
            ).fetchall()
            return [StoredRow(*row) for row in rows]
        finally:
            connection.close()

    def latest_rows_of(
        self, anonymous_ids: Sequence[str], user_ids: Sequence[str], limit: int
    ) -> list[StoredRow]:
        """The latest `limit` events of one person (as `rows_of` finds them), the latest
        first: the scan from the end stops once it has them."""
        where, parameters = _person_filter(anonymous_ids, user_ids)
        connection = self._connect(readonly=True)
        try:
            rows = connection.execute(
                f"SELECT seq, message_id, received_ms, body FROM events WHERE {where}"  # noqa: S608
                " ORDER BY seq DESC LIMIT ?",
                [*parameters, limit],
            ).fetchall()
            return [StoredRow(*row) for row in rows]
        finally:
            connection.close()

    def count(self) -> int:
        connection = self._connect(readonly=True)
        try:
            return int(connection.execute("SELECT count(*) FROM events").fetchone()[0])
        finally:
            connection.close()

    def _connect(self, readonly: bool = False) -> sqlite3.Connection:
        if readonly:
            uri = f"file:{self.path}?mode=ro"
            connection = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            connection = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, cached_statements=32
            )
        connection.execute("PRAGMA busy_timeout = 5000")
        return connection


class EventLog(EventLogReader):
    """Append-only, durable, ordered by `seq`.

    >>> import tempfile, pathlib
    >>> log = EventLog.open(pathlib.Path(tempfile.mkdtemp()) / "events.db")
    >>> log.append_sync([LogRow("m1", 0, 0, "track", "a1", None, b"{}")])
    1
    >>> [row.message_id for row in log.scan()]
    ['m1']
    >>> log.close()
    """

    def __init__(
        self,
        path: Path,
        synchronous: Synchronous,
        checkpoint_seconds: float,
        wal_restart_bytes: int = WAL_RESTART_BYTES,
    ) -> None:
        super().__init__(path)
        self._synchronous = synchronous
        self._wal_restart_bytes = wal_restart_bytes
        self._queue: queue.SimpleQueue[_Append | None] = queue.SimpleQueue()
        self._closed = False
        # Set by the checkpointer: the writer finishes the checkpoint between two commits.
        self._restart_wal = False
        self.unclean_shutdown = False
        writer = self._connect()
        try:
            self._prepare(writer)
            self.last_seq: int = _last_seq(writer)
        except BaseException:
            writer.close()
            raise
        self._writer_thread = threading.Thread(
            target=self._write_loop, args=(writer,), name="intently-log-writer", daemon=True
        )
        self._writer_thread.start()
        self._stop_checkpoints = threading.Event()
        self._checkpointer: threading.Thread | None = None
        if checkpoint_seconds > 0:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop,
                args=(checkpoint_seconds,),
                name="intently-log-checkpoint",
                daemon=True,
            )
            self._checkpointer.start()

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        synchronous: Synchronous = "FULL",
        checkpoint_seconds: float = 1.0,
        wal_restart_bytes: int = WAL_RESTART_BYTES,
    ) -> EventLog:
        """Open (or create) the log at `path`. `synchronous="NORMAL"` survives a crash of
        the process but not of the machine; `checkpoint_seconds=0` leaves all frames in
        the WAL until close (used by crash tests); past `wal_restart_bytes` the WAL is
        made to start over (see `_checkpoint_loop`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(path, synchronous, checkpoint_seconds, wal_restart_bytes)

    @staticmethod
    def reader(path: Path) -> EventLogReader:
        """Read-only access, for tools that run beside a serving engine."""
        return EventLogReader(path)

    # -- writing -------------------------------------------------------------------------

    def append_then(self, rows: Sequence[Row], done: Done) -> None:
        """Append `rows`; once they are durable (or failed), call `done(first_seq, error)`
        on the calling event loop. Appends that commit together are told in one callback
        of the loop, in commit order: a thread-safe wake-up per request, and a future with
        callbacks per request, cost more than the rest of an append."""
        self._enqueue(_Append(rows, done, asyncio.get_running_loop()))

    def append(self, rows: Sequence[Row]) -> asyncio.Future[int]:
        """`append_then` as a future resolving to the seq of the first row."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.append_then(rows, partial(_settle, future))
        return future

    def append_sync(self, rows: Sequence[Row]) -> int:
        """Blocking `append`, for tools outside an event loop."""
        future: ThreadFuture[int] = ThreadFuture()

        def done(first_seq: int, error: BaseException | None) -> None:
            if error is None:
                future.set_result(first_seq)
            else:
                future.set_exception(error)

        self._enqueue(_Append(rows, done, None))
        return future.result()

    def _enqueue(self, item: _Append) -> None:
        if self._closed:
            raise LogClosed("the event log is closed")
        self._queue.put(item)

    def _write_loop(self, connection: sqlite3.Connection) -> None:
        next_seq = self.last_seq + 1
        while True:
            first = self._queue.get()
            if first is None:
                break
            group = [first]
            count = len(first.rows)
            stop = False
            while count < MAX_GROUP_ROWS:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
                count += len(item.rows)
            seq = next_seq
            values: list[object] = []
            for item in group:
                item.first_seq = seq
                for row in item.rows:
                    values.append(seq)
                    values.extend(row)
                    seq += 1
            try:
                connection.execute("BEGIN")
                # (a few multi-row statements: see intently.sqlite_rows)
                insert_flat(connection, "INSERT INTO events VALUES", _COLUMNS, values)
                connection.execute("COMMIT")
            except BaseException as error:  # report every failure to the waiting requests
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
                log.exception("event log write failed")
                _notify(group, error)
            else:
                next_seq = seq
                self.last_seq = seq - 1
                _notify(group, None)
            if self._restart_wal:
                self._restart_wal = False
                # Between two of its own commits, with the bulk already copied by the
                # checkpointer: copy the rest, so the next commit starts the WAL over.
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            if stop:
                break
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.execute("UPDATE meta SET value = 'clean' WHERE key = 'shutdown'")
        connection.close()

    def _checkpoint_loop(self, seconds: float) -> None:
        """Copy the WAL into the database, off the writer (autocheckpoint is off for it),
        so the checkpoint's writes and fsyncs stay out of the commit path.

        A checkpoint from another connection never lets the WAL start over under steady
        writes: the next writer restarts the WAL only if, when it begins, every frame has
        been copied, and with commits back to back some always arrive during the copy (a
        RESTART checkpoint, which would hold writers back for it, cannot even get in
        between them). The WAL then grows for as long as the load lasts (measured: 120 MB
        in 1.5 s of small commits), every commit extends the file, and an fsync that must
        also journal a new file size waits behind everything else being written (measured:
        commits stalling 25-45 ms). So this thread copies the bulk, concurrently with the
        writer, and once the WAL is past `wal_restart_bytes` asks the writer to copy the
        few frames that arrived meanwhile between two of its own commits, after which its
        next commit writes the WAL from its start again, over the same blocks. (Not at
        every checkpoint: that small checkpoint ends with fsyncs, on the commit path.)
        """
        lower_priority()
        connection = self._connect()
        page_size = int(connection.execute("PRAGMA page_size").fetchone()[0])
        try:
            while not self._stop_checkpoints.wait(seconds):
                try:
                    # (busy, frames in the WAL since it last started over, frames copied)
                    _, frames, _ = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:  # busy, or worse: logged, tried again next time
                    log.warning("checkpoint of %s failed", self.path, exc_info=True)
                    continue
                if frames * page_size > self._wal_restart_bytes:
                    self._restart_wal = True
        finally:
            connection.close()

    def erase(self, anonymous_ids: Sequence[str], user_ids: Sequence[str]) -> int:
        """Delete one person's events (as `rows_of` selects them) so that no copy stays on
        disk: freed pages are zeroed (`secure_delete`) and the WAL, which still holds the
        old pages, is checkpointed and truncated. Returns how many events were deleted."""
        where, parameters = _person_filter(anonymous_ids, user_ids)
        connection = self._connect()
        try:
            connection.execute("PRAGMA secure_delete = ON")
            connection.execute("BEGIN IMMEDIATE")
            try:
                # Before the rows go: the last position given, were they the last rows.
                connection.execute(_KEEP_LAST_SEQ)
                deleted = connection.execute(
                    f"DELETE FROM events WHERE {where}",  # noqa: S608
                    parameters,
                ).rowcount
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            truncate_wal(connection, self.path)
            return int(deleted)
        finally:
            connection.close()

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Write what is queued, checkpoint, and mark a clean shutdown."""
        if self._closed:
            return
        self._closed = True
        self._stop_checkpoints.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        self._queue.put(None)
        self._writer_thread.join()

    def _prepare(self, connection: sqlite3.Connection) -> None:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute(f"PRAGMA synchronous = {self._synchronous}")
        connection.execute("PRAGMA wal_autocheckpoint = 0")
        connection.execute(f"PRAGMA journal_size_limit = {2 * self._wal_restart_bytes}")
        connection.executescript(_SCHEMA)
        version = connection.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'"
        ).fetchone()
        if version is None:
            connection.execute(
                "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(version[0]) > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has schema version {version[0]}, newer than this intently "
                f"understands ({SCHEMA_VERSION}): upgrade intently"
            )
        # Made once, with the log; kept for its life (a copy of the file keeps it too).
        connection.execute(
            "INSERT OR IGNORE INTO meta VALUES ('log_id', ?)", (secrets.token_hex(16),)
        )
        shutdown = connection.execute("SELECT value FROM meta WHERE key = 'shutdown'").fetchone()
        self.unclean_shutdown = shutdown is not None and shutdown[0] != "clean"
        if self.unclean_shutdown:
            log.warning(
                "%s: the previous run did not close cleanly; recovered up to its last "
                "complete commit",
                self.path,
            )
        connection.execute("INSERT OR REPLACE INTO meta VALUES ('shutdown', 'running')")


# Keep the highest position the log has given (the rows may be deleted, never reused).
_KEEP_LAST_SEQ = """
INSERT INTO meta VALUES ('last_seq', (SELECT coalesce(max(seq), 0) FROM events))
ON CONFLICT (key) DO UPDATE SET value = max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))
"""


def _last_seq(connection: sqlite3.Connection) -> int:
    """The highest position given: the last row's, or one whose rows were erased."""
    row = connection.execute(
        "SELECT max(coalesce((SELECT max(seq) FROM events), 0),"
        " coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'last_seq'), 0))"
    ).fetchone()
    return int(row[0])


def truncate_wal(connection: sqlite3.Connection, path: Path, attempts: int = 500) -> None:
    """Checkpoint the whole WAL into the database and truncate it, so no old copy of a
    deleted row stays in the WAL (after an erasure). Readers can hold it busy for a
    moment: retried every 10 ms, blocking, so call it off the event loop."""
    # Each attempt must answer at once: with the connection's busy timeout (5 s by
    # default) an attempt would wait that long, and 500 of them 40 minutes (found in
    # review, with a reader holding the decision log open).
    timeout = connection.execute("PRAGMA busy_timeout").fetchone()[0]
    connection.execute("PRAGMA busy_timeout = 0")
    try:
        for _ in range(attempts):
            busy = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy:
                return
            time.sleep(0.01)
    finally:
        connection.execute(f"PRAGMA busy_timeout = {int(timeout)}")
    log.warning("%s: the WAL could not be truncated (readers kept it busy)", path)


def _person_filter(anonymous_ids: Sequence[str], user_ids: Sequence[str]) -> tuple[str, list[str]]:
    users = ",".join("?" * len(user_ids))
    anonymous = ",".join("?" * len(anonymous_ids))
    clauses = []
    if user_ids:
        clauses.append(f"user_id IN ({users})")
    if anonymous_ids:
        owned = f" OR user_id IN ({users})" if user_ids else ""
        clauses.append(f"(anonymous_id IN ({anonymous}) AND (user_id IS NULL{owned}))")
    if not clauses:
        return "0", []
    parameters = list(user_ids) + list(anonymous_ids) + (list(user_ids) if anonymous_ids else [])
    return " OR ".join(clauses), parameters


def _notify(group: list[_Append], error: BaseException | None) -> None:
    """Tell the appends of one commit how it went: one callback per event loop. A loop
    that is gone (closed) must not stop the writer, or every later append would wait."""
    by_loop: dict[asyncio.AbstractEventLoop | None, list[_Append]] = {}
    for item in group:
        by_loop.setdefault(item.loop, []).append(item)
    for loop, items in by_loop.items():
        if loop is None:
            _run_done(items, error)
            continue
        try:
            loop.call_soon_threadsafe(_run_done, items, error)
        except RuntimeError:
            log.warning("an append's event loop is closed; it was not told of its commit",
                        exc_info=True)  # fmt: skip


def _run_done(items: list[_Append], error: BaseException | None) -> None:
    for item in items:
        try:
            item.done(0 if error is not None else item.first_seq, error)
        except Exception:  # one caller's failure is not the others'
            log.exception("an append's completion failed (its commit %s)",
                          "failed" if error is not None else "succeeded")  # fmt: skip


def _settle(future: asyncio.Future[int], first_seq: int, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(first_seq)
    else:
        future.set_exception(error)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
