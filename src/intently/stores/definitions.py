"""Placements, segments and experiments defined through the API, shared by every worker
through PostgreSQL (stores/polled.py): a definition is checked on the worker that is
given it, written to PostgreSQL, then installed there; every other worker installs it
from its next poll, about a second later. When PostgreSQL cannot take it, the request
is refused and nothing changes anywhere.

An experiment travels with when it started and stopped, so every worker measures it over
the same period. A definition another worker cannot install (it names a placement this
one does not serve yet, say) is logged and counted; the next change of it is tried again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import msgspec

from intently.act.placements import PlacementSpec
from intently.experiments.registry import Stored
from intently.segments.registry import SegmentSpec
from intently.stores.polled import PolledTable, Row, VersionedRow

log = logging.getLogger(__name__)

_DEFINITIONS_LOCK = 0x646566696E6974  # "definit"

PLACEMENT = "placement"
SEGMENT = "segment"
EXPERIMENT = "experiment"

Definition = PlacementSpec | SegmentSpec | Stored
_encode = msgspec.json.Encoder().encode
_DECODERS: dict[str, msgspec.json.Decoder[PlacementSpec] | msgspec.json.Decoder[SegmentSpec]
                | msgspec.json.Decoder[Stored]] = {
    PLACEMENT: msgspec.json.Decoder(PlacementSpec),
    SEGMENT: msgspec.json.Decoder(SegmentSpec),
    EXPERIMENT: msgspec.json.Decoder(Stored),
}  # fmt: skip


class SharedDefinitions:
    def __init__(self, url: str, worker: str) -> None:
        self.table = PolledTable(
            url, worker, "definitions", "definition_versions", _DEFINITIONS_LOCK
        )

    def publish(self, kind: str, key: str, definition: Definition | None) -> None:
        """Write a definition (None: its deletion), if the row is still at the version
        installed here (the change was checked against it); raises `ChangedElsewhere`
        otherwise, `psycopg.Error` (or `OSError`) when PostgreSQL cannot take it."""
        body = None if definition is None else _encode(definition)
        self.table.publish([(kind, key, body)], expect_installed=True)

    def changes(self) -> list[tuple[str, str, Definition | None]]:
        """`take(read())`: for callers that read and install in one place."""
        return self.take(self.read())

    def read(self) -> list[VersionedRow]:
        """Every definition written since the last read (blocking: off the event loop)."""
        return self.table.read()

    def take(self, rows: list[VersionedRow]) -> list[tuple[str, str, Definition | None]]:
        """Those of `rows` newer than what is installed here, decoded, oldest first:
        call it under the lock definitions are installed under."""
        return list(self._decoded(self.table.fresh(rows)))

    def _decoded(self, rows: list[Row]) -> Iterator[tuple[str, str, Definition | None]]:
        for kind, key, body in rows:
            decoder = _DECODERS.get(kind)
            if decoder is None:
                continue  # a kind a newer version shares: not one this version serves
            try:
                yield kind, key, None if body is None else decoder.decode(body)
            except msgspec.DecodeError as error:  # (ValidationError is one)
                log.error("the shared %s %r cannot be read: %s", kind, key, error)

    def close(self) -> None:
        self.table.close()
