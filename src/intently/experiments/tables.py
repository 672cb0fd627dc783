"""Where the experiment log keeps its tables: SQLite in the data dir (one worker), or
PostgreSQL (every worker of a deployment writing one set of tables, so an exposure on one
worker and the purchase that follows on another count together).

Both speak the log's SQL, written for SQLite; for PostgreSQL it is translated (`?`
placeholders, `INSERT OR REPLACE` as an upsert, the `cross` column quoted) and runs in the
`intently_experiments` schema, whose tables have the same names (stores/postgres.py,
migration 4). PostgreSQL writers take one advisory lock per transaction: the running
totals are read, moved and written back by one worker at a time.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import psycopg

from intently.log.eventlog import truncate_wal
from intently.stores.postgres import reconnect_postgres

SCHEMA = """
CREATE TABLE IF NOT EXISTS units (
    experiment TEXT NOT NULL,
    unit TEXT NOT NULL,
    variant TEXT NOT NULL,
    first_ms INTEGER NOT NULL,
    multiple INTEGER NOT NULL DEFAULT 0,
    state BLOB NOT NULL,
    PRIMARY KEY (experiment, unit)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS units_by_unit ON units (unit);
CREATE TABLE IF NOT EXISTS totals (
    experiment TEXT NOT NULL,
    variant TEXT NOT NULL,
    metric TEXT NOT NULL,
    n INTEGER NOT NULL,
    total REAL NOT NULL,
    total_squares REAL NOT NULL,
    covariate REAL NOT NULL,
    covariate_squares REAL NOT NULL,
    cross REAL NOT NULL,
    PRIMARY KEY (experiment, variant, metric)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS exposed (
    experiment TEXT NOT NULL,
    variant TEXT NOT NULL,
    units INTEGER NOT NULL,
    multiple INTEGER NOT NULL,
    PRIMARY KEY (experiment, variant)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS aliases (
    profile TEXT PRIMARY KEY,
    unit TEXT NOT NULL
) WITHOUT ROWID;
"""

_EXPERIMENTS_LOCK = 0x6578706572696D  # "experim"


class Rows(Protocol):
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Tables(Protocol):
    # Where each worker keeps how far into its own event log it has counted.
    seq_key: str
    shared: bool  # other workers write these tables too

    def execute(self, statement: str, parameters: Sequence[object] = ()) -> Rows: ...
    def executemany(self, statement: str, rows: Sequence[Sequence[object]]) -> None: ...
    def transaction(self) -> Any: ...  # a context manager
    def after_erasure(self) -> None: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...


class SqliteTables:
    seq_key = "seq"
    shared = False

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        if read_only:
            if not path.exists():
                raise FileNotFoundError(f"no experiment log at {path}")
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            return
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        # An erasure deletes rows: the pages it frees are zeroed, not left readable.
        self.db.execute("PRAGMA secure_delete = ON")
        self.db.executescript(SCHEMA)

    def execute(self, statement: str, parameters: Sequence[object] = ()) -> Rows:
        return self.db.execute(statement, parameters)

    def executemany(self, statement: str, rows: Sequence[Sequence[object]]) -> None:
        self.db.executemany(statement, rows)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.db:
            self.db.execute("BEGIN")
            yield

    def after_erasure(self) -> None:
        truncate_wal(self.db, self.path)  # the WAL still holds the old pages

    def reset(self) -> None:
        pass

    def close(self) -> None:
        self.db.close()


class PostgresTables:
    shared = True

    def __init__(self, url: str, worker: str, *, answer_seconds: float | None = None) -> None:
        """`answer_seconds`: a tighter bound on each wait for the server than the
        connection's own (stores/postgres.py), for reads on the event loop."""
        self.url = url
        self.seq_key = f"seq:{worker}"
        self.answer_seconds = answer_seconds
        self._connection: psycopg.Connection | None = None
        self._in_transaction = False

    def _connect(self) -> psycopg.Connection:
        if self._connection is None or self._connection.closed:
            connection = reconnect_postgres(self.url)
            if self.answer_seconds is not None:
                connection.answer_seconds = self.answer_seconds
            connection.execute("SET search_path TO intently_experiments")
            self._connection = connection
        return self._connection

    def execute(self, statement: str, parameters: Sequence[object] = ()) -> Rows:
        sql = postgres_sql(statement)
        try:
            return self._connect().execute(sql, parameters)
        except psycopg.OperationalError:
            self.reset()
            if self._in_transaction:
                raise
            # A read on a connection gone stale in an outage that has ended: once more.
            return self._connect().execute(sql, parameters)
        except BaseException:
            self.reset()
            raise

    def executemany(self, statement: str, rows: Sequence[Sequence[object]]) -> None:
        if not rows:
            return
        try:
            with self._connect().cursor() as cursor:
                cursor.executemany(postgres_sql(statement), rows)
        except BaseException:
            self.reset()
            raise

    @contextmanager
    def transaction(self) -> Iterator[None]:
        try:
            connection = self._connect()
            with connection.transaction():
                self._in_transaction = True
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (_EXPERIMENTS_LOCK,))
                yield
        except BaseException:
            self.reset()
            raise
        finally:
            self._in_transaction = False

    def after_erasure(self) -> None:
        pass  # rows deleted in PostgreSQL are gone for readers at once (VACUUM frees them)

    def reset(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def close(self) -> None:
        self.reset()


# The upserts of the log's `INSERT OR REPLACE`: each table's key, and the columns replaced.
_UPSERTS = {
    "totals": ("experiment, variant, metric",
               ("n", "total", "total_squares", "covariate", "covariate_squares", '"cross"')),
    "exposed": ("experiment, variant", ("units", "multiple")),
    "meta": ("key", ("value",)),
    "aliases": ("profile", ("unit", "version")),
}  # fmt: skip
_REPLACE = re.compile(r"INSERT OR REPLACE INTO (\w+) ")


@functools.cache
def postgres_sql(statement: str) -> str:
    """The log's SQLite statement as PostgreSQL runs it."""
    translated = re.sub(r"\bcross\b", '"cross"', statement).replace("?", "%s")
    replace = _REPLACE.match(translated)
    if replace is None:
        return translated
    key, columns = _UPSERTS[replace[1]]
    updates = ", ".join(f"{column} = excluded.{column}" for column in columns)
    rest = translated[replace.end() :]
    return f"INSERT INTO {replace[1]} {rest} ON CONFLICT ({key}) DO UPDATE SET {updates}"
