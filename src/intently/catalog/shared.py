"""The catalog shared through PostgreSQL, for workers that each keep theirs in memory.

A worker that is given items or offers (the API, `intently catalog import`, the demo)
writes them to PostgreSQL first, then to its own `catalog.db` and memory; the upload is
refused (and nothing changes anywhere) when PostgreSQL cannot take it. Every worker polls
the table for versions it has not seen, about once a second, and applies them the same
way, so a catalog change reaches every worker's decisions within about a second
(stores/polled.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import msgspec

from intently.catalog.items import Item
from intently.catalog.offers import Offer
from intently.stores.polled import PolledTable, VersionedRow

log = logging.getLogger(__name__)

_CATALOG_LOCK = 0x636174616C6F67  # "catalog"
_to_item = msgspec.json.Decoder(Item).decode
_to_offer = msgspec.json.Decoder(Offer).decode


class SharedCatalog:
    def __init__(self, url: str, worker: str) -> None:
        self.table = PolledTable(url, worker, "catalog", "catalog_versions", _CATALOG_LOCK)

    def publish(self, kind: str, rows: Sequence[tuple[str, bytes]]) -> None:
        """Write (id, JSON body) rows of `kind` ("item" or "offer"); raises
        `psycopg.Error` (or `OSError`) when PostgreSQL cannot take them."""
        self.table.publish([(kind, key, body) for key, body in rows])

    def changes(self) -> tuple[list[Item], list[Offer]]:
        """What was written since the last call and is newer than what is installed here
        (at start, everything: this worker's local copy may be older or gone). Blocking;
        raises when PostgreSQL is away, and the next call asks again."""
        return self.take(self.table.read())

    def read(self) -> list[VersionedRow]:
        """The rows written since the last read (blocking: off the event loop)."""
        return self.table.read()

    def take(self, rows: list[VersionedRow]) -> tuple[list[Item], list[Offer]]:
        """Those of `rows` newer than what is installed here, decoded (where they are
        installed: a row read before this worker wrote a newer one is skipped)."""
        items: list[Item] = []
        offers: list[Offer] = []
        for kind, key, body in self.table.fresh(rows):
            if body is None:
                continue  # (catalog rows are never deleted)
            try:
                if kind == "item":
                    items.append(_to_item(body))
                elif kind == "offer":
                    offers.append(_to_offer(body))
            except msgspec.DecodeError as error:  # e.g. written by a newer version
                log.error("the shared %s %r cannot be read here: %s", kind, key, error)
        return items, offers

    def close(self) -> None:
        self.table.close()
