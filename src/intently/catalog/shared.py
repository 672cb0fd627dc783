"""The catalog shared through PostgreSQL, for workers that each keep theirs in memory.

A worker that is given items or offers (the API, `intently catalog import`, the demo)
writes them to PostgreSQL first, then to its own `catalog.db` and memory; the upload is
refused (and nothing changes anywhere) when PostgreSQL cannot take it. Every worker polls
the table for versions it has not seen, about once a second, and applies them the same
way, so a catalog change reaches every worker's decisions within about a second. Writes
hold an advisory lock: versions are committed in the order they were drawn, so a poll
never skips a row that commits late.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import msgspec
import psycopg

from intently.catalog.items import Item
from intently.catalog.offers import Offer
from intently.stores.postgres import connect_postgres

_CATALOG_LOCK = 0x636174616C6F67  # "catalog"
_encode = msgspec.json.Encoder().encode
_to_item = msgspec.json.Decoder(Item).decode
_to_offer = msgspec.json.Decoder(Offer).decode


class SharedCatalog:
    def __init__(self, url: str, worker: str) -> None:
        self.url = url
        self.worker = worker
        self.seen_version = 0
        self._connection: psycopg.Connection | None = None
        self._lock = threading.Lock()  # one connection: one statement at a time

    def _connect(self) -> psycopg.Connection:
        if self._connection is None or self._connection.closed:
            self._connection = connect_postgres(self.url)
        return self._connection

    def publish(self, kind: str, rows: Sequence[tuple[str, bytes]]) -> None:
        """Write (id, JSON body) rows of `kind` ("item" or "offer"); raises
        `psycopg.Error` (or `OSError`) when PostgreSQL cannot take them."""
        with self._lock:
            try:
                connection = self._connect()
                with connection.transaction(), connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_CATALOG_LOCK,))
                    cursor.executemany(
                        "INSERT INTO catalog VALUES (%s, %s, %s, nextval('catalog_versions'),"
                        " %s) ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body,"
                        " version = excluded.version, worker = excluded.worker",
                        [(kind, key, body.decode(), self.worker) for key, body in rows],
                    )
            except BaseException:
                self._drop()
                raise

    def changes(self, limit: int = 5000, *, own: bool = False) -> tuple[list[Item], list[Offer]]:
        """What other workers wrote since the last call (also this worker's, with
        `own`: at start-up, when its local copy may be older or gone). Blocking; raises
        when PostgreSQL is away, and the next call asks again."""
        with self._lock:
            try:
                found: list[Any] = (
                    self._connect()
                    .execute(
                        "SELECT kind, body::text, version, worker FROM catalog WHERE version > %s"
                        " ORDER BY version LIMIT %s",
                        (self.seen_version, limit),
                    )
                    .fetchall()
                )
            except BaseException:
                self._drop()
                raise
        items: list[Item] = []
        offers: list[Offer] = []
        for kind, body, version, worker in found:
            self.seen_version = max(self.seen_version, int(version))
            if worker == self.worker and not own:
                continue  # applied when it was written
            if kind == "item":
                items.append(_to_item(body.encode()))
            else:
                offers.append(_to_offer(body.encode()))
        return items, offers

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def close(self) -> None:
        with self._lock:
            self._drop()
