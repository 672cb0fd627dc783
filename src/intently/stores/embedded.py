"""The embedded store: state in memory, made durable in SQLite, no server to run.

Every committed change is applied to dicts in memory at once (reads see it immediately).
What changed is written to `state.db` in the background about once every
`flush_seconds`, in one transaction that also records the log position it reflects. The
event log is the source of truth: after a restart, or a kill -9, the store loads
`state.db` and the engine re-applies the log's events after that position, so the state is
exactly what it was, and start-up replays at most a few seconds of events.

Each write is a consistent cut, taken without stopping the world: at the cut, the set of
changed profiles is set aside; they are then encoded a few per committed event, and a
profile that is about to change before its turn (every change starts with `get`) is
encoded first, as it was at the cut. So no request waits for a thousand profiles to be
encoded, and only the SQLite work runs on the writer thread.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import msgspec

from intently.background import lower_priority
from intently.context.profile import Profile, SegmentChange
from intently.log.eventlog import truncate_wal
from intently.sqlite_rows import insert_rows
from intently.stores.codec import decode_profile as _decode
from intently.stores.codec import encode_profile as _encode
from intently.stores.protocol import Changes

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS profiles (id TEXT PRIMARY KEY, body BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS links (key TEXT PRIMARY KEY, profile_id TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segment_changes (
    profile_id TEXT NOT NULL, segment TEXT NOT NULL, entered INTEGER NOT NULL,
    at_ms INTEGER NOT NULL, seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS segment_changes_profile ON segment_changes (profile_id, at_ms);
"""


class _Batch(msgspec.Struct):
    seq: int
    watermark_ms: int
    profiles: list[tuple[str, bytes]]
    removed: list[str]
    links: list[tuple[str, str]]
    unlinked: list[str]
    transitions: list[SegmentChange]
    merged: list[tuple[str, str]]
    # The event log `seq` belongs to (written with it, so the pair is always one log's).
    log_id: str | None = None


class _Cut:
    """The changes up to one log position, on their way to disk: profiles are encoded
    (copy-on-write, see the module docstring) until `unencoded` is empty."""

    __slots__ = ("batch", "unencoded")

    def __init__(self, batch: _Batch, unencoded: set[str]) -> None:
        self.batch = batch
        self.unencoded = unencoded


# Profiles encoded per committed event while a cut is open: a few microseconds each; and
# per tick (about a second apart, when events may have stopped): about a millisecond.
_ENCODE_PER_COMMIT = 4
_ENCODE_PER_TICK = 512


