"""The Python client, for server-rendered pages: send events, ask for decisions, render
placements, without ever letting the engine's trouble become the page's.

    with intently.Client("http://127.0.0.1:8000", "wk_...") as engine:
        engine.track("Product Viewed", {"product_id": "p1"}, anonymous_id=visitor)
        found = engine.decide(["home_hero"], anonymous_id=visitor,
                              fallback={"home_hero": "<p>Welcome</p>"})
        hero = found["home_hero"]
        if hero.decided:      # the engine chose content: hero.items, hero.decision_id
            ...
        else:                 # show the caller's default: hero.default (hero.degraded says why)
            ...

Events are batched: `track`, `page` and `identify` validate the event (a mistake raises
`ValueError` at once, naming the field), give it a messageId and a timestamp, and queue
it. The queue is sent when it holds `batch_size` events (1: every event at once), by
`flush()`, on `close()` (the context manager closes), and ahead of the next `decide`,
which uses `POST /v1/context` so that its decisions already see those events. Events
that could not be sent (timeout, connection error, 5xx) stay queued for the next send;
their messageIds make a resend harmless. The queue holds at most `max_queue` events; past
it the oldest are dropped and counted (`dropped`), so a dead engine costs bounded memory.

`decide` never raises for the engine's trouble: on a timeout, a connection error, a 5xx
(or 408/429) or an answer it cannot read, it returns every placement's `fallback` (the
caller's default content), each marked `degraded` with the reason, and so does `render`.
A 4xx is the caller's mistake (an unknown placement, a bad key, a malformed request) and
raises `IntentlyError` carrying the problem details. `timeout` (seconds, default 0.1)
bounds each phase of a request (connect, send, wait for the answer); a connection that
fails before reaching the engine is tried again `retries` times within the same budget.
Event sends use `event_timeout` (default 2 s): they are not in the page's way when sent
by `flush()` after the response, and a decide's own budget covers the events it carries.

`Client` is synchronous and thread-safe; `AsyncClient` has the same methods as
coroutines. Both share the request building and answer reading below.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx
import msgspec
from msgspec import Struct

from intently._version import __version__
from intently.act.templates import compile_template
from intently.act.wire import DecideBody, DecidedItem, PlacementAsk, PlacementDecision, PolicyRef
from intently.events.schema import Event

log = logging.getLogger(__name__)

_LIBRARY = {"name": "intently-python", "version": __version__}
_MAX_BATCH = 500  # the engine's batch limit
# Statuses that say "not now", not "you are wrong": the caller gets the fallback.
_TRANSIENT = frozenset({408, 425, 429})


class IntentlyError(Exception):
    """The engine refused the request (4xx): the caller's mistake. `problem` holds the
    RFC 9457 problem details the engine sent (`detail`, `pointer`, `errors`, ...)."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        self.detail = str(problem.get("detail") or problem.get("title") or f"HTTP {status}")
        self.pointer: str | None = problem.get("pointer")
        where = f" at {self.pointer}" if self.pointer else ""
        super().__init__(f"HTTP {status}: {self.detail}{where}")


class Decision(Struct, kw_only=True):
    """One placement's answer. `decided`: the engine chose content (`items`); otherwise
    show `default` (the caller's fallback for the placement). `degraded` says why the
    engine's fallback, or the caller's, answered."""

    placement: str
    decision_id: str | None = None
    items: list[DecidedItem] = msgspec.field(default_factory=list)
    policy: PolicyRef | None = None
    reasons: list[str] = msgspec.field(default_factory=list)
    personalized: bool = False
    arm: str | None = None
    degraded: str | None = None
    template: str | None = None  # with decide(..., templates=True)
    features: dict[str, Any] | None = None  # with explain=True (secret key)
    default: Any = None  # the caller's fallback content for this placement

    @property
    def decided(self) -> bool:
        return bool(self.items)

    def html(self) -> str | None:
        """The decision through its placement's template (asked with `templates=True`),
        values escaped as the browser tag does; None without a template or items."""
        if self.template is None or not self.items:
            return None
        return compile_template(self.template).render(msgspec.to_builtins(self))


