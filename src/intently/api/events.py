"""`POST /v1/events`: one event or a batch, validated, enriched, durable, acknowledged."""

from __future__ import annotations

import logging
import sqlite3
from typing import TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from intently.api.auth import bearer_key, unauthorized
from intently.api.problems import problem
from intently.config import Settings
from intently.engine import Engine
from intently.events.schema import Event
from intently.events.validate import BodyError, decode_body
from intently.log.eventlog import LogClosed
from intently.pipeline import ClientInfo, IngestResult

log = logging.getLogger(__name__)

# sendBeacon sends text/plain; both carry JSON.
_JSON_TYPES = ("application/json", "text/plain", "")
_encode = msgspec.json.Encoder().encode
T = TypeVar("T")


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes without reading them all.

    Reads the ASGI messages directly (one, for a small body) rather than through
    `Request.stream`, whose async generator costs more than the read on the hot path."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


def privacy_refusals(request: Request, settings: Settings) -> tuple[str, ...]:
    """The purposes this request's browser privacy signals refuse, as configured:
    Global Privacy Control (`Sec-GPC: 1`) opts out of marketing (sale/sharing); Do Not
    Track (`DNT: 1`) opts out of personalization and marketing."""
    refused: tuple[str, ...] = ()
    headers = request.headers
    if settings.honor_dnt and headers.get("dnt") == "1":
        refused = ("personalization", "marketing")
    elif settings.honor_gpc and headers.get("sec-gpc") == "1":
        refused = ("marketing",)
    return refused


async def read_json(
    request: Request, decoder: msgspec.json.Decoder[T], limit: int, what: str
) -> T | Response:
    """Decode a small JSON body (an admin request) with `decoder`, or the problem to
    answer: 413 past `limit` bytes, 400 for JSON that is malformed or of the wrong shape."""
    try:
        return decoder.decode(await read_body(request, limit))
    except BodyTooLarge:
        return problem(413, "body-too-large", f"{what} is at most {limit} bytes")
    except msgspec.ValidationError as exc:
        return problem(400, "invalid-body", str(exc))
    except msgspec.DecodeError as exc:
        return problem(400, "malformed-json", f"the body is not valid JSON: {exc}")


def client_info(request: Request, settings: Settings) -> ClientInfo:
    return ClientInfo(
        request.client.host if request.client else None,
        request.headers.get("user-agent"),
        privacy_refusals(request, settings),
    )


async def ingest(
    engine: Engine, request: Request, events: list[tuple[int | None, Event]]
) -> IngestResult | Response:
    """Make `events` durable and applied; or the 503 to answer when the log cannot, or
    when the shared state store cannot be reached."""
    if _behind(engine):
        return _state_unavailable("nothing was stored")
    try:
        result = await engine.pipeline.ingest(events, client_info(request, engine.settings))
    except (LogClosed, sqlite3.Error):
        log.exception("could not make events durable")
        return problem(
            503, "log-unavailable",
            "the event log could not store the events; nothing was acknowledged, retry later",
            headers={"Retry-After": "1"},
        )  # fmt: skip
    if _behind(engine):  # (it may have fallen behind while these were applied)
        # Durable in the log and applied once the store is back; a retry of the same
        # messageIds is taken as a duplicate, so nothing counts twice.
        return _state_unavailable("these events are kept and applied when it returns")
    engine.metrics.duplicates.inc(result.duplicates)
    return result


def _behind(engine: Engine) -> bool:
    return engine.context.behind


def _state_unavailable(what: str) -> Response:
    return problem(
        503, "state-unavailable",
        f"the shared state store cannot be reached; {what}; retry with the same messageIds",
        headers={"Retry-After": "1"},
    )  # fmt: skip


async def post_events(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    settings = engine.settings
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type not in _JSON_TYPES:
        return problem(
            415, "unsupported-media-type",
            f"send JSON as application/json (or text/plain for sendBeacon), not {media_type}",
        )  # fmt: skip
    header_key = bearer_key(request)
    if header_key is not None and engine.keys.role_of(header_key) is None:
        return unauthorized("the key in the Authorization header is not valid")
    try:
        body = await read_body(request, settings.max_body_bytes)
    except BodyTooLarge:
        return problem(
            413, "body-too-large", f"the body is larger than {settings.max_body_bytes} bytes"
        )
    try:
        decoded = decode_body(body, settings.max_batch)
    except BodyError as error:
        engine.metrics.rejected.labels(error.code).inc()
        return problem(error.status, error.code, error.detail, pointer=error.pointer)
    if header_key is None and engine.keys.role_of(decoded.write_key) is None:
        detail = (
            "the writeKey in the body is not valid"
            if decoded.write_key
            else "send the write key as 'Authorization: Bearer KEY' or as writeKey in the body"
        )
        return unauthorized(detail)
    engine.metrics.count_rejected(decoded.errors)
    if not decoded.events:
        detail = (
            "no event was usable; see errors"
            if decoded.errors
            else "the batch is empty: send at least one event"
        )
        return problem(400, "no-usable-event", detail, errors=decoded.errors or None)
    result = await ingest(engine, request, decoded.events)
    if isinstance(result, Response):
        return result
    result.rejected = decoded.errors
    return Response(_encode(result), media_type="application/json")
