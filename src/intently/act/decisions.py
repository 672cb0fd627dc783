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
"""

from __future__ import annotations

import itertools
import logging
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec
from msgspec import Struct

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


_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY,
    decision_id TEXT NOT NULL UNIQUE,
    at_ms INTEGER NOT NULL,
    placement TEXT NOT NULL,
    visitor TEXT NOT NULL,
    profile_id TEXT,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_placement ON decisions (placement, seq);
CREATE TABLE IF NOT EXISTS rewards (
    seq INTEGER PRIMARY KEY,
    decision_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    item TEXT,
    value REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rewards_by_decision ON rewards (decision_id);
"""

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(DecisionRecord).decode
_STOP = object()
LINGER_SECONDS = 0.01
_Work = DecisionRecord | RewardRecord | threading.Event | object


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
        self._db.executescript(_SCHEMA)
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
        self._queue.put(decision)

    def reward(self, reward: RewardRecord) -> None:
        if not self._closed:
            self._queue.put(reward)

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
        returns how many decisions."""
        self.flush()
        marks = ", ".join("?" * len(visitors)) or "NULL"
        profile_marks = ", ".join("?" * len(profile_ids)) or "NULL"
        where = f"visitor IN ({marks}) OR profile_id IN ({profile_marks})"
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                f"DELETE FROM rewards WHERE decision_id IN "  # noqa: S608 (placeholders only)
                f"(SELECT decision_id FROM decisions WHERE {where})",
                [*visitors, *profile_ids],
            )
            cursor = self._db.execute(
                f"DELETE FROM decisions WHERE {where}",  # noqa: S608
                [*visitors, *profile_ids],
            )
            return cursor.rowcount

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
            decisions = [w for w in batch if isinstance(w, DecisionRecord)]
            rewards = [w for w in batch if isinstance(w, RewardRecord)]
            try:
                self._write(decisions, rewards)
                self.written += len(decisions)
            except sqlite3.Error:  # logged and counted; the engine keeps deciding
                self.failed += len(decisions)
                log.exception("could not write %d decisions to the log", len(decisions))
            for work in batch:
                if isinstance(work, threading.Event):
                    work.set()
                elif work is _STOP:
                    stop = True

    def _write(self, decisions: list[DecisionRecord], rewards: list[RewardRecord]) -> None:
        if not decisions and not rewards:
            return
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR IGNORE INTO decisions "
                "(decision_id, at_ms, placement, visitor, profile_id, body) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (d.decision_id, d.at_ms, d.placement, d.visitor, d.profile_id, _encode(d))
                    for d in decisions
                ],
            )
            self._db.executemany(
                "INSERT INTO rewards (decision_id, at_ms, item, value) VALUES (?, ?, ?, ?)",
                [(r.decision_id, r.at_ms, r.item, r.value) for r in rewards],
            )


class DecisionLogReader:
    """Reads a decision log, also one in use by a running engine (WAL readers)."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(f"no decision log at {path}")
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)

    def decisions(
        self, placement: str | None = None, since_ms: int | None = None
    ) -> Iterator[DecisionRecord]:
        sql = "SELECT body FROM decisions WHERE 1 = 1"
        parameters: list[object] = []
        if placement is not None:
            sql += " AND placement = ?"
            parameters.append(placement)
        if since_ms is not None:
            sql += " AND at_ms >= ?"
            parameters.append(since_ms)
        for (body,) in self._db.execute(sql + " ORDER BY seq", parameters):
            yield _decode(body)

    def rewards(self, placement: str | None = None) -> dict[str, float]:
        """The total reward of each rewarded decision (of `placement`)."""
        if placement is None:
            rows = self._db.execute(
                "SELECT decision_id, SUM(value) FROM rewards GROUP BY decision_id"
            )
        else:
            rows = self._db.execute(
                "SELECT r.decision_id, SUM(r.value) FROM rewards r"
                " JOIN decisions d USING (decision_id) WHERE d.placement = ?"
                " GROUP BY r.decision_id",
                (placement,),
            )
        return {decision_id: float(total) for decision_id, total in rows}

    def reward_rows(self) -> Iterator[RewardRecord]:
        for decision_id, at_ms, item, value in self._db.execute(
            "SELECT decision_id, at_ms, item, value FROM rewards ORDER BY seq"
        ):
            yield RewardRecord(decision_id=decision_id, at_ms=at_ms, item=item, value=value)

    def close(self) -> None:
        self._db.close()


def as_json_line(record: DecisionRecord, reward: float | None) -> bytes:
    body = msgspec.to_builtins(record)
    body["reward"] = reward
    return msgspec.json.encode(body) + b"\n"