class Decisions(Struct):
    """The answer to `decide`, by placement. `degraded` is set when the engine could not
    be asked at all (then every decision is the caller's fallback)."""

    decisions: list[Decision]
    degraded: str | None = None

    def __getitem__(self, placement: str) -> Decision:
        for decision in self.decisions:
            if decision.placement == placement:
                return decision
        raise KeyError(placement)

    def __iter__(self) -> Iterator[Decision]:
        return iter(self.decisions)

    def __len__(self) -> int:
        return len(self.decisions)


class Rendered(Struct):
    """The answer to `render`: the placement's HTML, or the caller's fallback HTML."""

    html: str
    decision_id: str | None = None
    degraded: str | None = None

    def __str__(self) -> str:
        return self.html


class _ContextAnswer(Struct):
    decisions: list[PlacementDecision]
    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict[str, Any]] = msgspec.field(default_factory=list)
    events_error: str | None = None


class _EventsAnswer(Struct):
    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict[str, Any]] = msgspec.field(default_factory=list)


_context_decoder = msgspec.json.Decoder(_ContextAnswer)
_events_decoder = msgspec.json.Decoder(_EventsAnswer)
_encode = msgspec.json.Encoder().encode

Placements = Sequence[str | PlacementAsk]


# -- shared logic ---------------------------------------------------------------------------


