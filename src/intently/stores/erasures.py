"""Erasures reach every worker: each keeps its own local logs (events, decisions,
experiment rows), so the worker that erases a person announces it in a Redis stream, and
every other worker erases the same person from its own files at its next tick.

A worker records, in Redis, the last announcement it has carried out; one that was down
carries out what it missed when it starts again. Its own announcements it skips (it did
the work before announcing).
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis


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
        self.key = f"{prefix}erasures"
        self._progress_key = f"{prefix}worker:{{{worker}}}"

    def announce(self, erasure: Erasure) -> None:
        self.client.xadd(self.key, {"worker": self.worker, "erasure": _encode(erasure)})

    def pending(self, limit: int = 100) -> list[tuple[str, Erasure | None]]:
        """Announcements not yet carried out by this worker, in order; None for this
        worker's own (done before announcing: mark them done in turn)."""
        done = self.client.hget(self._progress_key, "erased_up_to")
        start = "(" + done.decode() if isinstance(done, bytes) else "-"
        found: list[tuple[str, Erasure | None]] = []
        entries: Any = self.client.xrange(self.key, min=start, count=limit)
        for entry_id, fields in entries:
            name = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            mine = fields[b"worker"] == self.worker.encode()
            found.append((name, None if mine else _decode(fields[b"erasure"])))
        return found

    def done(self, entry_id: str) -> None:
        self.client.hset(self._progress_key, "erased_up_to", entry_id)
