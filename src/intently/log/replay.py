"""Replay a JSONL file of historical events through the live pipeline, and export the log.

A replayed line goes through exactly what a live request goes through (decode, validate,
stamp, deduplicate, enrich, append, apply), except that an event's own `receivedAt` is
kept. Lines are Segment events, or lines written by `intently export events`, which are
Segment events with two extra keys (`seq`, `enrichment`) that replay ignores and recomputes.
Replaying the same file twice stores its events once: before each chunk, the messageIds
the log holds within the dedupe window of the chunk's receive times are loaded. That is
exact as long as those ids fit in the window's `max_entries` (2,000,000 by default).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

import msgspec

from intently.clock import epoch_ms
from intently.events.record import record_as_builtins
from intently.events.schema import Event
from intently.events.validate import FieldError, decode_event
from intently.log.eventlog import EventLogReader
from intently.pipeline import Pipeline

CHUNK = 500


@dataclass
class ReplayReport:
    lines: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, FieldError]] = field(default_factory=list)


def replay_lines(
    pipeline: Pipeline,
    lines: Iterable[bytes],
    progress: Callable[[int], None] = lambda _: None,
) -> ReplayReport:
    """Feed JSONL lines through `pipeline`; `progress` is told the bytes consumed."""
    return asyncio.run(_replay(pipeline, lines, progress))


async def _replay(
    pipeline: Pipeline, lines: Iterable[bytes], progress: Callable[[int], None]
) -> ReplayReport:
    report = ReplayReport()
    primed: tuple[int, int] | None = None
    chunk: list[tuple[int | None, Event]] = []
    consumed = 0
    for number, line in enumerate(lines, start=1):
        consumed += len(line)
        if not line.strip():
            continue
        report.lines += 1
        event, error = decode_event(line, None)
        if error is not None:
            report.rejected.append((number, error))
            continue
        assert event is not None
        chunk.append((number, event))
        if len(chunk) >= CHUNK:
            primed = _prime(pipeline, chunk, primed)
            await _ingest(pipeline, chunk, report)
            progress(consumed)
            consumed = 0
            chunk = []
    if chunk:
        _prime(pipeline, chunk, primed)
        await _ingest(pipeline, chunk, report)
    progress(consumed)
    return report


async def _ingest(
    pipeline: Pipeline, chunk: list[tuple[int | None, Event]], report: ReplayReport
) -> None:
    result = await pipeline.ingest(chunk, replay=True)
    report.accepted += result.accepted
    report.duplicates += result.duplicates


def _prime(
    pipeline: Pipeline, chunk: list[tuple[int | None, Event]], primed: tuple[int, int] | None
) -> tuple[int, int] | None:
    """Load the log's messageIds around this chunk's receive times into the dedupe window,
    so history replayed into a data dir that already holds it is not stored twice."""
    times = [_ms(event.received_at) for _, event in chunk if event.received_at is not None]
    if not times:
        return primed
    window = pipeline.dedupe.window_ms
    low, high = min(times) - window, max(times) + window
    if primed is None:
        pipeline.prime_dedupe(low, high)
        return (low, high)
    if low < primed[0]:
        pipeline.prime_dedupe(low, primed[0])
    if high > primed[1]:
        pipeline.prime_dedupe(primed[1], high)
    return (min(low, primed[0]), max(high, primed[1]))


def _ms(moment: datetime) -> int:
    return epoch_ms(moment)


_encode = msgspec.json.Encoder().encode


def export_events(
    log: EventLogReader, out: IO[bytes], since_ms: int | None = None, after_seq: int = 0
) -> int:
    """Write the log as JSONL (one Segment event per line, plus `seq` and `enrichment`)."""
    count = 0
    for line in export_lines(log, since_ms, after_seq):
        out.write(line)
        count += 1
    return count


def export_lines(log: EventLogReader, since_ms: int | None, after_seq: int) -> Iterator[bytes]:
    for row in log.scan(since_seq=after_seq, since_ms=since_ms):
        record: dict[str, Any] = record_as_builtins(row.body)
        event: dict[str, Any] = record["event"]
        event["seq"] = row.seq
        event["enrichment"] = record["enrichment"]
        yield _encode(event) + b"\n"
