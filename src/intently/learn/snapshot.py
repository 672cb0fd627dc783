"""What the workers learned, kept in Redis: a snapshot, and the learning stream since.

Every worker keeps the policies' parameters and the recommenders' statistics in memory,
where decisions read them in microseconds, and every worker learns every reward and view
of every worker through the learning stream (learn/bus.py): its copy is at most a pump
or two behind (20-40 ms; the bound tested is 100 ms). What a worker starting later lacks
is the past. So, every 30 s (`learning_snapshot_seconds`), one worker (whoever takes the
turn) writes what it has learned to Redis, with the point of the stream it reflects:

- `through`: the last stream entry it had applied; everything after it is still to do;
- `maker` and `own_sent`: the maker applies its own messages when it publishes them,
  before they reach the stream, so of its entries after `through` the messages numbered
  below `own_sent` are already in the snapshot and are skipped;
- `erased_through`: the last erasure announcement carried out in it. Whoever loads it
  carries out the later ones in memory at once; an announcement deletes the snapshot, and
  a snapshot whose maker has not carried out every announcement is refused (one script:
  a person erased meanwhile never comes back from Redis).

A worker starting loads the snapshot if its `through` is still in the stream (trimmed
after `STREAM_SECONDS`) and then reads the stream from there: it starts with what every
worker knows, not only what its own logs hold. Without one (the first worker, or Redis
emptied) it warms from its own logs, as a lone worker does (engine).

The open decisions go in too: a click reaching the new worker is credited to a decision
made before it started, and the policy learns it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
import redis

from intently.learn.bus import Decided
from intently.stores.layout import shared_key

log = logging.getLogger(__name__)

FORMAT = 1


class LearnedPolicy(msgspec.Struct, array_like=True):
    placement: str
    key: bytes  # its definition (PolicySpec as JSON): a loader builds the same policy
    learned: dict[str, Any]


class PendingReward(msgspec.Struct, array_like=True):
    """A decision whose window closed here unrewarded, made by another worker, whose
    maker may still report its reward: the policy learns that reward when it comes."""

    decision_id: str
    placement: str
    key: bytes
    action: str
    vector: list[float] | None
    at_ms: int


class Snapshot(msgspec.Struct):
    format: int
    made_ms: float
    maker: str  # the learning bus identity of the worker that made it
    through: str  # the last learning stream entry applied in it
    own_sent: int  # the maker's messages numbered below this are in it
    erased_through: str | None  # the last erasure announcement carried out in it
    policies: list[LearnedPolicy]
    recommenders: dict[str, Any]
    open: list[Decided]
    pending: list[PendingReward]


_encode = msgspec.msgpack.Encoder().encode


class _Format(msgspec.Struct):
    """A snapshot's format alone (the rest is skipped over, not decoded): checked before
    the whole is decoded as this version's."""

    format: int | None = None


def decode(body: bytes) -> Snapshot:
    """Raises ValueError for anything but a snapshot of this format."""
    try:
        found = msgspec.msgpack.decode(body, type=_Format).format
        if found != FORMAT:
            raise ValueError(f"a snapshot of format {found!r}, not {FORMAT}")
        return msgspec.msgpack.decode(body, type=Snapshot)
    except msgspec.DecodeError as error:
        raise ValueError(f"not a snapshot: {error}") from None


def encode(snapshot: Snapshot) -> bytes:
    return _encode(snapshot)


# Write ARGV[1] to KEYS[1] unless an erasure was announced in KEYS[2] after ARGV[2] (the
# last one the snapshot carried out; "" for none): its person may be in the snapshot.
_WRITE = """
local start = '-'
if ARGV[2] ~= '' then start = '(' .. ARGV[2] end
if #redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', 1) > 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


class SnapshotStore:
    """The snapshot's keys in Redis (beside the learning stream)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.key = shared_key(prefix, "learning-snapshot")
        self.turn_key = f"{prefix}learning:snapshot-turn"
        self.erasures_key = shared_key(prefix, "erasures")
        self._write = client.register_script(_WRITE)

    def take_turn(self, seconds: float, worker: str) -> bool:
        """Whether this worker writes the next snapshot: one per `seconds` in all."""
        return bool(self.client.set(self.turn_key, worker, nx=True, px=int(seconds * 1000)))

    def write(self, body: bytes, erased_through: str | None) -> bool:
        """False when refused: an erasure was announced that the snapshot lacks."""
        return bool(self._write(keys=[self.key, self.erasures_key],
                                args=[body, erased_through or ""]))  # fmt: skip

    def read(self) -> Snapshot | None:
        """The latest snapshot, or None (none, or one this version cannot read: logged)."""
        body = self.client.get(self.key)
        if body is None:
            return None
        assert isinstance(body, bytes)
        try:
            return decode(body)
        except ValueError as error:
            log.warning("the learning snapshot in Redis is not used: %s", error)
            return None


def age_seconds(snapshot: Snapshot) -> float:
    return max(0.0, time.time() - snapshot.made_ms / 1000)