class _Core:
    """What both clients do that is not I/O: events, queue, requests, answers."""

    def __init__(
        self, base_url: str, write_key: str, timeout: float, retries: int,
        event_timeout: float, batch_size: int, max_queue: int,
    ) -> None:  # fmt: skip
        if timeout <= 0 or event_timeout <= 0:
            raise ValueError("timeout and event_timeout must be > 0 seconds")
        if not 1 <= batch_size <= _MAX_BATCH:
            raise ValueError(f"batch_size must be 1 to {_MAX_BATCH}")
        if retries < 0 or max_queue < 1:
            raise ValueError("retries must be >= 0 and max_queue >= 1")
        self.base_url = base_url.rstrip("/")
        self.write_key = write_key
        self.timeout = timeout
        self.retries = retries
        self.event_timeout = event_timeout
        self.batch_size = batch_size
        self.max_queue = max_queue
        self.queue: deque[dict[str, Any]] = deque()
        self.lock = threading.Lock()
        self.headers = {
            "Authorization": f"Bearer {write_key}",
            "Content-Type": "application/json",
            "User-Agent": f"intently-python/{__version__}",
        }
        self.sent = 0  # events the engine acknowledged
        self.dropped = 0  # events dropped from a full queue
        # After a failed send, `track` stops sending on its own until this moment
        # (exponential backoff, 1 s to 60 s): a stalled engine must not make every
        # `track` of the caller's page wait for the event timeout. `flush` still tries.
        self.retry_at = 0.0
        self.failures = 0
        self.rejected = 0  # events the engine refused (logged with the reason)

    # events

    def event(
        self, kind: str, fields: dict[str, Any], anonymous_id: str | None,
        user_id: str | None, context: Mapping[str, Any] | None,
        timestamp: datetime | None, message_id: str | None,
    ) -> dict[str, Any]:  # fmt: skip
        """A validated event, ready to queue; raises `ValueError` naming the field."""
        if anonymous_id is None and user_id is None:
            raise ValueError("name the visitor: anonymous_id or user_id")
        event: dict[str, Any] = {"type": kind, **fields}
        event["messageId"] = message_id or str(uuid.uuid4())
        event["timestamp"] = (timestamp or datetime.now(UTC)).isoformat()
        if anonymous_id is not None:
            event["anonymousId"] = anonymous_id
        if user_id is not None:
            event["userId"] = user_id
        event["context"] = {**(context or {}), "library": _LIBRARY}
        try:
            msgspec.convert(event, Event, strict=False)
        except msgspec.ValidationError as error:
            raise ValueError(f"invalid {kind} event: {error}") from None
        return event

    def enqueue(self, event: dict[str, Any]) -> bool:
        """Queue `event`; whether a batch is ready to send."""
        with self.lock:
            self.queue.append(event)
            while len(self.queue) > self.max_queue:
                self.queue.popleft()
                self.dropped += 1
            return len(self.queue) >= self.batch_size and time.monotonic() >= self.retry_at

    def take(self, limit: int = _MAX_BATCH) -> list[dict[str, Any]]:
        with self.lock:
            return [self.queue.popleft() for _ in range(min(limit, len(self.queue)))]

    def put_back(self, events: list[dict[str, Any]], why: str) -> None:
        """Events not acknowledged go back to the front of the queue, in order."""
        log.warning("intently: %d events not sent (%s); kept for the next send", len(events), why)
        with self.lock:
            self.failures += 1
            self.retry_at = time.monotonic() + min(60.0, 2.0 ** (self.failures - 1))
            self.queue.extendleft(reversed(events))
            while len(self.queue) > self.max_queue:
                self.queue.popleft()
                self.dropped += 1

    def events_sent(self, status: int, content: bytes, events: list[dict[str, Any]]) -> bool:
        """Read the answer to a batch; whether it was acknowledged (else re-queued).
        Raises `IntentlyError` for a 4xx."""
        if status >= 500 or status in _TRANSIENT:
            self.put_back(events, f"HTTP {status}")
            return False
        if status >= 400:
            raise _error(status, content)
        try:
            answer = _events_decoder.decode(content)
        except msgspec.DecodeError:
            self.put_back(events, "an answer that is not an ingest result")
            return False
        self.acknowledged(answer.accepted + answer.duplicates, answer.rejected)
        return True

    def acknowledged(self, count: int, rejected: list[dict[str, Any]]) -> None:
        self.failures, self.retry_at = 0, 0.0
        self.sent += count
        self.rejected += len(rejected)
        for error in rejected:
            log.warning("intently rejected an event: %s", error.get("detail"))

    def batch_body(self, events: list[dict[str, Any]]) -> bytes:
        return _encode({"batch": events, "sentAt": datetime.now(UTC).isoformat()})

    # decisions

    def decide_body(
        self, placements: Placements, anonymous_id: str | None, user_id: str | None,
        context: Mapping[str, Any] | None, explain: bool, templates: bool,
        events: list[dict[str, Any]],
    ) -> bytes:  # fmt: skip
        """The body of `POST /v1/context`; raises `ValueError` for a bad request."""
        asks = [
            msgspec.to_builtins(p) if isinstance(p, PlacementAsk) else {"id": p} for p in placements
        ]
        body: dict[str, Any] = {"placements": asks, "context": dict(context or {})}
        if anonymous_id is not None:
            body["anonymousId"] = anonymous_id
        if user_id is not None:
            body["userId"] = user_id
        if explain:
            body["explain"] = True
        if templates:
            body["templates"] = True
        if anonymous_id is None and user_id is None:
            raise ValueError("name the visitor: anonymous_id or user_id")
        try:
            msgspec.convert(body, DecideBody)
        except msgspec.ValidationError as error:
            raise ValueError(f"invalid decide request: {error}") from None
        if events:
            body["events"] = events
            body["sentAt"] = datetime.now(UTC).isoformat()
        return _encode(body)

    def decisions(
        self, placements: Placements, status: int, content: bytes,
        fallback: Mapping[str, Any], events: list[dict[str, Any]],
    ) -> Decisions:  # fmt: skip
        """Read the answer to a decide: the decisions, or the fallback with the reason;
        raises `IntentlyError` for a 4xx."""
        if status >= 500 or status in _TRANSIENT:
            return self.fallback(placements, fallback, f"the engine answered HTTP {status}", events)
        if status >= 400:
            if events:
                self.put_back(events, f"the decide was refused (HTTP {status})")
            raise _error(status, content)
        try:
            answer = _context_decoder.decode(content)
        except msgspec.DecodeError as error:
            return self.fallback(placements, fallback, f"a malformed answer ({error})", events)
        if events:
            if answer.events_error is not None:
                self.put_back(events, answer.events_error)
            else:
                self.acknowledged(answer.accepted + answer.duplicates, answer.rejected)
        by_id = {d.placement: d for d in answer.decisions}
        found = []
        for placement_id in _ids(placements):
            decided = by_id.get(placement_id)
            if decided is None:
                found.append(
                    Decision(
                        placement=placement_id, default=fallback.get(placement_id),
                        degraded="the answer left this placement out",
                    )
                )  # fmt: skip
                continue
            found.append(
                Decision(
                    placement=decided.placement, decision_id=decided.decision_id,
                    items=decided.items, policy=decided.policy, reasons=decided.reasons,
                    personalized=decided.personalized, arm=decided.arm,
                    degraded=decided.degraded, template=decided.template,
                    features=decided.features, default=fallback.get(placement_id),
                )
            )  # fmt: skip
        return Decisions(found)

    def fallback(
        self, placements: Placements, fallback: Mapping[str, Any], why: str,
        events: list[dict[str, Any]],
    ) -> Decisions:  # fmt: skip
        if events:
            self.put_back(events, why)
        log.warning("intently: decide fell back: %s", why)
        return Decisions(
            [
                Decision(
                    placement=p, default=fallback.get(p), degraded=why,
                    reasons=[f"fallback: {why}"],
                )
                for p in _ids(placements)
            ],
            degraded=why,
        )  # fmt: skip

    def render_params(
        self, placement: str, anonymous_id: str | None, user_id: str | None
    ) -> dict[str, str]:
        if anonymous_id is None and user_id is None:
            raise ValueError("name the person: anonymous_id or user_id")
        params = {"anonymous_id": anonymous_id, "user_id": user_id}
        return {k: v for k, v in params.items() if v is not None}

    def rendered(
        self, status: int, headers: httpx.Headers, content: bytes, fallback: str
    ) -> Rendered:
        if status >= 500 or status in _TRANSIENT:
            return Rendered(fallback, degraded=f"the engine answered HTTP {status}")
        if status >= 400:
            raise _error(status, content)
        decision_id = headers.get("intently-decision")
        if decision_id is None or not headers.get("content-type", "").startswith("text/html"):
            # (every render answers its decision's id: a page without one came from
            # something else on the way, a proxy's error page or a login wall)
            return Rendered(fallback, degraded="a malformed answer (not a rendered decision)")
        try:
            markup = content.decode("utf-8")
        except UnicodeDecodeError:
            return Rendered(fallback, degraded="a malformed answer (not UTF-8)")
        if not markup:  # nothing was decided: the caller's content
            return Rendered(
                fallback, decision_id, headers.get("intently-degraded") or "nothing decided"
            )
        return Rendered(markup, decision_id, headers.get("intently-degraded"))


