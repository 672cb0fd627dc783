"""Erasures reach every worker: each keeps its own local logs (events, decisions,
experiment rows), so the worker that erases a person announces it in a Redis stream, and
every other worker erases the same person from its own files at its next tick.

A worker records, in Redis, the last announcement it has carried out; one that was down
carries out what it missed when it starts again. Its own announcements it skips (it did
the work before announcing). An announcement also deletes the snapshot of what the
workers learned (learn/snapshot.py), which may name the person.
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis

from intently.stores.layout import shared_key
from intently.stores.stream import as_text


class Erasure(msgspec.Struct, frozen=True):
    """Who to erase, by every id the local files know them by."""

    anonymous_ids: list[str]
    user_ids: list[str]
    devices: list[str]  # decision log visitors: "a:..." / "u:..."
    profile_ids: list[str]
    units: list[str]  # experiment units (profile ids, and the ids they would have had)


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Erasure).decode


class ErasureBroadcast:
    def __init__(self, client: redis.Redis, prefix: str, worker: str) -> None:
        self.client = client
        self.worker = worker
        self.key = shared_key(prefix, "erasures")
        self._progress_key = f"{prefix}worker:{{{worker}}}"
        self._snapshot_key = shared_key(prefix, "learning-snapshot")

    def announce(self, erasure: Erasure) -> None:
        with self.client.pipeline(transaction=True) as both:
            both.xadd(self.key, {"worker": self.worker, "erasure": _encode(erasure)})
            both.delete(self._snapshot_key)
            both.execute()

    def carried_out_through(self) -> str | None:
        """The last announcement this worker carried out (None: none yet)."""
        done = self.client.hget(self._progress_key, "erased_up_to")
        return done.decode() if isinstance(done, bytes) else None

    def since(self, entry_id: str | None, limit: int = 1000) -> list[tuple[str, Erasure]]:
        """Every announcement after `entry_id` (all for None), this worker's own too, in
        order, at most `limit`."""
        return [(name, _decode(body)) for name, _, body in self._after(entry_id, limit)]

    def pending(self, limit: int = 100) -> list[tuple[str, Erasure | None]]:
        """Announcements not yet carried out by this worker, in order; None for this
        worker's own (done before announcing: mark them done in turn)."""
        me = self.worker.encode()
        return [
            (name, None if worker == me else _decode(body))
            for name, worker, body in self._after(self.carried_out_through(), limit)
        ]

    def _after(self, entry_id: str | None, limit: int) -> list[tuple[str, bytes, bytes]]:
        """(id, announcing worker, erasure) of the announcements after `entry_id`."""
        start = "-" if entry_id is None else "(" + entry_id
        entries: Any = self.client.xrange(self.key, min=start, count=limit)
        return [(as_text(name), fields[b"worker"], fields[b"erasure"]) for name, fields in entries]

    def done(self, entry_id: str) -> None:
        self.client.hset(self._progress_key, "erased_up_to", entry_id)
