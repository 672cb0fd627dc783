"""The learning bus: how workers that share Redis learn as one.

Each worker decides, attributes rewards and trains its bandit policies in memory. Alone,
a worker would learn only from its own decisions, and a click reaching another worker
than the one that made the decision would be lost. So every worker publishes what it
decided and every reward it attributed to one Redis stream, and applies what the others
published:

- a decision made elsewhere becomes an open decision here too (marked foreign), so an
  event applied here can be credited to it; only its maker closes its window and reports
  the zero reward of a decision that earned nothing;
- a product view or an order applied anywhere is learned by every worker's
  recommenders (session kNN, sequential rules, co-occurrence, trending, popularity);
- a reward attributed anywhere is learned by every worker's copy of the policy (once per
  decision: its first reward, as on one worker), and tells the maker the decision earned
  something (no zero reward at its close).

Policies are found by what defines them (placement id and the policy's definition), so a
worker builds the same policy from its own configuration. Messages are published in
batches every `interval` and read at the same pace: a reward is learned by every worker
within about two intervals (20 ms by default; the bound documented and tested is 100
ms, tests/test_learning_bus.py).

A worker that starts later begins from the latest snapshot of what was learned and reads
the stream from the point it reflects (learn/snapshot.py). For that, each worker's
messages are numbered (a batch carries the number of its first), and a bus is one
process's: a restarted worker is a new publisher, whose old messages it learns as any
other worker's.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import msgspec
import redis

from intently.stores.stream import as_text

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 0.02
# Entries are kept this long (then trimmed, approximately), a batch each (1-5 KB): past
# the other workers' next read (20 ms), they are what a worker starting from a snapshot
# (taken every 30 s) reads. Two minutes of two busy workers are about 12,000 entries
# (measured in bench/cluster.py: 100,000 entries held 0.32-0.47 GB of Redis).
STREAM_SECONDS = 120
# Messages kept while Redis is away; past this the oldest are dropped (and counted).
MAX_OUTBOX = 100_000
# Messages per stream entry: after an outage the outbox goes out in parts, each small
# enough to be sent within a call's timeout.
SEND_AT_MOST = 5_000


class Decided(msgspec.Struct, tag="d", array_like=True, gc=False):
    decision_id: str
    visitor: str
    placement: str
    items: list[str]
    at_ms: int
    reward: str
    aliases: list[str]
    # What the first reward teaches: the policy (placement id, its definition as JSON),
    # the action and the context vector; None for a decision no policy learns from.
    policy_key: bytes | None = None
    action: str | None = None
    vector: list[float] | None = None


class Rewarded(msgspec.Struct, tag="r", array_like=True, gc=False):
    decision_id: str
    placement: str
    item: str | None
    value: float
    at_ms: int


class Viewed(msgspec.Struct, tag="v", array_like=True, gc=False):
    """A product view (or an order's basket) the recommenders learn from."""

    device: str
    at_ms: int
    product: str | None
    basket: list[str] | None
    where: list[str | None]  # campaign, source, device kind, country


Message = Decided | Rewarded | Viewed


class Batch(msgspec.Struct, array_like=True):
    sent_ms: float  # the publisher's clock, for the staleness measure
    messages: list[Message]
    first: int = 0  # the number of its first message (its publisher's count)


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Batch).decode


