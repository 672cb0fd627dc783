"""`POST /v1/decide` and `POST /v1/context` (write key): what this visitor sees now.

`/v1/context` takes the same body plus `events` (as in a `/v1/events` batch): the events
are made durable and applied first, so the decisions in the same answer already reflect
them: one round trip for a page that reports what happened and asks what to show.

Requests that arrive together have their decides run back to back (api/batching.py).

A decide answers 4xx only for a request it cannot read (malformed JSON, a wrong field,
an unknown placement, a bad key). Once the request is understood, every failure inside
is answered by the placement's fallback, marked `degraded`: never a 5xx to a browser.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from intently.act.decide import ItemsRefused, UnknownPlacements
from intently.act.wire import MAX_PLACEMENTS, DecideAnswer, DecideBody
from intently.api.auth import bearer_key, unauthorized
from intently.api.batching import Batcher
from intently.api.events import BodyTooLarge, ingest, privacy_refusals, read_body
from intently.api.problems import json_response, problem
from intently.engine import Engine
from intently.events.schema import Event
from intently.events.validate import (
    BodyError,
    FieldError,
    decode_body,
    field_error,
    split_msgspec_error,
)
from intently.keys import Role

_JSON_TYPES = ("application/json", "text/plain", "")


class ContextBody(DecideBody, rename="camel", forbid_unknown_fields=True, omit_defaults=True):
    events: Annotated[list[msgspec.Raw], Meta(max_length=500)] = msgspec.field(default_factory=list)
    sent_at: msgspec.Raw = msgspec.Raw()


class ContextForSchema(DecideBody, rename="camel", forbid_unknown_fields=True):
    """The body of `POST /v1/context` as documented (events decoded one by one)."""

    events: Annotated[list[Event], Meta(max_length=500)] = msgspec.field(default_factory=list)
    sent_at: datetime | None = None


class ContextAnswer(DecideAnswer):
    accepted: int = 0
    duplicates: int = 0
    rejected: list[FieldError] = msgspec.field(default_factory=list)
    # Set when the events could not be stored (none was acknowledged: send them again);
    # the decisions are made all the same.
    events_error: str | None = None


B = TypeVar("B", bound=DecideBody)
_decide_decoder = msgspec.json.Decoder(DecideBody)
_context_decoder = msgspec.json.Decoder(ContextBody)


def _invalid(error: msgspec.ValidationError) -> Response:
    detail, path = split_msgspec_error(str(error))
    found = field_error(None, path, detail, "invalid")
    return problem(400, "invalid-body", f"{found.field}: {detail}", pointer=found.pointer)


async def _read(request: Request, engine: Engine) -> bytes | Response:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type not in _JSON_TYPES:
        return problem(415, "unsupported-media-type", f"send JSON, not {media_type}")
    try:
        return await read_body(request, engine.settings.max_body_bytes)
    except BodyTooLarge:
        limit = engine.settings.max_body_bytes
        return problem(413, "body-too-large", f"the body is larger than {limit} bytes")


def _authorized(request: Request, engine: Engine, body: DecideBody) -> Response | None:
    key = bearer_key(request)
    if key is None:
        key = body.write_key
    role = engine.keys.role_of(key)
    if role is None:
        return unauthorized(
            "missing or invalid key: send the write key as 'Authorization: Bearer KEY'"
            " or as writeKey in the body"
        )
    if body.explain and role is not Role.ADMIN:
        # The write key ships in web pages, and a request names any userId: the features
        # held about a person are for the operator's eyes only.
        return problem(
            403, "forbidden", "explain shows what is held about the visitor: it needs the "
            "secret (admin) key", pointer="/explain",
        )  # fmt: skip
    return None


def _checked(body: DecideBody) -> Response | None:
    if body.anonymous_id is None and body.user_id is None:
        return problem(
            400, "missing-identity", "name the visitor: anonymousId or userId",
            pointer="/anonymousId",
        )  # fmt: skip
    return None


Decided = DecideAnswer | Response
# A decide's outcome, with when it started and ended (time.perf_counter seconds).
_Ran = tuple[Decided, float, float]


def decide_batcher(engine: Engine) -> Batcher[_Ran]:
    """The app's queue of decides (one per app)."""
    return Batcher(on_batch=engine.metrics.decide_batches.observe)


async def _decide_soon(engine: Engine, request: Request, body: DecideBody) -> tuple[Decided, float]:
    """`_decide`, run back to back with the other decides that are ready; and the seconds
    the request waited in the loop from handing its decide in until it ran, and from its
    end until the request resumed: the decides of others in its batch, and whatever else
    the loop ran meanwhile (other requests' HTTP work, the tick, a collector pass)."""

    def run() -> _Ran:
        began = time.perf_counter()
        return _decide(engine, request, body), began, time.perf_counter()

    batcher: Batcher[_Ran] = request.app.state.decides
    handed = time.perf_counter()
    answer, began, ended = await batcher.run(run)
    return answer, (began - handed) + (time.perf_counter() - ended)


