"""A PostgreSQL table every worker writes to and polls, for what each worker keeps in
memory but all must agree on: the catalog, and the placements, segments and experiments
defined through the API.

A row is (kind, id, body, version, worker); a body of NULL is a deletion. A write takes
the next version of the table's sequence under a transaction-scoped advisory lock, so
versions commit in the order they were drawn and a poll for "versions above the last one
seen" never skips a row that commits late. Each worker skips its own rows when polling
(it applied them when it wrote them), except at start, when its local copy may be older
than the table or gone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from intently.stores.archive import postgres_json
from intently.stores.postgres import reconnect_postgres

T = TypeVar("T")

# (kind, id, JSON body or None for a deletion)
Row = tuple[str, str, bytes | None]
# A row as read, with its version: installed only if newer than what this worker has.
VersionedRow = tuple[str, str, bytes | None, int]


class ChangedElsewhere(Exception):
    """A write expected the row at the version this worker installed, and another worker
    changed it since: the change was checked against a definition no longer current."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key!r} was changed by another worker meanwhile")
        self.kind, self.key = kind, key


class PolledTable:
    def __init__(self, url: str, worker: str, table: str, sequence: str, lock: int) -> None:
        self.url = url
        self.worker = worker
        self.seen_version = 0
        # The version of each row as installed here (written here, or read and taken):
        # a row read before a newer one was written here is not installed over it.
        self.installed: dict[tuple[str, str], int] = {}
        self._table = sql.Identifier(table)
        self._sequence = sequence
        self._advisory_lock = lock
        self._connection: psycopg.Connection | None = None
        self._lock = threading.Lock()  # one connection: one statement at a time

    def publish(self, rows: Sequence[Row], *, expect_installed: bool = False) -> None:
        """Write the rows, all or none, and note them installed; raises `psycopg.Error`
        (or `OSError`) when PostgreSQL cannot take them, and with `expect_installed`
        `ChangedElsewhere` when a row is no longer at the version installed here."""
        statement = sql.SQL(
            "INSERT INTO {} VALUES (%s, %s, %s, nextval({}), %s) ON CONFLICT (kind, id)"
            " DO UPDATE SET body = excluded.body, version = excluded.version,"
            " worker = excluded.worker RETURNING version"
        ).format(self._table, sql.Literal(self._sequence))
        current = sql.SQL("SELECT version FROM {} WHERE kind = %s AND id = %s").format(self._table)
        values = [
            (kind, key, None if body is None else postgres_json(body), self.worker)
            for kind, key, body in rows
        ]

        def write() -> list[int]:
            connection = self._connect()
            with connection.transaction(), connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (self._advisory_lock,))
                if expect_installed:
                    for kind, key, _ in rows:
                        found = cursor.execute(current, (kind, key)).fetchone()
                        if (int(found[0]) if found else 0) != self.installed.get((kind, key), 0):
                            raise ChangedElsewhere(kind, key)
                cursor.executemany(statement, values, returning=True)
                versions: list[int] = []
                while True:
                    versions.append(int(cursor.fetchone()[0]))  # type: ignore[index]
                    if not cursor.nextset():
                        return versions

        with self._lock:
            versions = self._retried(write)
        for (kind, key, _), version in zip(rows, versions, strict=True):
            self.installed[kind, key] = max(version, self.installed.get((kind, key), 0))

    def read(self, limit: int = 5000) -> list[VersionedRow]:
        """Every row written since the last read, oldest first, this worker's too (a
        write whose answer was lost is installed this way). Blocking; raises when
        PostgreSQL is away (and the next read asks again)."""
        query = sql.SQL(
            "SELECT kind, id, body::text, version FROM {} WHERE version > %s"
            " ORDER BY version LIMIT %s"
        ).format(self._table)
        rows: list[VersionedRow] = []
        while True:
            with self._lock:
                found: list[Any] = self._retried(
                    lambda: self._connect().execute(query, (self.seen_version, limit)).fetchall()
                )
            for kind, key, body, version in found:
                self.seen_version = max(self.seen_version, int(version))
                rows.append((kind, key, None if body is None else body.encode(), int(version)))
            if len(found) < limit:
                return rows

    def fresh(self, rows: Sequence[VersionedRow]) -> list[Row]:
        """Those of `rows` newer than what is installed here, noted installed: call it
        where they are installed (on the event loop), not where they were read."""
        taken: list[Row] = []
        for kind, key, body, version in rows:
            if version > self.installed.get((kind, key), 0):
                self.installed[kind, key] = version
                taken.append((kind, key, body))
        return taken

    def _retried(self, work: Callable[[], T]) -> T:
        """`work`, once more on a new connection if the first attempt finds the old one
        gone stale in an outage that has since ended."""
        try:
            return work()
        except psycopg.OperationalError:
            self._drop()
        except BaseException:
            self._drop()
            raise
        try:
            return work()
        except BaseException:
            self._drop()
            raise

    def _connect(self) -> psycopg.Connection:
        if self._connection is None or self._connection.closed:
            self._connection = reconnect_postgres(self.url)
        return self._connection

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def close(self) -> None:
        with self._lock:
            self._drop()