def _ids(placements: Placements) -> list[str]:
    return [p.id if isinstance(p, PlacementAsk) else p for p in placements]


def _error(status: int, content: bytes) -> IntentlyError:
    try:
        problem = msgspec.json.decode(content)
    except msgspec.DecodeError:
        problem = None
    if not isinstance(problem, dict):
        problem = {"detail": content[:500].decode("utf-8", "replace") or f"HTTP {status}"}
    return IntentlyError(status, problem)


def _trouble(error: httpx.HTTPError) -> str:
    if isinstance(error, httpx.TimeoutException):
        return f"timed out ({type(error).__name__})"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


# -- the synchronous client -----------------------------------------------------------------


class Client:
    """The engine, from a server (thread-safe). See the module's documentation."""

    def __init__(
        self,
        base_url: str,
        write_key: str,
        *,
        timeout: float = 0.1,
        retries: int = 1,
        event_timeout: float = 2.0,
        batch_size: int = 20,
        max_queue: int = 10_000,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._core = _Core(
            base_url, write_key, timeout, retries, event_timeout, batch_size, max_queue
        )
        self._http = httpx.Client(
            base_url=self._core.base_url, headers=self._core.headers, transport=transport,
            follow_redirects=False, timeout=timeout,
        )  # fmt: skip

    # counters
    @property
    def sent(self) -> int:
        return self._core.sent

    @property
    def dropped(self) -> int:
        return self._core.dropped

    @property
    def pending(self) -> int:
        return len(self._core.queue)

    def _send(
        self, method: str, path: str, timeout: float, content: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:  # fmt: skip
        """One request; a connection that never reached the engine is tried again."""
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                return self._http.request(
                    method, path, content=content, params=params, timeout=timeout
                )
            except httpx.ConnectError:
                attempt += 1
                if attempt > self._core.retries or time.monotonic() - started > timeout:
                    raise

    # events

    def track(
        self, event: str, properties: Mapping[str, Any] | None = None, *,
        anonymous_id: str | None = None, user_id: str | None = None,
        context: Mapping[str, Any] | None = None, timestamp: datetime | None = None,
        message_id: str | None = None,
    ) -> None:  # fmt: skip
        """Queue a track event (sent in a batch, see the module's documentation)."""
        fields = {"event": event, "properties": dict(properties or {})}
        self._queue(
            self._core.event("track", fields, anonymous_id, user_id, context, timestamp, message_id)
        )

    def page(
        self, name: str | None = None, properties: Mapping[str, Any] | None = None, *,
        anonymous_id: str | None = None, user_id: str | None = None,
        context: Mapping[str, Any] | None = None, timestamp: datetime | None = None,
        message_id: str | None = None,
    ) -> None:  # fmt: skip
        """Queue a page view (`properties.url` and `context.page` as the tag sends them)."""
        fields: dict[str, Any] = {"properties": dict(properties or {})}
        if name is not None:
            fields["name"] = name
        self._queue(
            self._core.event("page", fields, anonymous_id, user_id, context, timestamp, message_id)
        )

    def identify(
        self, user_id: str, traits: Mapping[str, Any] | None = None, *,
        anonymous_id: str | None = None, context: Mapping[str, Any] | None = None,
        timestamp: datetime | None = None, message_id: str | None = None,
    ) -> None:  # fmt: skip
        """Queue an identify: ties `anonymous_id` (if given) to `user_id`, with traits."""
        fields = {"traits": dict(traits or {})}
        self._queue(
            self._core.event(
                "identify", fields, anonymous_id, user_id, context, timestamp, message_id
            )
        )

    def _queue(self, event: dict[str, Any]) -> None:
        if self._core.enqueue(event):
            self.flush()

    def flush(self) -> bool:
        """Send every queued event; whether all were acknowledged (what was not stays
        queued). Raises `IntentlyError` when the engine refuses a batch (4xx)."""
        while True:
            events = self._core.take()
            if not events:
                return True
            try:
                response = self._send(
                    "POST", "/v1/events", self._core.event_timeout, self._core.batch_body(events)
                )
            except httpx.HTTPError as error:
                self._core.put_back(events, _trouble(error))
                return False
            if not self._core.events_sent(response.status_code, response.content, events):
                return False

    # decisions

    def decide(
        self, placements: Placements, *, anonymous_id: str | None = None,
        user_id: str | None = None, context: Mapping[str, Any] | None = None,
        fallback: Mapping[str, Any] | None = None, explain: bool = False,
        templates: bool = False,
    ) -> Decisions:  # fmt: skip
        """What to show in each placement: the engine's decisions (with the queued events
        sent first), or on any trouble the `fallback` content, marked `degraded`."""
        # (one batch at most: the decide's budget is short)
        events = self._core.take(self._core.batch_size)
        try:
            body = self._core.decide_body(
                placements, anonymous_id, user_id, context, explain, templates, events
            )
        except ValueError:
            if events:
                self._core.put_back(events, "the decide request was invalid")
            raise
        try:
            response = self._send("POST", "/v1/context", self._core.timeout, body)
        except httpx.HTTPError as error:
            return self._core.fallback(placements, fallback or {}, _trouble(error), events)
        return self._core.decisions(
            placements, response.status_code, response.content, fallback or {}, events
        )

    def render(
        self, placement: str, *, anonymous_id: str | None = None, user_id: str | None = None,
        fallback: str = "",
    ) -> Rendered:  # fmt: skip
        """The placement decided for one person, as HTML (`GET /v1/render/{placement}`);
        on any trouble, `fallback`, marked `degraded`."""
        params = self._core.render_params(placement, anonymous_id, user_id)
        path = "/v1/render/" + quote(placement, safe="")
        try:
            response = self._send("GET", path, self._core.timeout, params=params)
        except httpx.HTTPError as error:
            return Rendered(fallback, degraded=_trouble(error))
        return self._core.rendered(
            response.status_code, response.headers, response.content, fallback
        )

    # closing

    def close(self) -> None:
        """Send what is queued (once, best effort), then release the connections. Events
        that still cannot be sent are logged, not raised: closing must not fail."""
        try:
            self.flush()
        except IntentlyError as error:
            log.error("intently: queued events refused at close: %s", error)
        finally:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:  # fmt: skip
        self.close()


# -- the asynchronous client ----------------------------------------------------------------


class AsyncClient:
    """`Client` for asyncio applications: the same methods; the sending ones are
    coroutines (`track`, `page` and `identify` only queue, and send a full batch)."""

    def __init__(
        self,
        base_url: str,
        write_key: str,
        *,
        timeout: float = 0.1,
        retries: int = 1,
        event_timeout: float = 2.0,
        batch_size: int = 20,
        max_queue: int = 10_000,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._core = _Core(
            base_url, write_key, timeout, retries, event_timeout, batch_size, max_queue
        )
        self._http = httpx.AsyncClient(
            base_url=self._core.base_url, headers=self._core.headers, transport=transport,
            follow_redirects=False, timeout=timeout,
        )  # fmt: skip

    @property
    def sent(self) -> int:
        return self._core.sent

    @property
    def dropped(self) -> int:
        return self._core.dropped

    @property
    def pending(self) -> int:
        return len(self._core.queue)

    async def _send(
        self, method: str, path: str, timeout: float, content: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:  # fmt: skip
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                return await self._http.request(
                    method, path, content=content, params=params, timeout=timeout
                )
            except httpx.ConnectError:
                attempt += 1
                if attempt > self._core.retries or time.monotonic() - started > timeout:
                    raise

    async def track(
        self, event: str, properties: Mapping[str, Any] | None = None, *,
        anonymous_id: str | None = None, user_id: str | None = None,
        context: Mapping[str, Any] | None = None, timestamp: datetime | None = None,
        message_id: str | None = None,
    ) -> None:  # fmt: skip
        fields = {"event": event, "properties": dict(properties or {})}
        await self._queue(
            self._core.event("track", fields, anonymous_id, user_id, context, timestamp, message_id)
        )

    async def page(
        self, name: str | None = None, properties: Mapping[str, Any] | None = None, *,
        anonymous_id: str | None = None, user_id: str | None = None,
        context: Mapping[str, Any] | None = None, timestamp: datetime | None = None,
        message_id: str | None = None,
    ) -> None:  # fmt: skip
        fields: dict[str, Any] = {"properties": dict(properties or {})}
        if name is not None:
            fields["name"] = name
        await self._queue(
            self._core.event("page", fields, anonymous_id, user_id, context, timestamp, message_id)
        )

    async def identify(
        self, user_id: str, traits: Mapping[str, Any] | None = None, *,
        anonymous_id: str | None = None, context: Mapping[str, Any] | None = None,
        timestamp: datetime | None = None, message_id: str | None = None,
    ) -> None:  # fmt: skip
        fields = {"traits": dict(traits or {})}
        await self._queue(
            self._core.event(
                "identify", fields, anonymous_id, user_id, context, timestamp, message_id
            )
        )

    async def _queue(self, event: dict[str, Any]) -> None:
        if self._core.enqueue(event):
            await self.flush()

    async def flush(self) -> bool:
        while True:
            events = self._core.take()
            if not events:
                return True
            try:
                response = await self._send(
                    "POST", "/v1/events", self._core.event_timeout, self._core.batch_body(events)
                )
            except httpx.HTTPError as error:
                self._core.put_back(events, _trouble(error))
                return False
            if not self._core.events_sent(response.status_code, response.content, events):
                return False

    async def decide(
        self, placements: Placements, *, anonymous_id: str | None = None,
        user_id: str | None = None, context: Mapping[str, Any] | None = None,
        fallback: Mapping[str, Any] | None = None, explain: bool = False,
        templates: bool = False,
    ) -> Decisions:  # fmt: skip
        # (one batch at most: the decide's budget is short)
        events = self._core.take(self._core.batch_size)
        try:
            body = self._core.decide_body(
                placements, anonymous_id, user_id, context, explain, templates, events
            )
        except ValueError:
            if events:
                self._core.put_back(events, "the decide request was invalid")
            raise
        try:
            response = await self._send("POST", "/v1/context", self._core.timeout, body)
        except httpx.HTTPError as error:
            return self._core.fallback(placements, fallback or {}, _trouble(error), events)
        return self._core.decisions(
            placements, response.status_code, response.content, fallback or {}, events
        )

    async def render(
        self, placement: str, *, anonymous_id: str | None = None, user_id: str | None = None,
        fallback: str = "",
    ) -> Rendered:  # fmt: skip
        params = self._core.render_params(placement, anonymous_id, user_id)
        path = "/v1/render/" + quote(placement, safe="")
        try:
            response = await self._send("GET", path, self._core.timeout, params=params)
        except httpx.HTTPError as error:
            return Rendered(fallback, degraded=_trouble(error))
        return self._core.rendered(
            response.status_code, response.headers, response.content, fallback
        )

    async def aclose(self) -> None:
        try:
            await self.flush()
        except IntentlyError as error:
            log.error("intently: queued events refused at close: %s", error)
        finally:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:  # fmt: skip
        await self.aclose()
