"""Segment webhooks: entries and exits POSTed to the segment's URL, signed, retried with
backoff, dead-lettered after the last attempt, and never in the way of ingestion.

Ingestion only puts a delivery on a bounded in-memory queue (no I/O, no waiting); worker
tasks send it. A failure that may pass (network error, timeout, 408, 429, 5xx) is retried
after 0.5 s, 1 s, 2 s, ... (capped at 60 s, with jitter) up to `max_attempts`; a failure
that will not pass (another 4xx) is not retried. Whatever is not delivered, including
what is queued at shutdown or refused because the queue is full, is appended to
`webhooks-dead.jsonl` in the data dir with the reason: nothing is dropped silently.

Signature (as Stripe and others do it): `Intently-Signature: t=<unix seconds>,v1=<hex>`
where `v1 = HMAC-SHA256(secret, "<t>.<body>")`. Receivers recompute it, compare in
constant time, and reject stale `t` to stop replays. `Intently-Delivery` is a stable id
(profile, segment, direction, log position) for de-duplicating retries.

Delivery is at least once while the server runs. Transitions re-derived at start-up from
log events the state store had not yet persisted (at most a second's worth after a
crash) are not re-sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from pathlib import Path

import httpx
import msgspec
from msgspec import Struct

from intently.segments.membership import Transition
from intently.segments.registry import Segment

log = logging.getLogger(__name__)

_RETRYABLE = frozenset({408, 425, 429})
_MAX_BACKOFF = 60.0


class Delivery(Struct):
    id: str
    url: str
    body: bytes
    attempts: int = 0
    last_error: str | None = None


class _Payload(Struct):
    id: str
    type: str
    segment: str
    profile_id: str
    at_ms: int
    seq: int


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


class WebhookDispatcher:
    def __init__(
        self,
        secret: str | None,
        dead_letter_path: Path,
        *,
        max_attempts: int = 6,
        timeout_seconds: float = 5.0,
        backoff_seconds: float = 0.5,
        queue_size: int = 10_000,
        workers: int = 4,
    ) -> None:
        self.secret = secret
        self.dead_letter_path = dead_letter_path
        self.max_attempts = max_attempts
        self.timeout_seconds = timeout_seconds
        self.backoff_seconds = backoff_seconds
        self.workers = workers
        self.queue: asyncio.Queue[Delivery] | None = None
        self._queue_size = queue_size
        self._tasks: list[asyncio.Task[None]] = []
        # Deliveries waiting for their next attempt, by the timer that will requeue them.
        self._waiting: dict[asyncio.TimerHandle, Delivery] = {}
        self._client: httpx.AsyncClient | None = None
        self._random = random.Random(0x5EED)
        self.delivered = 0
        self.failed_attempts = 0
        self.dead = 0

    @property
    def running(self) -> bool:
        return self.queue is not None

    def start(self) -> None:
        """Start the workers on the running event loop."""
        self.queue = asyncio.Queue(self._queue_size)
        self._client = httpx.AsyncClient(timeout=self.timeout_seconds, follow_redirects=False)
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    async def stop(self) -> None:
        """Stop; what is still queued or waiting to retry is dead-lettered."""
        for handle in self._waiting:
            handle.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pending = list(self._waiting.values())
        self._waiting.clear()
        if self.queue is not None:
            while not self.queue.empty():
                pending.append(self.queue.get_nowait())
        for delivery in pending:
            self._dead_letter(delivery, "shutdown before delivery")
        if self._client is not None:
            await self._client.aclose()
        self.queue = None

    # -- producing ---------------------------------------------------------------------------

    def enqueue(self, segment: Segment, transition: Transition) -> None:
        """Called by ingestion: never blocks, never raises for a delivery problem."""
        if segment.webhook is None:
            return
        direction = "entered" if transition.entered else "exited"
        delivery_id = f"{transition.profile_id}:{transition.segment}:{direction}:{transition.seq}"
        payload = _Payload(
            delivery_id,
            f"segment.{direction}",
            transition.segment,
            transition.profile_id,
            transition.at_ms,
            transition.seq,
        )
        self.send(Delivery(delivery_id, segment.webhook, msgspec.json.encode(payload)))

    def send(self, delivery: Delivery) -> None:
        """Queue any delivery (segment transitions, triggered placements: act/triggers.py)
        for signing, sending, retrying and dead-lettering; never blocks, never raises."""
        if self.queue is None:
            self._dead_letter(delivery, "webhooks are not running")
            return
        try:
            self.queue.put_nowait(delivery)
        except asyncio.QueueFull:
            self._dead_letter(delivery, "queue full")

    # -- delivering ---------------------------------------------------------------------------

    async def _work(self) -> None:
        assert self.queue is not None
        while True:
            delivery = await self.queue.get()
            try:
                await self._attempt(delivery)
            except asyncio.CancelledError:
                self._dead_letter(delivery, "shutdown during delivery")
                raise
            except Exception:  # a bug here must not kill the worker
                log.exception("webhook delivery %s failed unexpectedly", delivery.id)
                self._dead_letter(delivery, "internal error")

    async def _attempt(self, delivery: Delivery) -> None:
        assert self._client is not None
        delivery.attempts += 1
        headers = {
            "Content-Type": "application/json",
            "Intently-Delivery": delivery.id,
            "User-Agent": "intently-webhooks",
        }
        if self.secret is not None:
            headers["Intently-Signature"] = signature(self.secret, int(time.time()), delivery.body)
        retry: bool
        try:
            response = await self._client.post(delivery.url, content=delivery.body, headers=headers)
        except httpx.HTTPError as exc:
            delivery.last_error = f"{type(exc).__name__}: {exc}"
            retry = True
        else:
            if 200 <= response.status_code < 300:
                self.delivered += 1
                return
            delivery.last_error = f"HTTP {response.status_code}"
            retry = response.status_code in _RETRYABLE or response.status_code >= 500
        self.failed_attempts += 1
        if not retry:
            self._dead_letter(delivery, f"refused: {delivery.last_error}")
        elif delivery.attempts >= self.max_attempts:
            self._dead_letter(delivery, f"gave up after {delivery.attempts} attempts")
        else:
            self._schedule_retry(delivery)

    def _schedule_retry(self, delivery: Delivery) -> None:
        delay = min(_MAX_BACKOFF, self.backoff_seconds * 2 ** (delivery.attempts - 1))
        delay *= 0.8 + 0.4 * self._random.random()  # spread retries of many deliveries
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def requeue() -> None:
            self._waiting.pop(handle, None)
            assert self.queue is not None
            try:
                self.queue.put_nowait(delivery)
            except asyncio.QueueFull:
                self._dead_letter(delivery, "queue full")

        handle = loop.call_later(delay, requeue)
        self._waiting[handle] = delivery

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        self.dead += 1
        record = {
            "id": delivery.id,
            "url": delivery.url,
            "reason": reason,
            "attempts": delivery.attempts,
            "last_error": delivery.last_error,
            "body": msgspec.json.decode(delivery.body),
            "dead_at_ms": int(time.time() * 1000),
        }
        log.warning("webhook %s dead-lettered: %s", delivery.id, reason)
        with self.dead_letter_path.open("ab") as handle:
            handle.write(msgspec.json.encode(record) + b"\n")