class LearningBus:
    def __init__(
        self, client: redis.Redis, prefix: str, worker: str,
        apply: Callable[[Message], None], interval: float = INTERVAL_SECONDS,
    ) -> None:  # fmt: skip
        self.client = client
        self.key = f"{prefix}learning"
        self.worker = worker
        # This process as a publisher (a worker that restarts is a new one).
        self.identity = f"{worker}/{secrets.token_hex(4)}"
        self.apply = apply
        self.interval = interval
        # Messages are numbered as published; the outbox holds those numbered from
        # `_outbox_first` on, with no gap (it only loses its oldest), and what `exchange`
        # could not send goes back in front of it when it fits without a gap.
        self._outbox: list[Message] = []
        self._outbox_first = 0
        self._outgoing_first = 0  # the number of the first message taken out to send
        self.sent = 0  # messages published so far (the number of the next one)
        self._last_id = self._latest_id()
        self.through = self._last_id  # the last entry applied here (read: `_last_id`)
        self._read_through = self._last_id
        # A snapshot's maker and how many of its messages the snapshot holds.
        self._skip: tuple[bytes, int] | None = None
        self.published = 0
        self.received = 0
        self.dropped = 0  # messages dropped from a full outbox (a long Redis outage)
        self.lag_ms: list[float] = []  # publish-to-apply of the latest batches (bounded)

    def _latest_id(self) -> str:
        """Start after what is already there: a worker that starts learns the past from a
        snapshot (`start_from`) or its own logs (engine warm-up), not from the stream."""
        found: Any = self.client.xrevrange(self.key, count=1)
        if not found:
            return "0-0"
        return as_text(found[0][0])

    def holds(self, entry_id: str) -> bool:
        """Whether the stream still holds entry `entry_id` (and so all after it)."""
        return bool(self.client.xrange(self.key, min=entry_id, max=entry_id, count=1))

    def start_from(self, through: str, maker: str, own_sent: int) -> None:
        """Read from after `through`, skipping the messages of `maker` numbered below
        `own_sent` (a snapshot holds them: learn/snapshot.py)."""
        self._last_id = self.through = self._read_through = through
        self._skip = (maker.encode(), own_sent)

    def publish(self, message: Message) -> None:
        outbox = self._outbox
        outbox.append(message)
        self.sent += 1
        if len(outbox) > MAX_OUTBOX:
            half = MAX_OUTBOX // 2
            del outbox[:half]
            self._outbox_first += half
            self.dropped += half

    def pump(self) -> int:
        """Send what this worker published, apply what others did; how many applied.
        Raises `redis.RedisError` when Redis is away (the outbox is kept)."""
        outgoing = self.take_outbox()
        try:
            received = self.exchange(outgoing)
        finally:
            self.put_back(outgoing)
        return self.apply_received(received)

    # The app runs a pump in three steps, Redis's part off the event loop (a Redis that
    # hangs must not stall decisions), the others on it (where policies are used).

    def take_outbox(self) -> list[Message]:
        outgoing, self._outbox = self._outbox, []
        self._outgoing_first, self._outbox_first = self._outbox_first, self.sent
        return outgoing

    def exchange(self, outgoing: list[Message]) -> list[Batch]:
        """Send `outgoing` (removing what was sent: after an outage, in parts that each
        fit a call's timeout) and read the others' batches. Blocking; raises
        `redis.RedisError`, `outgoing` then holding what was not sent."""
        while outgoing:
            part = outgoing[:SEND_AT_MOST]
            batch = _encode(Batch(time.time() * 1000, part, self._outgoing_first))
            oldest = int(time.time() * 1000) - STREAM_SECONDS * 1000
            self.client.xadd(
                self.key, {"worker": self.identity, "batch": batch},
                minid=f"{oldest}-0", approximate=True,
            )  # fmt: skip
            del outgoing[: len(part)]
            self._outgoing_first += len(part)
            self.published += len(part)
        found: Any = self.client.xread({self.key: self._last_id}, count=100)
        received: list[Batch] = []
        me = self.identity.encode()
        for _, entries in found or ():
            for entry_id, fields in entries:
                self._last_id = as_text(entry_id)
                maker = fields[b"worker"]
                if maker == me:
                    continue
                received_batch = _decode(fields[b"batch"])
                if self._skip is not None and maker == self._skip[0]:
                    skipped = max(0, self._skip[1] - received_batch.first)
                    del received_batch.messages[:skipped]
                received.append(received_batch)
        self._read_through = self._last_id
        return received

    def put_back(self, unsent: list[Message]) -> None:
        """What `exchange` could not send goes out first next time (unless the outbox
        dropped its oldest meanwhile: these are older still, and dropped too)."""
        if not unsent:
            return
        if self._outgoing_first + len(unsent) != self._outbox_first:
            self.dropped += len(unsent)
            return
        self._outbox[:0] = unsent
        self._outbox_first = self._outgoing_first
        if len(self._outbox) > MAX_OUTBOX:
            dropped = len(self._outbox) - MAX_OUTBOX
            del self._outbox[:dropped]
            self._outbox_first += dropped
            self.dropped += dropped

    def apply_received(self, received: list[Batch]) -> int:
        applied = 0
        for batch in received:
            for message in batch.messages:
                try:
                    self.apply(message)
                except Exception:  # one bad message must not stop the others
                    log.exception("applying a learning message failed")
            applied += len(batch.messages)
            self.lag_ms.append(time.time() * 1000 - batch.sent_ms)
        if len(self.lag_ms) > 1000:
            del self.lag_ms[:-1000]
        self.received += applied
        self.through = self._read_through
        return applied