def _decide(engine: Engine, request: Request, body: DecideBody) -> Decided:
    client = request.client.host if request.client else None
    try:
        answer = engine.decider.decide(
            body, client, request.headers.get("user-agent"),
            privacy_refusals(request, engine.settings),
        )  # fmt: skip
    except UnknownPlacements as error:
        index, _ = error.unknown[0]
        return problem(404, "unknown-placement", str(error), pointer=f"/placements/{index}/id")
    except ItemsRefused as error:
        index, _ = error.refused[0]
        return problem(400, "invalid-body", str(error), pointer=f"/placements/{index}/items")
    engine.metrics.count_decisions(answer.decisions)
    return answer


def _timed(answer: DecideAnswer, started: float, waited: float) -> Response:
    """The answer, with the server's time in a `Server-Timing` header (the W3C header
    browsers show in their developer tools; bench/decide.py reads it): `decide`, the time
    spent on this request; `queue`, its wait in the loop around its decide (the decides of
    others in its batch, and whatever else the loop ran meanwhile)."""
    own_ms = (time.perf_counter() - started - waited) * 1000
    timing = f"decide;dur={own_ms:.3f}, queue;dur={waited * 1000:.3f}"
    return json_response(answer, headers={"Server-Timing": timing})


async def _body(request: Request, engine: Engine, decoder: msgspec.json.Decoder[B]) -> B | Response:
    """The request's body, decoded, from a caller with a key; or the problem to answer."""
    raw = await _read(request, engine)
    if isinstance(raw, Response):
        return raw
    try:
        body = decoder.decode(raw)
    except msgspec.ValidationError as error:
        return _invalid(error)
    except msgspec.DecodeError as error:
        return problem(400, "malformed-json", f"the body is not valid JSON: {error}")
    return _authorized(request, engine, body) or _checked(body) or body


async def post_decide(request: Request) -> Response:
    started = time.perf_counter()
    engine: Engine = request.app.state.engine
    body = await _body(request, engine, _decide_decoder)
    if isinstance(body, Response):
        return body
    answer, waited = await _decide_soon(engine, request, body)
    if isinstance(answer, Response):
        return answer
    return _timed(answer, started, waited)


async def post_context(request: Request) -> Response:
    """Events first (durable and applied), then decisions that see them."""
    started = time.perf_counter()
    engine: Engine = request.app.state.engine
    body = await _body(request, engine, _context_decoder)
    if isinstance(body, Response):
        return body
    if engine.decider.placements_unknown(body):
        answer = _decide(engine, request, body)  # answers the 404, before any event
        assert isinstance(answer, Response)
        return answer
    accepted = duplicates = 0
    rejected: list[FieldError] = []
    events_error = None
    if body.events:
        batch = b'{"batch":[' + b",".join(bytes(event) for event in body.events) + b"]"
        if body.sent_at:
            batch += b',"sentAt":' + bytes(body.sent_at)
        try:
            decoded = decode_body(batch + b"}", engine.settings.max_batch)
        except BodyError as error:
            pointer = "/events" + (error.pointer or "").removeprefix("/batch")
            return problem(error.status, error.code, error.detail, pointer=pointer)
        rejected = [_under_events(error) for error in decoded.errors]
        engine.metrics.count_rejected(decoded.errors)
        if decoded.events:
            result = await ingest(engine, request, decoded.events)
            if isinstance(result, Response):  # the log failed: still decide (never a 5xx)
                events_error = (
                    "the event log could not store the events; nothing was acknowledged, "
                    "send them again"
                )
            else:
                accepted, duplicates = result.accepted, result.duplicates
    answer, waited = await _decide_soon(engine, request, body)
    if isinstance(answer, Response):
        return answer
    found = ContextAnswer(answer.decisions, accepted, duplicates, rejected, events_error)
    response = _timed(found, started, waited)
    if events_error is not None:
        response.headers["Retry-After"] = "1"
    return response


def _under_events(error: FieldError) -> FieldError:
    """An event's error, pointed at `/events/N/...` of this body."""
    fields: dict[str, Any] = msgspec.structs.asdict(error)
    if error.pointer:
        fields["pointer"] = "/events" + error.pointer.removeprefix("/batch")
    return FieldError(**fields)


__all__ = ["MAX_PLACEMENTS", "decide_batcher", "post_context", "post_decide"]
