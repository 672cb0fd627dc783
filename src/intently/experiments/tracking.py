"""The experiment log: who was exposed to which variant, and what they did after, in
SQLite (`experiments.db` in the data dir) or, for a deployment of several workers, in
PostgreSQL (experiments/tables.py).

Each visitor exposed to an experiment has a row: their variant, their first exposure and,
per metric, what their events added up to within the metric's window, and their value
before exposure (for CUPED). Per variant and metric, running totals (count, sum, sum of
squares, and the covariate's sums) are kept up to date as rows change, so results read a
handful of rows however many visitors there are; `recount` computes the same totals from
the rows, from scratch (the tests compare the two).

Exposures, events and merges are queued by the deciding and applying thread and written
in order by one writer thread, in batches (as the decision log is): a decide or an event
never waits for the disk. A decision's exposure is queued before its answer is sent, so
an event that follows the answer is queued after it and counts.

A visitor exposed to two variants (their profiles, exposed apart, merged) has seen both:
they are left out of the totals and counted as `multiple` (GrowthBook does the same).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import psycopg
from msgspec import Struct

from intently.experiments.metrics import Accumulator, value
from intently.experiments.spec import MetricSpec
from intently.experiments.tables import PostgresTables, SqliteTables, Tables

log = logging.getLogger(__name__)

LINGER_SECONDS = 0.01
# Exposures already queued, remembered so a visitor's every decide is not written again;
# forgotten all at once past this many (the database still ignores repeats).
_MAX_SEEN = 200_000
# Records held while PostgreSQL is away, written when it returns; past this many the
# oldest are dropped (and counted in `failed`): memory stays bounded in a long outage.
_MAX_HELD = 200_000
_RETRY_MAX_SECONDS = 5.0
# Records per transaction (a part of a batch): what was held through an outage goes out
# in parts, each holding the deployment-wide writers' lock briefly.
WRITE_AT_MOST = 5_000
# An identity merge reads the arms the absorbed id was in while its event is applied, on
# the event loop: from PostgreSQL, within this, and not again for a while after a failure.
QUICK_READ_SECONDS = 0.25
_QUICK_PAUSE_SECONDS = 5.0
# Shared tables: a visitor's exposure on one worker and their next event on another race
# to PostgreSQL, and an event written first would find them not exposed and not count.
# So what events add (and the merges and erasures in order with them) is written this
# long after it happened; exposures at once. After an outage, every worker writes what it
# held in its first round, which may come one retry pause later: events wait that long.
OBSERVATION_GRACE_SECONDS = 2.0
_RECOVERY_GRACE_SECONDS = 2 * _RETRY_MAX_SECONDS


class ExperimentsUnavailable(RuntimeError):
    """The experiment tables (PostgreSQL) cannot be reached: results, exports and
    erasures must wait; what was recorded meanwhile is held and written later."""


class MetricState(Struct, array_like=True):
    """A visitor's metric: what their events added up to, and their value before."""

    numerator: float = 0.0
    denominator: float = 0.0
    covariate: float = 0.0


_encode = msgspec.msgpack.Encoder().encode
_decode_state = msgspec.msgpack.Decoder(dict[str, MetricState]).decode

# Totals of one (experiment, variant, metric): n, sum y, sum y^2, sum x, sum x^2, sum xy.
Totals = list[float]


@dataclass(frozen=True)
class Exposure:
    experiment: str
    variant: str
    unit: str
    at_ms: int
    covariates: dict[str, float]


@dataclass(frozen=True)
class Observation:
    unit: str
    at_ms: int
    seq: int  # the event's position in the event log
    # experiment -> metric -> what the event adds
    adds: dict[str, dict[str, Accumulator]]


@dataclass(frozen=True)
class Merge:
    absorbed: str
    into: str
    unit: str  # what `into` is assigned as from now on


_Work = Exposure | Observation | Merge | threading.Event | object
_STOP = object()


