"""The decision log: every decision, and every reward it earned, in SQLite.

A decision is logged with everything needed to explain it and to evaluate another policy
on it later: the visitor's features, the candidates, what was chosen with the
probability of each pick, the policy and its version, the reasons, the latency, and
whether the fallback answered. Rewards are logged as they are attributed (0 for a
decision whose window closed without one).

Records are written by one thread, in batches: a decide never waits for the disk. A
record is written within a few milliseconds of the answer (`flush` waits for it); what is
queued when the process is killed (-9) is lost, which is the price of keeping disk
latency out of every page view. Events, which decisions learn from, are acknowledged
only once durable (the event log); `close` writes everything queued.

Decisions are stored a batch per row (a MessagePack array of records), not a row each:
the writer then crosses into SQLite once per batch, not once per decision, and each
crossing takes Python's global lock from the thread that serves requests. Readers filter
as they decode (exports and evaluations read everything anyway); an erasure rewrites
the batches that hold the person's decisions.
"""

from __future__ import annotations

import itertools
import logging
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import msgspec
from msgspec import Struct

from intently.log.eventlog import truncate_wal
from intently.sqlite_rows import insert_rows

log = logging.getLogger(__name__)

FeatureValue = str | float | int | bool


class DecisionRecord(Struct, kw_only=True):
    decision_id: str
    at_ms: int
    placement: str
    visitor: str  # the device key: "a:<anonymousId>" or "u:<userId>"
    profile_id: str | None = None
    policy: str
    policy_version: str
    arm: str | None = None  # the experiment / holdout arm (the experiments issue)
    features: dict[str, FeatureValue] = msgspec.field(default_factory=dict)
    candidates: list[str] = msgspec.field(default_factory=list)
    items: list[str] = msgspec.field(default_factory=list)
    propensities: list[float] = msgspec.field(default_factory=list)
    reasons: list[str] = msgspec.field(default_factory=list)
    item_reasons: list[list[str]] = msgspec.field(default_factory=list)
    latency_us: int = 0
    degraded: str | None = None  # why the fallback answered
    personalized: bool = True
    reward_kind: str = "click"


class RewardRecord(Struct, kw_only=True, array_like=True):
    decision_id: str
    at_ms: int
    item: str | None
    value: float


