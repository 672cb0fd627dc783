"""Load shedding: under a spike, non-critical work is refused first, and nothing queues
without bound.

Requests in flight are counted. Past `shed_at`, work that can wait is refused with 503
and Retry-After: exports, the dashboard's JSON and pages, experiment results, the
OpenAPI document, metrics scrapes. Past `refuse_at`, every request is refused the same
way, events included (the tag and the SDKs retry them with the same messageIds; nothing
is dropped silently, and a request never waits in a queue that grows with the spike).
Decisions, events, the tag and the health check are critical: they are refused only in
the second case. Segment and trigger webhooks have their own bounded queue, which
dead-letters to disk when full (segments/webhooks.py).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from intently.api.metrics import Metrics
from intently.api.problems import problem

# Paths that serve visitors now: kept until the hard limit.
_CRITICAL_PREFIXES = (
    "/v1/events", "/v1/decide", "/v1/context", "/v1/render/", "/sdk/", "/healthz", "/demo",
)  # fmt: skip


def critical(path: str) -> bool:
    if path.endswith("/export"):  # a person's export: heavy, can wait
        return False
    return path.startswith(_CRITICAL_PREFIXES)


class SheddingMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, shed_at: int, refuse_at: int) -> None:
        self.app = app
        self.shed_at = shed_at
        self.refuse_at = refuse_at
        self.in_flight = 0
        metrics.in_flight.set_function(lambda: self.in_flight)
        self._shed = metrics.shed.labels("deferrable")
        self._refused = metrics.shed.labels("any")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        busy = self.in_flight
        if busy >= self.shed_at:
            if busy >= self.refuse_at:
                self._refused.inc()
                await _overloaded(scope, receive, send, "the server is at capacity")
                return
            if not critical(scope["path"]):
                self._shed.inc()
                busy_detail = "the server is busy serving visitors; this can wait"
                await _overloaded(scope, receive, send, busy_detail)
                return
        self.in_flight = busy + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


async def _overloaded(scope: Scope, receive: Receive, send: Send, detail: str) -> None:
    answer = problem(
        503, "overloaded", f"{detail}; retry after the Retry-After seconds",
        headers={"Retry-After": "1"},
    )  # fmt: skip
    await answer(scope, receive, send)
