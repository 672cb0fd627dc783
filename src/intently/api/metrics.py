"""Prometheus metrics: events accepted, duplicated and rejected, and request latency.

Each engine owns its registry, so several engines (tests, one per worker) never share
counters by accident.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from intently.act.wire import PlacementDecision
from intently.events.record import EventRecord
from intently.events.schema import EVENT_TAGS
from intently.events.validate import FieldError

# Latency buckets from 100 us to 5 s: ingest is expected in single milliseconds.
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1,
            0.25, 0.5, 1.0, 2.5, 5.0)  # fmt: skip


class Metrics:
    """The engine's metrics; also an `EventSink` that counts accepted events by type."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.accepted = Counter(
            "intently_events_accepted",
            "Events made durable, by type.",
            ["type"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "intently_events_duplicate",
            "Events acknowledged but not applied again (messageId seen within the window).",
            registry=self.registry,
        )
        self.rejected = Counter(
            "intently_events_rejected",
            "Events rejected, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "intently_http_request_duration_seconds",
            "HTTP request latency, by route, method and status.",
            ["route", "method", "status"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "intently_decisions",
            "Decisions made, by placement and outcome (decided, or degraded: the fallback "
            "answered).",
            ["placement", "outcome"],
            registry=self.registry,
        )
        self.decide_batches = Histogram(
            "intently_decide_batch_size",
            "Decides run back to back in one pass of the event loop (api/batching.py).",
            buckets=(1, 2, 4, 8, 16, 32),
            registry=self.registry,
        )
        self.log_seq = Gauge(
            "intently_event_log_last_seq", "Position of the last event written.",
            registry=self.registry,
        )  # fmt: skip
        self.shed = Counter(
            "intently_requests_shed",
            "Requests refused with 503 under load (api/shedding.py): 'deferrable' work "
            "(exports, dashboard, metrics) past the first limit, 'any' past the second.",
            ["kind"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "intently_requests_in_flight", "HTTP requests being served now.",
            registry=self.registry,
        )  # fmt: skip
        self._decisions_by: dict[tuple[str, bool], Counter] = {}
        self._accepted_by_type = {
            event_type: self.accepted.labels(tag) for event_type, tag in EVENT_TAGS.items()
        }

    def watch_store(
        self, lease_retries: Callable[[], float], failures: Callable[[], float],
        finished: Callable[[], float], unresolved: Callable[[], float],
    ) -> None:  # fmt: skip
        """A shared store's own counts (stores/redisstate.py), read at each scrape."""
        Gauge(
            "intently_redis_commits_finished",
            "Redis Cluster: commits this worker left unfinished (stopped, or Redis away in "
            "the middle) and finished later.",
            registry=self.registry,
        ).set_function(finished)
        Gauge(
            "intently_redis_commits_unresolved",
            "Redis Cluster: slots of an unfinished commit found leased by another worker "
            "when it was finished, after a stop longer than its leases (not written).",
            registry=self.registry,
        ).set_function(unresolved)
        Gauge(
            "intently_redis_lease_retries",
            "Times a worker found a profile's lease taken by another and tried again.",
            registry=self.registry,
        ).set_function(lease_retries)
        Gauge(
            "intently_redis_failures",
            "Calls that found Redis unreachable (decisions then answer with fallbacks).",
            registry=self.registry,
        ).set_function(failures)

    def watch(self, name: str, read: Callable[[], float]) -> None:
        """A gauge of `WATCHED`, read at each scrape from what a part of the engine keeps
        counting."""
        Gauge(name, WATCHED[name], registry=self.registry).set_function(read)

    def apply_many(self, records: Sequence[EventRecord]) -> None:
        # One increment per type and batch: each takes a lock.
        by_type: dict[type, int] = {}
        for record in records:
            kind = type(record.event)
            by_type[kind] = by_type.get(kind, 0) + 1
        for kind, count in by_type.items():
            self._accepted_by_type[kind].inc(count)
        if records:
            self.log_seq.set(records[-1].seq)

    def count_decisions(self, decisions: Sequence[PlacementDecision]) -> None:
        for decision in decisions:
            key = (decision.placement, decision.degraded is None)
            counter = self._decisions_by.get(key)
            if counter is None:  # labels() takes a lock and builds a key: once per pair
                outcome = "decided" if key[1] else "degraded"
                counter = self._decisions_by[key] = self.decisions.labels(key[0], outcome)
            counter.inc()

    def count_rejected(self, errors: Sequence[FieldError]) -> None:
        for error in errors:
            self.rejected.labels(error.reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


# Gauges read from the engine's parts at each scrape (`Metrics.watch`): counts since start.
WATCHED = {
    "intently_events_failed": "Logged events whose state step raised (a bug: each is "
    "logged with its position).",
    "intently_webhooks_dead_lettered": "Webhook deliveries given up on and written to "
    "webhooks-dead.jsonl.",
    "intently_experiment_records_dropped": "Experiment log records not written (a write "
    "failed, or PostgreSQL was away too long).",
    "intently_experiment_log_unavailable": "1 while the experiment log's PostgreSQL cannot "
    "be reached (records are held).",
    "intently_definitions_refused": "Other workers' definitions this worker cannot install "
    "(yet): tried again each second (each is logged).",
    "intently_archive_backlog": "Local log positions not yet shipped to PostgreSQL.",
    "intently_archive_available": "1 while the last shipment to PostgreSQL succeeded.",
    "intently_archive_rows_refused": "Rows PostgreSQL refused (bad data), left in the "
    "local logs and skipped.",
    "intently_state_behind": "1 while events wait in the log for the state store (it "
    "refused or could not be reached): events are answered 503.",
}


class LatencyMiddleware:
    """Times every request, labelled with its route template, not its raw path (which
    would make one series per id)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.latency.labels(template, scope["method"], str(status)).observe(
                time.perf_counter() - start
            )