class ExposureRecord(Struct, kw_only=True, array_like=True):
    """The client saw the decision's content (a viewable impression)."""

    decision_id: str
    at_ms: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS decision_batches (
    seq INTEGER PRIMARY KEY,
    last_ms INTEGER NOT NULL,
    count INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS rewards (
    seq INTEGER PRIMARY KEY,
    decision_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    item TEXT,
    value REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rewards_by_decision ON rewards (decision_id);
CREATE TABLE IF NOT EXISTS exposures (
    seq INTEGER PRIMARY KEY,
    decision_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
-- The highest seq each table above has ever given (`DecisionLog._take_seqs`).
CREATE TABLE IF NOT EXISTS seq_high (name TEXT PRIMARY KEY, high INTEGER NOT NULL);
"""
_SEQ_TABLES = ("decision_batches", "rewards", "exposures")

_encode = msgspec.msgpack.Encoder().encode
_decode_batch = msgspec.msgpack.Decoder(list[DecisionRecord]).decode
_STOP = object()
LINGER_SECONDS = 0.01
# A decision as queued for the writer: its time and its record, already encoded. Encoded
# on the deciding thread, so that what waits in the queue is bytes, which the garbage
# collector does not walk (a record's lists were most of what young-generation passes
# walked under load), and the writer needs the GIL for less.
_Encoded = tuple[int, bytes]
_Work = _Encoded | RewardRecord | ExposureRecord | threading.Event | object


def batch_body(encoded: list[bytes]) -> bytes:
    """A batch's body from records encoded one by one: the same bytes as encoding the
    list of them (a MessagePack array header, then the records)."""
    count = len(encoded)
    if count < 16:
        header = bytes([0x90 | count])
    elif count < 0x10000:
        header = b"\xdc" + count.to_bytes(2, "big")
    else:
        header = b"\xdd" + count.to_bytes(4, "big")
    return header + b"".join(encoded)


class DecisionIds:
    """Unique ids that sort by time: the log's index on ids grows at its end (a random id
    would land anywhere in the index, a costlier insert for every decision). The time in
    ms, this process's random prefix (so that processes, and restarts within one ms,
    cannot collide) and a counter."""

    def __init__(self) -> None:
        self._process = secrets.token_hex(4)
        self._counter = itertools.count()

    def __call__(self, now_ms: int) -> str:
        return f"{now_ms:012x}{self._process}{next(self._counter) & 0xFFFFFF:06x}"


class DecisionLog:
    """Decisions are indexed by id and by placement; a person's decisions (erasure) are
    found by a scan, which is rare, rather than by indexes that every decision would pay
    to maintain."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        # An erasure rewrites batches: the pages it frees are zeroed, not left readable.
        self._db.execute("PRAGMA secure_delete = ON")
        self._db.executescript(_SCHEMA)
        self._seed_seq_high()
        self._queue: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self.written = 0
        self.failed = 0
        self._closed = False
        self._lock = threading.Lock()  # one transaction at a time on the connection
        self._writer = threading.Thread(target=self._write_loop, name="decision-log", daemon=True)
        self._writer.start()

    def record(self, decision: DecisionRecord) -> None:
        if self._closed:
            raise RuntimeError("the decision log is closed")
        self._queue.put((decision.at_ms, _encode(decision)))

    def reward(self, reward: RewardRecord) -> None:
        if not self._closed:
            self._queue.put(reward)

    def exposure(self, exposure: ExposureRecord) -> None:
        if not self._closed:
            self._queue.put(exposure)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything recorded so far is written."""
        done = threading.Event()
        self._queue.put(done)
        if not done.wait(timeout):
            raise TimeoutError("the decision log did not flush in time")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._writer.join()
        self._db.close()

    def erase(self, visitors: Sequence[str], profile_ids: Sequence[str]) -> int:
        """Delete a person's decisions and their rewards (after what is queued is written);
        returns how many decisions. Rewrites each batch that held any."""
        self.flush()
        wanted_visitors, wanted_profiles = set(visitors), set(profile_ids)
        erased: list[str] = []
        with self._lock, self._db:
            self._db.execute("BEGIN")
            for seq, body in self._db.execute("SELECT seq, body FROM decision_batches").fetchall():
                records = _decode_batch(body)
                kept: list[DecisionRecord] = []
                for record in records:
                    if record.visitor in wanted_visitors or record.profile_id in wanted_profiles:
                        erased.append(record.decision_id)
                    else:
                        kept.append(record)
                if len(kept) == len(records):
                    continue
                if kept:
                    self._db.execute(
                        "UPDATE decision_batches SET count = ?, body = ? WHERE seq = ?",
                        (len(kept), _encode(kept), seq),
                    )
                else:
                    self._db.execute("DELETE FROM decision_batches WHERE seq = ?", (seq,))
            for table in ("rewards", "exposures"):
                self._db.executemany(
                    f"DELETE FROM {table} WHERE decision_id = ?",  # noqa: S608 (fixed names)
                    [(i,) for i in erased],
                )
        if erased:
            with self._lock:  # the WAL still holds the old pages
                truncate_wal(self._db, self.path)
        return len(erased)

    def _seed_seq_high(self) -> None:
        """Start each table's mark at its latest seq: a new file's at 0, and a file
        written before the marks were kept (or by such a version since) from its rows.
        (Seqs erased there before are beyond knowing; from now on none is given twice.)"""
        with self._db:
            self._db.execute("BEGIN")
            for table in _SEQ_TABLES:
                self._db.execute(
                    f"INSERT INTO seq_high SELECT ?, coalesce(max(seq), 0) FROM {table}"  # noqa: S608
                    " WHERE true ON CONFLICT (name) DO UPDATE SET high = max(high, excluded.high)",
                    (table,),
                )

    def _take_seqs(self, table: str, count: int) -> int:
        """The first of `count` new seqs for `table` (inside the writing transaction).

        Seqs never go back. Left to SQLite, a new row's seq (an INTEGER PRIMARY KEY
        without AUTOINCREMENT) is the largest present plus one: after an erasure deletes
        the latest rows it gives their seqs again, and the archiver, which ships the rows
        past the position it reached, would never ship the new rows. AUTOINCREMENT keeps
        such a mark itself, but existing files could only get it by rebuilding their
        tables; this mark, a row a table, needs no rebuild."""
        (high,) = self._db.execute(
            "UPDATE seq_high SET high = high + ? WHERE name = ? RETURNING high", (count, table)
        ).fetchone()
        return int(high) - count + 1

    def _write_loop(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            # Linger a little, so that a busy engine writes its decisions in a few large
            # transactions rather than one small (and, per row, costly) one each.
            time.sleep(LINGER_SECONDS)
            while True:  # everything queued meanwhile goes in the same transaction
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            decisions = [w for w in batch if type(w) is tuple]
            rewards = [w for w in batch if isinstance(w, RewardRecord)]
            exposures = [w for w in batch if isinstance(w, ExposureRecord)]
            try:
                self._write(decisions, rewards, exposures)
                self.written += len(decisions)
            except sqlite3.Error:  # logged and counted; the engine keeps deciding
                self.failed += len(decisions)
                log.exception("could not write %d decisions to the log", len(decisions))
            for work in batch:
                if isinstance(work, threading.Event):
                    work.set()
                elif work is _STOP:
                    stop = True

    def _write(
        self,
        decisions: list[_Encoded],
        rewards: list[RewardRecord],
        exposures: list[ExposureRecord],
    ) -> None:
        if not decisions and not rewards and not exposures:
            return
        with self._lock, self._db:
            self._db.execute("BEGIN")
            if decisions:
                self._db.execute(
                    "INSERT INTO decision_batches (seq, last_ms, count, body) VALUES (?, ?, ?, ?)",
                    (
                        self._take_seqs("decision_batches", 1),
                        max(at_ms for at_ms, _ in decisions),
                        len(decisions),
                        batch_body([body for _, body in decisions]),
                    ),
                )
            if rewards:
                first = self._take_seqs("rewards", len(rewards))
                insert_rows(
                    self._db, "INSERT INTO rewards (seq, decision_id, at_ms, item, value) VALUES",
                    [(first + n, r.decision_id, r.at_ms, r.item, r.value)
                     for n, r in enumerate(rewards)],
                )  # fmt: skip
            if exposures:
                first = self._take_seqs("exposures", len(exposures))
                insert_rows(
                    self._db, "INSERT INTO exposures (seq, decision_id, at_ms) VALUES",
                    [(first + n, x.decision_id, x.at_ms) for n, x in enumerate(exposures)],
                )  # fmt: skip


class DecisionLogReader:
    """Reads a decision log, also one in use by a running engine (WAL readers)."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(f"no decision log at {path}")
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)

    def decisions(
        self, placement: str | None = None, since_ms: int | None = None
    ) -> Iterator[DecisionRecord]:
        """Every decision (of `placement`, made at or after `since_ms`), in log order."""
        floor = -(2**62) if since_ms is None else since_ms
        for (body,) in self._db.execute(
            "SELECT body FROM decision_batches WHERE last_ms >= ? ORDER BY seq", (floor,)
        ):
            for record in _decode_batch(body):
                if (placement is None or record.placement == placement) and (record.at_ms >= floor):
                    yield record

    def newest_first(self) -> Iterator[DecisionRecord]:
        """Every decision, the latest first (start-up reads only as far back as needed)."""
        for (body,) in self._db.execute("SELECT body FROM decision_batches ORDER BY seq DESC"):
            yield from reversed(_decode_batch(body))

    def rewards_of(self, decision_ids: Iterable[str]) -> dict[str, float]:
        """The total reward of each of `decision_ids` that has one (by the index)."""
        ids = list(decision_ids)
        found: dict[str, float] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            found.update(
                (decision_id, float(total))
                for decision_id, total in self._db.execute(
                    "SELECT decision_id, SUM(value) FROM rewards "  # noqa: S608 (marks only)
                    f"WHERE decision_id IN ({marks}) GROUP BY decision_id",
                    chunk,
                )
            )
        return found

    def reward_values(self) -> Iterator[tuple[str, float]]:
        """Every reward record as (decision_id, value), in log order (the dashboard's
        totals from scratch count the positive ones)."""
        for decision_id, value in self._db.execute(
            "SELECT decision_id, value FROM rewards ORDER BY seq"
        ):
            yield decision_id, float(value)

    def decisions_of(
        self, visitors: Sequence[str], profile_ids: Sequence[str], limit: int
    ) -> list[DecisionRecord]:
        """A person's latest `limit` decisions, the latest first: made for one of their
        devices or their profile. A scan from the end (as an erasure's), for the rare
        look at one person (the dashboard's profile inspector)."""
        wanted_visitors, wanted_profiles = set(visitors), set(profile_ids)
        found: list[DecisionRecord] = []
        for record in self.newest_first():
            if record.visitor in wanted_visitors or record.profile_id in wanted_profiles:
                found.append(record)
                if len(found) >= limit:
                    break
        return found

    def rewards(self) -> dict[str, float]:
        """The total reward of each rewarded decision."""
        rows = self._db.execute("SELECT decision_id, SUM(value) FROM rewards GROUP BY decision_id")
        return {decision_id: float(total) for decision_id, total in rows}

    def exposures(self) -> dict[str, int]:
        """How many viewable impressions each exposed decision had."""
        rows = self._db.execute("SELECT decision_id, COUNT(*) FROM exposures GROUP BY decision_id")
        return {decision_id: int(count) for decision_id, count in rows}

    def close(self) -> None:
        self._db.close()


def as_json_line(record: DecisionRecord, reward: float | None, exposures: int = 0) -> bytes:
    body = msgspec.to_builtins(record)
    body["reward"] = reward
    body["exposures"] = exposures
    return msgspec.json.encode(body) + b"\n"
