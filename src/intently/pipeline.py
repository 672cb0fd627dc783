"""The one pipeline every event goes through, live or replayed (kappa architecture).

    validate (at the edge) -> stamp times -> deduplicate -> enrich -> append to the log
    (durable) -> apply to state -> acknowledge

HTTP requests and `intently replay` call the same `Pipeline.ingest`; there is no second
code path for history. State stages (sessions, profiles, segments, rewards) plug in as
`EventSink`s and see each event after it is durable and before it is acknowledged, so a
request that starts after the acknowledgement reads its effect.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from typing import NamedTuple, Protocol

import msgspec
from msgspec import Struct

from intently.clock import Clock, epoch_ms
from intently.events.enrich import Enricher
from intently.events.record import EventRecord, aware_utc, encode_record, stamp
from intently.events.schema import EVENT_TAGS, Consent, Context, Event
from intently.events.validate import FieldError
from intently.log.dedupe import MessageIdWindow
from intently.log.eventlog import EventLog, Row


class EventSink(Protocol):
    """A stage that updates state from durable events, in log order."""

    def apply_many(self, records: Sequence[EventRecord]) -> None: ...


# The futures of the requests waiting for one append: the one that made it, and any
# retry of its events that arrived while it was on its way.
_Waiters = list["asyncio.Future[None]"]


class ClientInfo(NamedTuple):
    """What the transport knows about the sender, used when the event's context lacks it."""

    ip: str | None = None
    user_agent: str | None = None
    # Purposes the request's privacy signals refuse (Sec-GPC, DNT), as configured.
    refused: tuple[str, ...] = ()


class IngestResult(Struct, omit_defaults=True):
    """The answer to an ingest: how many events were accepted (newly stored), how many
    were duplicates (acknowledged, not applied again) and which were rejected, and why."""

    accepted: int
    duplicates: int = 0
    rejected: list[FieldError] = msgspec.field(default_factory=list)


log = logging.getLogger(__name__)
_NO_CLIENT = ClientInfo()


def _ms(moment: datetime) -> int:
    return epoch_ms(moment)


class Pipeline:
    """Ingest events: durable, deduplicated, enriched and applied before acknowledged."""

    def __init__(
        self,
        log: EventLog,
        enricher: Enricher,
        clock: Clock,
        dedupe: MessageIdWindow,
        sinks: Sequence[EventSink] = (),
    ) -> None:
        self.log = log
        self.enricher = enricher
        self.clock = clock
        self.dedupe = dedupe
        self.sinks = list(sinks)
        # messageId -> the append that is making it durable; a retry that arrives meanwhile
        # is acknowledged only once that append has succeeded.
        self._in_flight: dict[str, _Waiters] = {}

    async def ingest(
        self,
        events: Sequence[tuple[int | None, Event]],
        client: ClientInfo = _NO_CLIENT,
        *,
        replay: bool = False,
    ) -> IngestResult:
        """Ingest decoded events. With `replay`, an event's own `receivedAt` is kept (it
        is history); live events are received now."""
        now = self.clock.now()
        now_ms = _ms(now)
        loop = asyncio.get_running_loop()
        records: list[EventRecord] = []
        rows: list[Row] = []
        waits: list[asyncio.Future[None]] = []
        duplicates = 0
        marked: list[str] = []
        add_id = self.dedupe.add
        enrich = self.enricher
        try:
            for _, event in events:
                received_at, received_ms = now, now_ms
                if replay and event.received_at is not None:
                    # History keeps its own receive time; one without an offset is UTC.
                    received_at = aware_utc(event.received_at)
                    received_ms = _ms(received_at)
                stamp(event, received_at)
                message_id = event.message_id
                assert message_id is not None
                assert event.timestamp is not None
                if not add_id(message_id, received_ms, expire=not replay):
                    duplicates += 1
                    if (pending := self._in_flight.get(message_id)) is not None:
                        waiter = loop.create_future()
                        pending.append(waiter)
                        waits.append(waiter)
                    continue
                marked.append(message_id)
                if client.refused:
                    _refuse(event, client.refused)
                at_ms = _ms(event.timestamp)
                record = EventRecord(
                    event, enrich(event, client.ip, client.user_agent, at_ms), at_ms=at_ms
                )
                records.append(record)
                rows.append(
                    (
                        message_id,
                        received_ms,
                        at_ms,
                        EVENT_TAGS[type(event)],
                        event.anonymous_id,
                        event.user_id,
                        encode_record(record),
                    )
                )
        except BaseException:
            # Nothing of this call is stored: forget its ids, or a retry would be taken
            # for a duplicate of an event that was never made durable.
            for message_id in marked:
                self.dedupe.discard(message_id)
            raise
        if rows:
            waiters: _Waiters = [loop.create_future()]
            try:
                self.log.append_then(rows, partial(self._committed, records, marked, waiters))
            except BaseException:
                for message_id in marked:
                    self.dedupe.discard(message_id)
                raise
            for message_id in marked:
                self._in_flight[message_id] = waiters
            waits.append(waiters[0])
        # Each waiter belongs to this request alone: a request cancelled while it waits
        # (client gone, shutdown) cancels only its waiter, never the append, which the log
        # goes on to commit and the state stages go on to apply.
        if len(waits) == 1:
            await waits[0]
        elif waits:  # several appends (retries of events in flight): every outcome read
            await asyncio.gather(*waits)
        return IngestResult(accepted=len(records), duplicates=duplicates)

    def _committed(
        self,
        records: list[EventRecord],
        ids: list[str],
        waiters: _Waiters,
        first_seq: int,
        error: BaseException | None,
    ) -> None:
        """Runs on the event loop once an append is settled, in commit order, before any
        request waiting for it resumes, whether or not those requests are still there."""
        in_flight = self._in_flight
        for message_id in ids:
            in_flight.pop(message_id, None)
        try:
            if error is not None:
                # Not stored: forget the ids, so a retry is stored.
                for message_id in ids:
                    self.dedupe.discard(message_id)
                return
            for offset, record in enumerate(records):
                record.seq = first_seq + offset
            for sink in self.sinks:
                try:
                    sink.apply_many(records)
                except Exception:  # a bug in one sink: the others still see the events
                    log.exception("%s failed on log positions %d-%d", type(sink).__name__,
                                  first_seq, first_seq + len(records) - 1)  # fmt: skip
        finally:
            for waiter in waiters:
                if waiter.done():  # its request was cancelled
                    continue
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)

    def prime_dedupe(self, from_ms: int, to_ms: int) -> int:
        """Load the messageIds the log holds for [from_ms, to_ms] into the window."""
        return self.dedupe.load(self.log.message_ids(from_ms, to_ms))


def _refuse(event: Event, purposes: tuple[str, ...]) -> None:
    """Record the request's privacy signal on the event itself, so the log (and every
    replay) holds the refusal, not only this request."""
    context = event.context if event.context is not None else Context()
    event.context = context
    if context.consent is None:
        context.consent = Consent()
    for purpose in purposes:
        context.consent.category_preferences[purpose] = False
