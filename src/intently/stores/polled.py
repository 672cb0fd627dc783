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

from intently.stores.postgres import reconnect_postgres

T = TypeVar("T")

# (kind, id, JSON body or None for a deletion)
Row = tuple[str, str, bytes | None]


class PolledTable:
    def __init__(self, url: str, worker: str, table: str, sequence: str, lock: int) -> None:
        self.url = url
        self.worker = worker
        self.seen_version = 0
        self._table = sql.Identifier(table)
        self._sequence = sequence
        self._advisory_lock = lock
        self._connection: psycopg.Connection | None = None
        self._lock = threading.Lock()  # one connection: one statement at a time

    def publish(self, rows: Sequence[Row]) -> None:
        """Write the rows, all or none; raises `psycopg.Error` (or `OSError`) when
        PostgreSQL cannot take them."""
        statement = sql.SQL(
            "INSERT INTO {} VALUES (%s, %s, %s, nextval({}), %s) ON CONFLICT (kind, id)"
            " DO UPDATE SET body = excluded.body, version = excluded.version,"
            " worker = excluded.worker"
        ).format(self._table, sql.Literal(self._sequence))
        values = [
            (kind, key, None if body is None else body.decode(), self.worker)
            for kind, key, body in rows
        ]

        def write() -> None:
            connection = self._connect()
            with connection.transaction(), connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (self._advisory_lock,))
                cursor.executemany(statement, values)

        with self._lock:
            self._retried(write)

    def changes(self, limit: int = 5000, *, own: bool = False) -> list[Row]:
        """The rows written since the last call, oldest first: other workers' only, or
        this worker's too with `own`. Blocking; raises when PostgreSQL is away (and the
        next call asks again)."""
        query = sql.SQL(
            "SELECT kind, id, body::text, version, worker FROM {} WHERE version > %s"
            " ORDER BY version LIMIT %s"
        ).format(self._table)
        rows: list[Row] = []
        while not rows:  # a page of only this worker's rows: read on
            with self._lock:
                found: list[Any] = self._retried(
                    lambda: self._connect().execute(query, (self.seen_version, limit)).fetchall()
                )
            for kind, key, body, version, worker in found:
                self.seen_version = max(self.seen_version, int(version))
                if worker != self.worker or own:
                    rows.append((kind, key, None if body is None else body.encode()))
            if len(found) < limit:
                break
        return rows

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