class EmbeddedStore:
    """`StateStore` in process memory, persisted to one SQLite file."""

    name = "embedded"
    sweep_limit = 2048  # in memory: a sweep of that many takes a few milliseconds

    def __init__(self, path: Path, flush_seconds: float = 1.0) -> None:
        self.path = path
        self.flush_seconds = flush_seconds
        self._profiles: dict[str, Profile] = {}
        self._links: dict[str, str] = {}
        # Activity order, for expiry without a scan: profile id -> last activity.
        # (Plain dicts keep insertion order and cost less than OrderedDicts; moving an entry
        # to the end is a pop and a re-insert.)
        self._live: dict[str, int] = {}
        self._anonymous: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._dirty_links: set[str] = set()
        self._applied_seq = 0
        self._watermark_ms = 0
        self._log_id: str | None = None  # the event log `_applied_seq` is a position of
        # Written with the next batch, in order.
        self._transitions: list[SegmentChange] = []
        self._merged: list[tuple[str, str]] = []
        self._last_flush = time.monotonic()
        self._cut: _Cut | None = None  # being encoded
        self._writing: Future[None] | None = None
        self._in_flight: _Batch | None = None  # the batch the writer thread is writing
        self._submitted: _Batch | None = None  # the batch of `_writing`, until it is done
        self._lock = threading.Lock()  # one SQLite transaction at a time
        # Called before a batch is written: a batch says "applied up to seq N", and what
        # other logs derived from those events (experiment metrics) must be durable
        # first, since a restart re-applies only the events after N.
        self.before_write: list[Callable[[], None]] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode = WAL")
            # The log is the source of truth: a state write lost to a power cut is
            # re-applied from the log, so NORMAL (no fsync per commit) is enough here.
            self._db.execute("PRAGMA synchronous = NORMAL")
            # Erased people must not linger in freed pages.
            self._db.execute("PRAGMA secure_delete = ON")
            self._db.executescript(_SCHEMA)
            self._load()
        except BaseException:
            self._db.close()
            raise
        self._writer = ThreadPoolExecutor(
            1, thread_name_prefix="intently-state-writer", initializer=lower_priority
        )
        # Reads on the caller's thread get their own connection: a WAL reader never waits
        # for the writer (which runs at a lower CPU priority and holds `_lock` for a write).
        self._reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def exclusive(
        self, keys: Collection[str], profile_ids: Collection[str] = ()
    ) -> AbstractContextManager[None]:
        # One process, one applying thread: nothing else writes.
        return nullcontext()

    # -- reading ---------------------------------------------------------------------------

    def get(self, profile_id: str) -> Profile | None:
        cut = self._cut
        if cut is not None and profile_id in cut.unencoded:
            # The caller may change it: keep the cut's copy first.
            self._encode(cut, profile_id)
        return self._profiles.get(profile_id)

    def resolve(self, key: str) -> str | None:
        return self._links.get(key)

    @property
    def applied_seq(self) -> int:
        return self._applied_seq

    @property
    def watermark_ms(self) -> int:
        return self._watermark_ms

    def bind_log(self, log_id: str) -> bool:
        """Tie the position to the event log `log_id`. False when it was another log's
        (the log was lost or replaced, state.db kept): it starts over at 0, or the new
        log's first events would be taken for applied ones. The next write saves both."""
        kept, self._log_id = self._log_id, log_id
        if kept is None or kept == log_id:
            return True
        self._applied_seq = 0
        return False

    def segment_history(self, profile_id: str, limit: int) -> list[SegmentChange]:
        # Written rows, plus what waits for (or is in) the next write; a merge not yet
        # written means the absorbed profile's rows still carry its old id. The pending
        # parts are taken before the rows are read: a batch committed in between is then
        # in both, and kept once. A removed profile has none (its rows may wait for the
        # next write to be deleted).
        if profile_id not in self._profiles:
            return []
        cut = self._cut
        batches = [b for b in (self._in_flight, cut.batch if cut else None) if b is not None]
        pending = [c for b in batches for c in b.transitions] + self._transitions
        merges = [m for b in batches for m in b.merged] + self._merged
        ids = {profile_id}
        for old, into in reversed(merges):
            if into in ids:
                ids.add(old)
        marks = ",".join("?" * len(ids))
        rows = self._reader.execute(
            "SELECT profile_id, segment, entered, at_ms, seq FROM segment_changes"  # noqa: S608
            f" WHERE profile_id IN ({marks}) ORDER BY at_ms DESC, rowid DESC LIMIT ?",
            (*ids, limit),
        ).fetchall()
        found = [SegmentChange(p, s, bool(e), a, q) for p, s, e, a, q in reversed(rows)]
        written = {(c.segment, c.entered, c.at_ms, c.seq) for c in found}
        found.extend(
            c for c in pending
            if c.profile_id in ids and (c.segment, c.entered, c.at_ms, c.seq) not in written
        )  # fmt: skip
        found.sort(key=lambda change: change.at_ms)  # stable: equal times keep their order
        return found[-limit:]

    def profile_count(self) -> int:
        return len(self._profiles)

    def profiles(self) -> Iterator[Profile]:
        """Every profile; the caller may change them (the open cut is encoded first)."""
        if self._cut is not None:
            self._encode_some(self._cut, len(self._cut.unencoded))
        return iter(list(self._profiles.values()))

    def links(self) -> dict[str, str]:
        return dict(self._links)

    def live_sessions(self, since_ms: int) -> int:
        """How many sessions had activity at or after `since_ms`. Every open session is
        read: the activity order follows when events were applied, not their times, so a
        late event (a tag's retried queue) can put an old time at its newest end. Sessions
        idle past the timeout are closed each second, so this is about the open ones."""
        return sum(1 for last_ms in self._live.values() if last_ms >= since_ms)

    def idle_sessions(self, before_ms: int, limit: int) -> list[str]:
        return _oldest(self._live, before_ms, limit)

    def idle_anonymous(self, before_ms: int, limit: int) -> list[str]:
        return _oldest(self._anonymous, before_ms, limit)

    # -- writing ---------------------------------------------------------------------------

    def commit(self, changes: Changes) -> None:
        profiles, dirty = self._profiles, self._dirty
        for profile_id, profile in changes.profiles.items():
            profiles[profile_id] = profile
            dirty.add(profile_id)
            self._index(profile)
        if not changes.only_profiles:
            self._commit_rest(changes)
        if changes.seq > self._applied_seq:
            self._applied_seq = changes.seq
        if changes.watermark_ms > self._watermark_ms:
            self._watermark_ms = changes.watermark_ms
        cut = self._cut
        if cut is not None:
            self._encode_some(cut, _ENCODE_PER_COMMIT)
        elif time.monotonic() - self._last_flush >= self.flush_seconds:
            self._start_cut()

    def _commit_rest(self, changes: Changes) -> None:
        cut = self._cut
        for profile_id in changes.removed:
            if cut is not None and profile_id in cut.unencoded:
                self._encode(cut, profile_id)
            self._profiles.pop(profile_id, None)
            self._dirty.add(profile_id)
            self._live.pop(profile_id, None)
            self._anonymous.pop(profile_id, None)
        if changes.links or changes.unlinked:
            self._links.update(changes.links)
            self._dirty_links.update(changes.links)
            for key in changes.unlinked:
                self._links.pop(key, None)
            self._dirty_links.update(changes.unlinked)
        if changes.transitions:
            self._transitions.extend(changes.transitions)
        if changes.merged:
            self._merged.extend(changes.merged.items())

    def _index(self, profile: Profile) -> None:
        """Move the profile to the end of the activity orders (expiry reads them)."""
        profile_id = profile.id
        live, anonymous = self._live, self._anonymous
        live.pop(profile_id, None)
        if profile.session is not None:
            live[profile_id] = profile.session.last_ms
        anonymous.pop(profile_id, None)
        if not profile.user_ids:
            anonymous[profile_id] = profile.last_ms

    def _take_cut(self) -> _Cut:
        """Set aside everything changed since the last cut (links are copied now: they are
        small); profiles are encoded later, as they were now."""
        links = self._links
        linked: list[tuple[str, str]] = []
        unlinked: list[str] = []
        for key in self._dirty_links:
            target = links.get(key)
            if target is None:
                unlinked.append(key)
            else:
                linked.append((key, target))
        batch = _Batch(
            self._applied_seq, self._watermark_ms, [], [], linked, unlinked,
            self._transitions, self._merged, self._log_id,
        )  # fmt: skip
        cut = _Cut(batch, self._dirty)
        self._dirty = set()
        self._dirty_links = set()
        self._transitions, self._merged = [], []
        self._last_flush = time.monotonic()
        return cut

    def _encode(self, cut: _Cut, profile_id: str) -> None:
        """Put one profile of the cut, as it is now, into its batch (or its removal)."""
        cut.unencoded.discard(profile_id)
        profile = self._profiles.get(profile_id)
        if profile is None:
            cut.batch.removed.append(profile_id)
        else:
            cut.batch.profiles.append((profile_id, _encode(profile)))

    def _encode_many(self, cut: _Cut, count: int) -> None:
        unencoded = cut.unencoded
        for _ in range(min(count, len(unencoded))):
            self._encode(cut, unencoded.pop())

    def _encode_some(self, cut: _Cut, count: int) -> None:
        """Encode up to `count` profiles of the cut; once all are, hand it to the writer."""
        self._encode_many(cut, count)
        if not cut.unencoded and self._writer_idle():
            self._cut = None
            batch = self._in_flight = self._submitted = cut.batch
            self._writing = self._writer.submit(self._write, batch)

    def tick(self) -> None:
        """Move the write along without commits: after a burst, the state it left is
        written within about a second even if no event follows."""
        cut = self._cut
        if cut is not None:
            self._encode_some(cut, _ENCODE_PER_TICK)
        elif time.monotonic() - self._last_flush >= self.flush_seconds and (
            self._dirty or self._dirty_links or self._transitions or self._merged
        ):
            self._start_cut()

    def _start_cut(self) -> None:
        if self._writer_idle():
            self._cut = self._take_cut()

    def _writer_idle(self) -> bool:
        writing = self._writing
        if writing is None:
            return True
        if not writing.done():
            return False  # the previous write is still on disk; this one waits its turn
        self._finished(writing)
        return True

    def _finished(self, writing: Future[None]) -> None:
        """Settle a background write; a failed one goes back into the next (logged)."""
        self._writing = None
        failed, self._submitted = self._submitted, None
        error = writing.exception()
        if error is not None and failed is not None:
            log.error("writing state failed (%s); it is retried with the next write", error)
            self._requeue(failed)

    def _requeue(self, batch: _Batch) -> None:
        """Mark what a failed write held as changed again, so a later write holds it (the
        current state of those profiles and links; its entries and exits, first)."""
        self._dirty.update(profile_id for profile_id, _ in batch.profiles)
        self._dirty.update(batch.removed)
        self._dirty_links.update(key for key, _ in batch.links)
        self._dirty_links.update(batch.unlinked)
        self._transitions = batch.transitions + self._transitions
        self._merged = batch.merged + self._merged

    def flush(self) -> None:
        if self._writing is not None:
            futures_wait([self._writing])
            self._finished(self._writing)
        # The open cut first, then one of everything since: written in order.
        if self._cut is not None:
            cut, self._cut = self._cut, None
            self._write_now(cut)
        self._write_now(self._take_cut())

    def _write_now(self, cut: _Cut) -> None:
        self._encode_many(cut, len(cut.unencoded))
        self._in_flight = cut.batch
        try:
            self._write(cut.batch)
        except BaseException:
            self._requeue(cut.batch)
            raise

    def _write(self, batch: _Batch) -> None:
        for wait in self.before_write:
            wait()
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                if batch.transitions:
                    insert_rows(
                        db, "INSERT INTO segment_changes VALUES",
                        [msgspec.structs.astuple(c) for c in batch.transitions],
                    )  # fmt: skip
                if batch.merged:  # the absorbed profile's history follows it
                    db.executemany(
                        "UPDATE segment_changes SET profile_id = ? WHERE profile_id = ?",
                        [(into, old) for old, into in batch.merged],
                    )
                if batch.removed:
                    db.executemany(
                        "DELETE FROM segment_changes WHERE profile_id = ?",
                        [(i,) for i in batch.removed],
                    )
                    db.executemany(
                        "DELETE FROM profiles WHERE id = ?", [(i,) for i in batch.removed]
                    )
                if batch.profiles:
                    insert_rows(db, "INSERT OR REPLACE INTO profiles VALUES", batch.profiles)
                if batch.unlinked:
                    db.executemany(
                        "DELETE FROM links WHERE key = ?", [(k,) for k in batch.unlinked]
                    )
                if batch.links:
                    insert_rows(db, "INSERT OR REPLACE INTO links VALUES", batch.links)
                position = [("applied_seq", str(batch.seq)),
                            ("watermark_ms", str(batch.watermark_ms))]  # fmt: skip
                if batch.log_id is not None:
                    position.append(("log_id", batch.log_id))
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", position)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            finally:
                self._in_flight = None

    def recover(self) -> bool:
        return True  # in process: never unreachable

    def compact(self) -> Future[None]:
        """Flush (here: encoding is a consistent cut only on the caller's thread), then,
        on the writer thread, leave no copy of removed rows in the WAL (after an erasure).
        The returned future is done when the WAL is truncated."""
        self.flush()
        return self._writer.submit(self._truncate_wal)

    def _truncate_wal(self) -> None:
        with self._lock:
            truncate_wal(self._db, self.path)

    def close(self) -> None:
        try:
            self.flush()
            self._writer.shutdown()
            with self._lock:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._reader.close()
            self._db.close()

    def _load(self) -> None:
        db = self._db
        meta = dict(db.execute("SELECT key, value FROM meta"))
        self._applied_seq = int(meta.get("applied_seq", 0))
        self._watermark_ms = int(meta.get("watermark_ms", 0))
        self._log_id = meta.get("log_id")
        loaded = sorted(
            (_decode(body) for (body,) in db.execute("SELECT body FROM profiles")),
            key=lambda p: p.last_ms,
        )
        for profile in loaded:  # in activity order, so expiry order is right
            self._profiles[profile.id] = profile
            self._index(profile)
        self._links = dict(db.execute("SELECT key, profile_id FROM links"))


def _oldest(order: dict[str, int], before_ms: int, limit: int) -> list[str]:
    found: list[str] = []
    for profile_id, last_ms in order.items():
        if last_ms >= before_ms or len(found) >= limit:
            break
        found.append(profile_id)
    return found
