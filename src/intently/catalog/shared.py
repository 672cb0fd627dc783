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
from intently.stores.polled import PolledTable

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

    def changes(self, limit: int = 5000, *, own: bool = False) -> tuple[list[Item], list[Offer]]:
        """What other workers wrote since the last call (also this worker's, with
        `own`: at start-up, when its local copy may be older or gone). Blocking; raises
        when PostgreSQL is away, and the next call asks again."""
        items: list[Item] = []
        offers: list[Offer] = []
        for kind, key, body in self.table.changes(limit, own=own):
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