class ExperimentLog:
    def __init__(
        self, path: Path, metrics_of: Callable[[str], Sequence[MetricSpec]], *,
        database: str | None = None, worker: str = "",
        grace_seconds: float = OBSERVATION_GRACE_SECONDS,
    ) -> None:  # fmt: skip
        """`metrics_of(experiment_id)`: the metrics it measures (empty for none). With a
        `database` (a PostgreSQL URL), the log is there, shared by every worker."""
        self.path = path
        self.metrics_of = metrics_of
        self._db: Tables
        if database is None:
            self._db = SqliteTables(path)
            self._reading = ExperimentLogReader(path)
        else:
            self._db = PostgresTables(database, worker)
            self._reading = ExperimentLogReader(PostgresTables(database, worker))
            self._quick = PostgresTables(database, worker, answer_seconds=QUICK_READ_SECONDS)
        self._quick_lock = threading.Lock()
        self._quick_closed_until = 0.0
        self._reader = self._reading.db
        self._alias_version = 0
        self.unavailable = False
        self._retry_now = threading.Event()
        self._reorder = _Reorder(grace_seconds if self._db.shared else 0.0)
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()  # one transaction at a time on the connection
        self._load_totals()
        self._seen: dict[tuple[str, str], str] = {}
        # The last event counted: a replay of the event log at start-up (the state store
        # lags the log) must not count again what was counted before a restart.
        found = self._db.execute(
            "SELECT value FROM meta WHERE key = ?", (self._db.seq_key,)
        ).fetchone()
        self.counted_seq: int = 0 if found is None else int(found[0])
        self._queue: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self.failed = 0
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="experiments", daemon=True)
        self._writer.start()

    def _load_totals(self) -> None:
        self._totals: dict[tuple[str, str, str], Totals] = {
            (e, v, m): [float(x) for x in rest]
            for e, v, m, *rest in self._db.execute("SELECT * FROM totals")
        }
        self._exposed: dict[tuple[str, str], list[int]] = {
            (e, v): [units, multiple]
            for e, v, units, multiple in self._db.execute("SELECT * FROM exposed")
        }

    # -- from the deciding and applying thread -----------------------------------------------

    @property
    def shared(self) -> bool:
        """Whether every worker writes this log (PostgreSQL)."""
        return self._db.shared

    def aliases(self) -> dict[str, str]:
        """Profiles assigned as another unit (since they took over its id)."""
        with self._read_lock:
            if not self._db.shared:
                return dict(self._reader.execute("SELECT profile, unit FROM aliases").fetchall())
            found = self._reader.execute("SELECT profile, unit, version FROM aliases").fetchall()
        self._alias_version = max((int(row[2]) for row in found), default=0)
        return {profile: unit for profile, unit, _ in found}

    def new_aliases(self) -> dict[str, str]:
        """The aliases other workers wrote since the last call (shared tables only: a
        visitor merged there keeps their arm here). Blocking; raises when PostgreSQL is
        away."""
        if not self._db.shared:
            return {}
        with self._read_lock:
            found = self._reader.execute(
                "SELECT profile, unit, version FROM aliases WHERE version > ? ORDER BY version",
                (self._alias_version,),
            ).fetchall()
        if found:
            self._alias_version = int(found[-1][2])
        return {profile: unit for profile, unit, _ in found}

    def expose(
        self, experiment: str, variant: str, unit: str, at_ms: int,
        covariates: Callable[[], dict[str, float]],
    ) -> None:  # fmt: skip
        """A decision showed `variant` of `experiment` to `unit` (the first one counts).
        `covariates` is called only for a unit not exposed yet."""
        key = (experiment, unit)
        if self._seen.get(key) == variant or self._closed:
            return
        if len(self._seen) >= _MAX_SEEN:
            self._seen.clear()
        self._seen[key] = variant
        self._queue.put(Exposure(experiment, variant, unit, at_ms, covariates()))

    def observe(self, observation: Observation) -> None:
        if not self._closed and observation.seq > self.counted_seq:
            self._queue.put(observation)

    def arms_of(
        self, unit: str, experiments: Iterable[str] = (), *, stored: bool = True
    ) -> dict[str, str]:
        """The experiments `unit` was exposed to, and its variant in each (those of
        `experiments` still queued for the writer included; only those, without
        `stored`: no read of the tables)."""
        found = _stored_arms(self._reader, self._read_lock, unit) if stored else {}
        return self._with_queued(found, unit, experiments)

    def arms_now(self, unit: str, experiments: Iterable[str] = ()) -> dict[str, str]:
        """`arms_of`, for the event loop applying an event: from shared tables, asked with
        a short bound (`QUICK_READ_SECONDS`), and not asked at all while PostgreSQL fails
        (then what this worker queued only): an identity merge must not wait on it."""
        if not self._db.shared:
            return self.arms_of(unit, experiments)
        now = time.monotonic()
        found: dict[str, str] = {}
        if not self.unavailable and now >= self._quick_closed_until:
            try:
                found = _stored_arms(self._quick, self._quick_lock, unit)
            except (psycopg.Error, OSError) as error:
                self._quick_closed_until = now + _QUICK_PAUSE_SECONDS
                log.warning("experiment arms not read (%s): merging with what was queued", error)
        return self._with_queued(found, unit, experiments)

    def _with_queued(
        self, found: dict[str, str], unit: str, experiments: Iterable[str]
    ) -> dict[str, str]:
        seen = self._seen
        for experiment in experiments:
            variant = seen.get((experiment, unit))
            if variant is not None:
                found[experiment] = variant
        return found

    def merge(self, absorbed: str, into: str, arms: dict[str, str], unit: str) -> None:
        """Profile `into` took over `absorbed`, exposed to `arms`: its rows move to
        `into`, which is assigned as `unit` from now on."""
        for experiment, variant in arms.items():
            self._seen.pop((experiment, absorbed), None)
            self._seen[experiment, into] = variant
        self._queue.put(Merge(absorbed, into, unit))

    def erase(self, units: Sequence[str]) -> int:
        """Delete a person's rows (their totals go with them); how many. Blocking: call
        it off the event loop."""
        # (a copy is taken at once under the GIL: the loop thread adds to `_seen` as this
        # worker thread reads it)
        for key in [k for k in self._seen.copy() if k[1] in units]:
            self._seen.pop(key, None)
        erasure = _Erasure(tuple(units))
        self._queue.put(erasure)
        self.flush()
        with self._write_lock:
            self._db.after_erasure()
        return erasure.erased

    def purge(self, experiment: str) -> None:
        """Delete everything logged of an experiment (it was deleted: a new one of the
        same id starts from nothing). Blocking."""
        for key in [k for k in self._seen.copy() if k[0] == experiment]:
            self._seen.pop(key, None)
        self._queue.put(_Purge(experiment))
        self.flush()

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far is written (at once when closed: closing
        wrote everything); raises `ExperimentsUnavailable` while PostgreSQL is away."""
        if self._closed:
            return
        done = threading.Event()
        self._queue.put(done)
        self._retry_now.set()  # a writer waiting out an outage tries again at once
        if not done.wait(timeout):
            raise TimeoutError("the experiment log did not flush in time")
        if self.unavailable:
            raise ExperimentsUnavailable("the experiment log's PostgreSQL cannot be reached")

    def settle(self) -> None:
        """Wait until what was queued so far is written, except what the grace holds
        back (shared tables) and while PostgreSQL is away (it is written when it returns):
        for the state store's writes, which must not wait on either."""
        if self.unavailable or self._closed:
            return
        if self._db.shared:
            # The writer writes on its own; waiting here (on the event loop, each tick)
            # would wait on every worker's writes, which take turns under one lock.
            return
        done = _Settled()
        self._queue.put(done)
        if not done.wait(10.0):
            raise TimeoutError("the experiment log did not flush in time")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._writer.join()
        self._db.close()
        self._reading.close()
        if self._db.shared:
            self._quick.close()

    # -- reading ------------------------------------------------------------------------------

    def totals(self, experiment: str) -> dict[tuple[str, str], Totals]:
        with self._read_lock:
            return self._reading.totals(experiment)

    def exposures(self, experiment: str) -> dict[str, tuple[int, int]]:
        with self._read_lock:
            return self._reading.exposures(experiment)

    def recount(
        self, experiment: str, metrics: Sequence[MetricSpec]
    ) -> dict[tuple[str, str], Totals]:
        """`totals`, computed from every visitor's row (slow: a check, and a repair)."""
        with self._read_lock:
            return self._reading.recount(experiment, metrics)

    # -- the writer ---------------------------------------------------------------------------

    def _write_loop(self) -> None:
        stop = False
        held: list[_Work] = []  # what PostgreSQL could not take yet, oldest first
        pause = 0.0
        while not stop:
            if held:
                self._retry_now.wait(pause)
                self._retry_now.clear()
                incoming = self._drain([])
            else:
                try:
                    first = self._queue.get(timeout=self._reorder.next_due(time.monotonic()))
                except queue.Empty:
                    incoming = []
                else:
                    time.sleep(LINGER_SECONDS)
                    incoming = self._drain([first])
            batch = held + self._reorder.sort(incoming, time.monotonic())
            held = []
            if not batch:
                continue
            records = [w for w in batch if not isinstance(w, threading.Event)]
            written = 0
            try:
                # In parts: after an outage, what was held goes out in transactions short
                # enough not to keep the other workers' writers waiting on the lock.
                while True:
                    part = records[written : written + WRITE_AT_MOST]
                    with self._write_lock:
                        self._write(part)
                    written += len(part)
                    if written >= len(records):
                        break
            except (sqlite3.Error, psycopg.Error, OSError) as error:
                if self._db.shared and _STOP not in batch:
                    held = self._hold(records[written:], error)
                    pause = min(max(pause * 2, 0.1), _RETRY_MAX_SECONDS)
                else:
                    self._lost(len(records) - written)
            except Exception:  # a bug: logged and counted, and the writer goes on
                self._lost(len(records) - written)
            else:
                if self.unavailable:
                    log.warning("the experiment log's PostgreSQL is back: records written")
                    self._reorder.recovered(time.monotonic())
                self.unavailable = False
                pause = 0.0
            for work in batch:
                if isinstance(work, threading.Event):
                    work.set()
                elif work is _STOP:
                    stop = True

    def _lost(self, count: int) -> None:
        self.failed += count
        log.exception("could not write %d experiment records", count)
        if not self._db.shared:  # those in memory were moved by what failed
            with contextlib.suppress(sqlite3.Error):
                self._load_totals()

    def _drain(self, batch: list[_Work]) -> list[_Work]:
        while True:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                return batch

    def _hold(self, batch: list[_Work], error: BaseException) -> list[_Work]:
        """Keep a batch PostgreSQL refused, to write when it returns (flushes waiting on
        it are answered: they find the log `unavailable`)."""
        if not self.unavailable:
            log.warning("the experiment log's PostgreSQL cannot be reached (%s): holding", error)
        self.unavailable = True
        kept = [work for work in batch if not isinstance(work, threading.Event)]
        if len(kept) > _MAX_HELD:
            dropped = len(kept) - _MAX_HELD
            self.failed += dropped
            log.error("experiment log: %d records dropped, PostgreSQL away too long", dropped)
            kept = kept[dropped:]
        return kept

    def _write(self, batch: list[_Work]) -> None:
        if all(work is _STOP for work in batch):
            return
        db = self._db
        touched: set[tuple[str, str, str]] = set()
        counted: set[tuple[str, str]] = set()
        seq = max((w.seq for w in batch if isinstance(w, Observation)), default=0)
        with db.transaction():
            if db.shared:  # other workers moved them since: read under the lock
                self._load_totals()
            for work in batch:
                if isinstance(work, Exposure):
                    self._write_exposure(work, touched, counted)
                elif isinstance(work, Observation):
                    self._write_observation(work, touched)
                elif isinstance(work, Merge):
                    self._write_merge(work, touched, counted)
                elif isinstance(work, _Erasure):
                    self._write_erasure(work, touched, counted)
                elif isinstance(work, _Purge):
                    for table in ("units", "totals", "exposed"):
                        db.execute(
                            f"DELETE FROM {table} WHERE experiment = ?",  # noqa: S608 (fixed)
                            (work.experiment,),
                        )
                    for key in [k for k in self._totals if k[0] == work.experiment]:
                        del self._totals[key]
                        touched.discard(key)
                    for pair in [k for k in self._exposed if k[0] == work.experiment]:
                        del self._exposed[pair]
                        counted.discard(pair)
            db.executemany(
                "INSERT OR REPLACE INTO totals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*key, *self._totals[key]) for key in touched],
            )
            db.executemany(
                "INSERT OR REPLACE INTO exposed VALUES (?, ?, ?, ?)",
                [(*key, *self._exposed[key]) for key in counted],
            )
            if seq:
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (db.seq_key, seq))

    def _row(self, experiment: str, unit: str) -> tuple[str, int, int, bytes] | None:
        found = self._db.execute(
            "SELECT variant, first_ms, multiple, state FROM units "
            "WHERE experiment = ? AND unit = ?",
            (experiment, unit),
        ).fetchone()
        return None if found is None else (found[0], found[1], found[2], found[3])

    def _write_exposure(
        self, exposure: Exposure, touched: set[tuple[str, str, str]],
        counted: set[tuple[str, str]],
    ) -> None:  # fmt: skip
        experiment, unit, variant = exposure.experiment, exposure.unit, exposure.variant
        row = self._row(experiment, unit)
        if row is not None:
            if row[0] != variant and not row[2]:
                self._exclude(experiment, unit, row, touched, counted)
            return
        metrics = self.metrics_of(experiment)
        states = {
            m.name: MetricState(covariate=exposure.covariates.get(m.name, 0.0)) for m in metrics
        }
        self._db.execute(
            "INSERT INTO units VALUES (?, ?, ?, ?, 0, ?)",
            (experiment, unit, variant, exposure.at_ms, _encode(states)),
        )
        self._count(experiment, variant, 1, 0, counted)
        for metric in metrics:
            self._move(experiment, variant, metric, None, states[metric.name], touched)

    def _write_observation(
        self, observation: Observation, touched: set[tuple[str, str, str]]
    ) -> None:
        for experiment, adds in observation.adds.items():
            row = self._row(experiment, observation.unit)
            if row is None or row[2]:
                continue  # not exposed (or left out)
            variant, first_ms, _, blob = row
            since = observation.at_ms - first_ms
            if since < 0:
                continue  # before the exposure: not an effect of it
            states = _decode_state(blob)
            changed = False
            for metric in self.metrics_of(experiment):
                add = adds.get(metric.name)
                held = states.get(metric.name)
                if add is None or held is None or since > metric.window_ms:
                    continue
                after = MetricState(
                    held.numerator + add[0], held.denominator + add[1], held.covariate
                )
                self._move(experiment, variant, metric, held, after, touched)
                states[metric.name] = after
                changed = True
            if changed:
                self._db.execute(
                    "UPDATE units SET state = ? WHERE experiment = ? AND unit = ?",
                    (_encode(states), experiment, observation.unit),
                )

    def _write_merge(
        self, merge: Merge, touched: set[tuple[str, str, str]], counted: set[tuple[str, str]]
    ) -> None:
        """The absorbed profile's rows become the surviving profile's: moved when it has
        none; added up when it was exposed to the same variant (one person, counted
        once); both left out when it saw another."""
        db = self._db
        absorbed_rows = db.execute(
            "SELECT experiment FROM units WHERE unit = ?", (merge.absorbed,)
        ).fetchall()
        if not absorbed_rows:  # never exposed (shared tables queue every merge): no alias
            return
        db.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?)", (merge.into, merge.unit))
        db.execute("DELETE FROM aliases WHERE profile = ?", (merge.absorbed,))
        for (experiment,) in absorbed_rows:
            theirs = self._row(experiment, merge.absorbed)
            ours = self._row(experiment, merge.into)
            assert theirs is not None
            if ours is None:
                db.execute(
                    "UPDATE units SET unit = ? WHERE experiment = ? AND unit = ?",
                    (merge.into, experiment, merge.absorbed),
                )
                continue
            if ours[0] != theirs[0] or ours[2] or theirs[2]:
                if not theirs[2]:
                    self._exclude(experiment, merge.absorbed, theirs, touched, counted)
                if not ours[2]:
                    self._exclude(experiment, merge.into, ours, touched, counted)
            else:
                self._combine(experiment, merge.into, ours, theirs, touched, counted)
            db.execute(
                "DELETE FROM units WHERE experiment = ? AND unit = ?", (experiment, merge.absorbed)
            )

    def _write_erasure(
        self, erasure: _Erasure, touched: set[tuple[str, str, str]],
        counted: set[tuple[str, str]],
    ) -> None:  # fmt: skip
        db = self._db
        for unit in erasure.units:
            rows = db.execute(
                "SELECT experiment, variant, first_ms, multiple, state FROM units WHERE unit = ?",
                (unit,),
            ).fetchall()
            for experiment, variant, _, multiple, blob in rows:
                if not multiple:
                    states = _decode_state(blob)
                    for metric in self.metrics_of(experiment):
                        held = states.get(metric.name)
                        self._move(experiment, variant, metric, held, None, touched)
                self._count(experiment, variant, -1, -1 if multiple else 0, counted)
            db.execute("DELETE FROM units WHERE unit = ?", (unit,))
            db.execute("DELETE FROM aliases WHERE profile = ? OR unit = ?", (unit, unit))
            erasure.erased += len(rows)

    def _combine(
        self, experiment: str, unit: str, ours: tuple[str, int, int, bytes],
        theirs: tuple[str, int, int, bytes], touched: set[tuple[str, str, str]],
        counted: set[tuple[str, str]],
    ) -> None:  # fmt: skip
        variant = ours[0]
        mine, other = _decode_state(ours[3]), _decode_state(theirs[3])
        combined: dict[str, MetricState] = {}
        for metric in self.metrics_of(experiment):
            a, b = mine.get(metric.name), other.get(metric.name)
            self._move(experiment, variant, metric, a, None, touched)
            self._move(experiment, variant, metric, b, None, touched)
            if a is None or b is None:
                continue
            both = MetricState(
                a.numerator + b.numerator, a.denominator + b.denominator,
                a.covariate + b.covariate,
            )  # fmt: skip
            self._move(experiment, variant, metric, None, both, touched)
            combined[metric.name] = both
        self._count(experiment, variant, -1, 0, counted)
        self._db.execute(
            "UPDATE units SET first_ms = ?, state = ? WHERE experiment = ? AND unit = ?",
            (min(ours[1], theirs[1]), _encode(combined), experiment, unit),
        )

    def _exclude(
        self, experiment: str, unit: str, row: tuple[str, int, int, bytes],
        touched: set[tuple[str, str, str]], counted: set[tuple[str, str]],
    ) -> None:  # fmt: skip
        """Leave a unit out of the totals: it has seen more than one variant."""
        variant, states = row[0], _decode_state(row[3])
        for metric in self.metrics_of(experiment):
            self._move(experiment, variant, metric, states.get(metric.name), None, touched)
        self._count(experiment, variant, 0, 1, counted)
        self._db.execute(
            "UPDATE units SET multiple = 1 WHERE experiment = ? AND unit = ?", (experiment, unit)
        )

    def _move(
        self, experiment: str, variant: str, metric: MetricSpec, before: MetricState | None,
        after: MetricState | None, touched: set[tuple[str, str, str]],
    ) -> None:  # fmt: skip
        """Update the totals for one unit's metric going from `before` to `after`."""
        key = (experiment, variant, metric.name)
        totals = self._totals.get(key)
        if totals is None:
            totals = self._totals[key] = [0.0] * 6
        if before is not None:
            y = value(metric, before.numerator, before.denominator)
            if y is not None:
                _add(totals, y, before, -1.0)
        if after is not None:
            y = value(metric, after.numerator, after.denominator)
            if y is not None:
                _add(totals, y, after)
        touched.add(key)

    def _count(
        self, experiment: str, variant: str, units: int, multiple: int,
        counted: set[tuple[str, str]],
    ) -> None:  # fmt: skip
        key = (experiment, variant)
        held = self._exposed.get(key)
        if held is None:
            held = self._exposed[key] = [0, 0]
        held[0] += units
        held[1] += multiple
        counted.add(key)


