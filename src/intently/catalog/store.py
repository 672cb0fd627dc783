"""The catalog, in memory for decisions and in `catalog.db` (SQLite) for restarts.

Writes are whole items (an upsert replaces the item), made durable in one transaction per
upload, then applied to memory: a decision that starts after the upload was acknowledged
sees it (a sold-out item is no longer available). Reads never touch the disk.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, KeysView
from pathlib import Path

import msgspec

from intently.catalog.items import Item
from intently.catalog.offers import LiveOffer, Offer, prepare
from intently.catalog.shared import SharedCatalog
from intently.context.profile import Profile
from intently.segments.fields import FieldCatalog

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id         TEXT PRIMARY KEY,
    body       BLOB NOT NULL,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offers (
    id         TEXT PRIMARY KEY,
    body       BLOB NOT NULL,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
"""
_UPSERT = (
    "INSERT INTO {table} (id, body, updated_ms) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE "
    "SET body = excluded.body, updated_ms = excluded.updated_ms"
)
log = logging.getLogger(__name__)
# JSON, not MessagePack: attributes are free-form JSON and may hold integers past 64 bits
# (the API fuzzer sent one); catalog writes are rare, so the encoding's speed is moot.
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Item).decode
_decode_offer = msgspec.json.Decoder(Offer).decode


_NO_FACETS: tuple[None, None, None] = (None, None, None)


class CatalogStore:
    def __init__(self, path: Path, fields: FieldCatalog) -> None:
        self.path = path
        self.fields = fields
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(_SCHEMA)
        # One connection, written from worker threads: one transaction at a time.
        self._write_lock = threading.Lock()
        self._items: dict[str, Item] = {}
        # An ordered set (a dict): the catalog's own order, for a widget with nothing better.
        self._available: dict[str, None] = {}
        self._available_ids = self._available.keys()  # a live view, made once
        self._offers: dict[str, LiveOffer] = {}
        # Counts every change that decisions can see (caches compare it).
        self.version = 0
        # Workers with PostgreSQL share the catalog through it (catalog/shared.py).
        self.shared: SharedCatalog | None = None
        self._offer_checks: tuple[int, list[tuple[Offer, LiveOffer | None]]] | None = None
        # Items by leaf category, in the order they were added (a dict as an ordered
        # set): similar items for new items and new visitors, without a catalog scan.
        self._by_category: dict[str, dict[str, None]] = {}
        self._facets: dict[str, tuple[str | None, str | None, str | None]] = {}
        for (body,) in self._db.execute("SELECT body FROM items"):
            self._apply(_decode(body))
        for (body,) in self._db.execute("SELECT body FROM offers"):
            offer = _decode_offer(body)
            try:
                self._offers[offer.id] = prepare(offer, fields)
            except ValueError:  # a rule this version no longer reads: kept, not offered
                log.exception("offer %r cannot be prepared; it is not offered", offer.id)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Item]:
        return iter(list(self._items.values()))

    def get(self, item_id: str) -> Item | None:
        return self._items.get(item_id)

    @property
    def available(self) -> frozenset[str]:
        """The ids of the items decisions may show now (active, not sold out)."""
        return frozenset(self._available)

    def available_ids(self) -> Iterator[str]:
        return iter(list(self._available))  # in the order items were first added

    def is_available(self, item_id: str) -> bool:
        return item_id in self._available

    def availability(self) -> KeysView[str]:
        """The ids of the items decisions may show now, as a live read-only view: for
        checking many items in a row (`in` on it costs no call)."""
        return self._available_ids

    def write(self, items: Iterable[Item], *, publish: bool = True) -> list[Item]:
        """Make `items` durable (the last of the same id wins); returns them, to `apply`
        once written. Safe to call from a worker thread. With a shared catalog, written
        there first (`publish=False`: they came from there)."""
        latest = {item.id: item for item in items}
        rows = [(item.id, _encode(item)) for item in latest.values()]
        if publish and self.shared is not None:
            self.shared.publish("item", rows)
        self._write("items", rows)
        return list(latest.values())

    def _write(self, table: str, rows: list[tuple[str, bytes]]) -> None:
        now = int(time.time() * 1000)
        with self._write_lock, self._db:  # one transaction
            self._db.execute("BEGIN")
            self._db.executemany(
                _UPSERT.format(table=table), [(key, body, now) for key, body in rows]
            )

    # -- offers ------------------------------------------------------------------------------

    def write_offers(self, offers: Iterable[LiveOffer], *, publish: bool = True) -> list[LiveOffer]:
        """Like `write`, for offers (already checked and compiled)."""
        latest = {live.offer.id: live for live in offers}
        rows = [(key, _encode(live.offer)) for key, live in latest.items()]
        if publish and self.shared is not None:
            self.shared.publish("offer", rows)
        self._write("offers", rows)
        return list(latest.values())

    def apply_offers(self, offers: Iterable[LiveOffer]) -> None:
        for live in offers:
            self._offers[live.offer.id] = live
        self.version += 1

    def get_offer(self, offer_id: str) -> LiveOffer | None:
        return self._offers.get(offer_id)

    def offers(self) -> list[LiveOffer]:
        return list(self._offers.values())

    def eligible_offers(self, profile: Profile | None, now_ms: int) -> list[Offer]:
        """The offers open now whose rule the visitor meets, in the order they were added."""
        if self._offer_checks is None or self._offer_checks[0] != self.version:
            # Per catalog version: which offers need a check at all (a time window or a
            # rule); most do not, and this runs on every decision.
            checks = [
                (live.offer, live if live.matches or live.starts_ms or live.ends_ms else None)
                for live in self._offers.values()
                if live.offer.active
            ]
            self._offer_checks = (self.version, checks)
        return [
            offer
            for offer, live in self._offer_checks[1]
            if live is None or live.eligible(profile, now_ms)
        ]

    def apply(self, items: Iterable[Item]) -> None:
        """Show written items to readers (on the thread that serves decisions)."""
        for item in items:
            self._apply(item)
        self.version += 1

    def upsert(self, items: Iterable[Item]) -> int:
        written = self.write(items)
        self.apply(written)
        return len(written)

    def facets_of(self, item_ids: Iterable[str]) -> list[tuple[str | None, str | None, str | None]]:
        """What slates keep apart, for each of `item_ids` in order: the item's narrowest
        category, its brand and its group (`attributes.group`: near-duplicates, e.g. one
        product in several colours)."""
        get = self._facets.get
        return [get(item_id, _NO_FACETS) for item_id in item_ids]

    def in_category(self, category: str) -> Iterable[str]:
        """The ids of the items whose narrowest category is `category`."""
        return self._by_category.get(category, {}).keys()

    def _apply(self, item: Item) -> None:
        previous = self._items.get(item.id)
        if previous is not None and previous.leaf_category is not None:
            self._by_category[previous.leaf_category].pop(item.id, None)
        if item.leaf_category is not None:
            self._by_category.setdefault(item.leaf_category, {})[item.id] = None
        self._items[item.id] = item
        group = item.attributes.get("group")
        self._facets[item.id] = (
            item.leaf_category,
            item.brand,
            group if isinstance(group, str) else None,
        )
        if item.available:
            self._available.setdefault(item.id)
        else:
            self._available.pop(item.id, None)

    def close(self) -> None:
        self._db.close()
