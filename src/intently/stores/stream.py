"""The event stream of a Redis deployment, for consumers downstream (exporters, trainers,
webhooks of your own): every event the workers apply, published in the same atomic write
as the state it changed (stores/redisstate.py), so the stream holds an event if and only
if the shared state does.

Entries are `worker`, `seq` (that worker's log position: per worker, entries are in
order) and `event` (the record as JSON: the event, its enrichment and its time). Read
them with a consumer group: each entry goes to one consumer of the group, stays pending
until acknowledged, and one left pending by a consumer that died is claimed by another
after `claim_idle_ms`.

    stream = EventStream(redis.Redis(), prefix="intently:")
    stream.join("exporter")
    for entry in stream.read("exporter", "exporter-1"):
        ...
        stream.ack("exporter", [entry.id])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import redis

from intently.stores.layout import shared_key


class StreamEntry(msgspec.Struct, frozen=True):
    id: str
    worker: str
    seq: int
    event: dict[str, Any]


_decode_event = msgspec.json.Decoder(dict[str, Any]).decode


class EventStream:
    def __init__(self, client: redis.Redis, prefix: str = "intently:") -> None:
        self.client = client
        self.key = shared_key(prefix, "events")

    def join(self, group: str, start: str = "0") -> None:
        """Create the consumer group (from the stream's start, or "$" for new entries
        only); joining an existing group changes nothing."""
        try:
            self.client.xgroup_create(self.key, group, id=start, mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def read(
        self, group: str, consumer: str, count: int = 100, block_ms: int | None = 1000,
        claim_idle_ms: int = 60_000,
    ) -> list[StreamEntry]:  # fmt: skip
        """Up to `count` entries for `consumer`: first those another consumer left
        pending for longer than `claim_idle_ms`, then new ones (waiting up to `block_ms`)."""
        claimed = self.client.xautoclaim(
            self.key, group, consumer, min_idle_time=claim_idle_ms, start_id="0-0", count=count
        )
        entries = _entries(claimed[1])
        if entries:
            return entries
        answer: Any = self.client.xreadgroup(group, consumer, {self.key: ">"}, count=count,
                                             block=block_ms)  # fmt: skip
        if not answer:
            return []
        if isinstance(answer, dict):  # RESP3: {stream: [entries]}
            return _entries(next(iter(answer.values())))
        return _entries(answer[0][1])

    def ack(self, group: str, ids: list[str]) -> int:
        return int(self.client.xack(self.key, group, *ids)) if ids else 0

    def pending(self, group: str) -> int:
        return int(self.client.xpending(self.key, group)["pending"])

    def length(self) -> int:
        return int(self.client.xlen(self.key))

    def erase(self, anonymous_ids: Sequence[str], user_ids: Sequence[str], page: int = 1000) -> int:
        """Delete a person's entries (an erasure), by the rule the event log erases by: an
        entry with one of their user ids, or one of their anonymous ids and no other
        person's user id (a shared device). Every entry is read, a page at a time; the
        stream is bounded (`stream_length`), so this is too. Blocking; returns how many."""
        # An entry is decoded only if its JSON holds one of the ids as JSON writes it.
        needles = [msgspec.json.encode(i)[1:-1] for i in (*anonymous_ids, *user_ids)]
        if not needles:
            return 0
        anonymous, users = set(anonymous_ids), set(user_ids)
        erased, start = 0, "-"
        while True:
            rows: Any = self.client.xrange(self.key, min=start, count=page)
            doomed = [
                entry_id
                for entry_id, fields in rows
                if any(n in fields.get(b"event", b"") for n in needles)
                and _theirs(_decode_event(fields[b"event"]).get("event", {}), anonymous, users)
            ]
            if doomed:
                erased += int(self.client.xdel(self.key, *doomed))
            if len(rows) < page:
                return erased
            start = "(" + as_text(rows[-1][0])


def _entries(rows: Any) -> list[StreamEntry]:
    found: list[StreamEntry] = []
    for entry_id, fields in rows:
        if not fields:  # trimmed away while pending
            continue
        worker, seq = as_text(fields[b"worker"]), int(fields[b"seq"])
        found.append(StreamEntry(as_text(entry_id), worker, seq, _decode_event(fields[b"event"])))
    return found


def _theirs(event: dict[str, Any], anonymous: set[str], users: set[str]) -> bool:
    user = event.get("userId")
    if user is not None:
        return user in users
    return event.get("anonymousId") in anonymous


def as_text(value: Any) -> str:
    """A reply's text: a stream entry's id, a field (the client does not decode replies)."""
    return value.decode() if isinstance(value, bytes) else str(value)