class ExperimentLogReader:
    """Reads an experiment log, also one in use by a running engine (a WAL reader), or
    the one in PostgreSQL."""

    def __init__(self, source: Path | Tables) -> None:
        self.db: Tables = (
            SqliteTables(source, read_only=True) if isinstance(source, Path) else source
        )

    def totals(self, experiment: str) -> dict[tuple[str, str], Totals]:
        """(variant, metric) -> n, sum, sum of squares, covariate sum, its squares, cross."""
        rows = self.db.execute(
            "SELECT variant, metric, n, total, total_squares, covariate, "
            "covariate_squares, cross FROM totals WHERE experiment = ?", (experiment,)
        ).fetchall()  # fmt: skip
        return {(v, m): [float(x) for x in rest] for v, m, *rest in rows}

    def exposures(self, experiment: str) -> dict[str, tuple[int, int]]:
        """variant -> (units exposed, of which exposed to another variant too)."""
        rows = self.db.execute(
            "SELECT variant, units, multiple FROM exposed WHERE experiment = ?", (experiment,)
        ).fetchall()
        return {v: (int(units), int(multiple)) for v, units, multiple in rows}

    def recount(
        self, experiment: str, metrics: Sequence[MetricSpec]
    ) -> dict[tuple[str, str], Totals]:
        """`totals`, computed from every visitor's row (slow: a check, and a repair)."""
        found: dict[tuple[str, str], Totals] = {}
        rows = self.db.execute(
            "SELECT variant, state FROM units WHERE experiment = ? AND multiple = 0",
            (experiment,),
        )
        for variant, state in rows:
            states = _decode_state(state)
            for metric in metrics:
                held = states.get(metric.name)
                if held is None:
                    continue
                y = value(metric, held.numerator, held.denominator)
                if y is not None:
                    _add(found.setdefault((variant, metric.name), [0.0] * 6), y, held)
        return found

    def close(self) -> None:
        self.db.close()


def _stored_arms(tables: Tables, lock: threading.Lock, unit: str) -> dict[str, str]:
    with lock:
        rows = tables.execute(
            "SELECT experiment, variant FROM units WHERE unit = ?", (unit,)
        ).fetchall()
    return dict(rows)


class _Settled(threading.Event):
    """A flush that leaves what the grace holds back where it is."""


class _Reorder:
    """Holds back all but exposures for `grace` seconds (none when 0), in their order;
    a flush or stop takes everything held."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.waiting: deque[tuple[float, _Work]] = deque()
        self.not_before = 0.0

    def sort(self, incoming: list[_Work], now: float) -> list[_Work]:
        if not self.grace:
            return incoming
        ready: list[_Work] = []
        for work in incoming:
            if isinstance(work, Exposure | _Settled):
                ready.append(work)
            elif isinstance(work, threading.Event) or work is _STOP:
                ready.extend(held for _, held in self.waiting)
                self.waiting.clear()
                ready.append(work)
            else:
                self.waiting.append((now, work))
        if now >= self.not_before:
            while self.waiting and self.waiting[0][0] + self.grace <= now:
                ready.append(self.waiting.popleft()[1])
        return ready

    def next_due(self, now: float) -> float | None:
        """Seconds until something held is due (None: nothing is held)."""
        if not self.waiting:
            return None
        due = max(self.waiting[0][0] + self.grace, self.not_before)
        return max(due - now, 0.001)

    def recovered(self, now: float) -> None:
        self.not_before = now + _RECOVERY_GRACE_SECONDS


@dataclass(frozen=True)
class _Purge:
    experiment: str


@dataclass
class _Erasure:
    units: tuple[str, ...]
    erased: int = 0


def _add(totals: Totals, y: float, state: MetricState, sign: float = 1.0) -> None:
    x = state.covariate
    totals[0] += sign
    totals[1] += sign * y
    totals[2] += sign * y * y
    totals[3] += sign * x
    totals[4] += sign * x * x
    totals[5] += sign * x * y
