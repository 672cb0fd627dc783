"""Decode a request body into events, one verdict per event.

A body is one event or `{"batch": [...]}`. Each event of a batch is decoded on its own,
so one bad event is reported with its index and field while the others go on. Only a body
that cannot be read at all (not JSON, not UTF-8, too many events) fails as a whole.
"""

from __future__ import annotations

import operator
import re
import socket
from datetime import UTC, datetime
from functools import cache
from typing import Any
from zoneinfo import available_timezones

import msgspec
from msgspec import Struct

from intently.events.ecommerce import commerce_properties, is_ecommerce, surely_valid
from intently.events.limits import LimitError, check_free_form, within_bounds_without_walk
from intently.events.schema import (
    AliasEvent,
    Batch,
    Context,
    Event,
    IdentifyEvent,
    TrackEvent,
)

MAX_BATCH = 500

Path = list[str | int]


class FieldError(Struct, omit_defaults=True):
    """Why one event was rejected: the field at fault (dotted, as sent) and a JSON pointer
    to it within the request body."""

    field: str
    pointer: str
    detail: str
    reason: str
    index: int | None = None


class BodyError(ValueError):
    """The body as a whole is unusable."""

    def __init__(self, status: int, code: str, detail: str, pointer: str = "") -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.pointer = pointer


class Decoded(Struct):
    """A decoded body: the usable events with their index in the batch (None when the
    body was a single event), the rejected ones, and the write key found in the body."""

    events: list[tuple[int | None, Event]]
    errors: list[FieldError]
    write_key: str | None


class _Envelope(Struct, rename="camel", forbid_unknown_fields=False):
    """The body read once: a batch's events and its own fields stay raw JSON here, decoded
    one by one below (a single event's body is decoded whole as an event instead)."""

    batch: list[msgspec.Raw] | None = None
    # Raw cannot be in a union with None: an absent field is an empty Raw.
    sent_at: msgspec.Raw = msgspec.Raw()
    context: msgspec.Raw = msgspec.Raw()
    write_key: msgspec.Raw = msgspec.Raw()


_envelope = msgspec.json.Decoder(_Envelope)
_event = msgspec.json.Decoder(Event)
# The batch's own fields, with their types in `Batch`: (wire name, decoder) by attribute.
_BATCH_FIELDS: dict[str, tuple[str, msgspec.json.Decoder[Any]]] = {
    field.name: (field.encode_name, msgspec.json.Decoder(field.type))
    for field in msgspec.structs.fields(Batch)
    if field.name != "batch"
}


def decode_body(body: bytes, max_batch: int = MAX_BATCH) -> Decoded:
    """Decode `body`; raises `BodyError` only when nothing in it can be used."""
    envelope = _read_json(body, _envelope)
    if envelope.batch is None:
        event, error = decode_event(body, None)
        if error is not None and error.reason in _UNREADABLE:
            raise BodyError(400, error.reason, error.detail)
        events: list[tuple[int | None, Event]] = [] if event is None else [(None, event)]
        return Decoded(events, [] if error is None else [error], _body_write_key(event))
    if len(envelope.batch) > max_batch:
        raise BodyError(
            413,
            "batch-too-large",
            f"a batch holds at most {max_batch} events; this one has {len(envelope.batch)}",
            "/batch",
        )
    batch = Batch(envelope.batch, **{
        name: _batch_field(getattr(envelope, name), name) for name in _BATCH_FIELDS
    })  # fmt: skip
    defaults = _batch_context(batch)
    _check_batch_fields(batch, defaults)
    decoded = Decoded([], [], batch.write_key)
    for index, raw in enumerate(batch.batch):
        event, error = decode_event(raw, index)
        if error is not None:
            decoded.errors.append(error)
            continue
        assert event is not None
        if event.sent_at is None:
            event.sent_at = batch.sent_at
        if defaults is not None:
            event.context = _merge_context(event.context, defaults)
        decoded.write_key = decoded.write_key or event.write_key
        decoded.events.append((index, event))
    return decoded


def decode_event(
    raw: bytes | msgspec.Raw, index: int | None
) -> tuple[Event | None, FieldError | None]:
    """Decode and check one event: (event, None) if usable, else (None, why)."""
    try:
        event = _event.decode(raw)
        _check_identity(event)
        _check_times(event)
        _check_context(event.context)
        _check_free_form(event, len(raw))
        if type(event) is TrackEvent and is_ecommerce(event) and not surely_valid(event):
            try:
                commerce_properties(event)
            except msgspec.ValidationError as exc:
                detail, path = split_msgspec_error(str(exc))
                raise _Invalid(["properties", *path], detail, "ecommerce-schema") from None
    except msgspec.ValidationError as exc:
        detail, path = split_msgspec_error(str(exc))
        reason = "unknown-type" if path == ["type"] else "schema"
        return None, field_error(index, path, detail, reason)
    except msgspec.DecodeError as exc:
        return None, field_error(index, [], f"malformed JSON: {exc}", "malformed-json")
    except UnicodeDecodeError:
        # The envelope skips over strings it does not need, so bad bytes surface here.
        return None, field_error(index, [], _NOT_UTF8, "invalid-utf8")
    except RecursionError:
        return None, field_error(index, [], _TOO_DEEP, "too-deep")
    except _Invalid as exc:
        return None, field_error(index, exc.path, exc.detail, exc.reason)
    except LimitError as exc:
        return None, field_error(index, exc.path, exc.detail, "limits")
    return event, None


class _Invalid(ValueError):
    def __init__(self, path: Path, detail: str, reason: str = "invalid-value") -> None:
        super().__init__(detail)
        self.path = path
        self.detail = detail
        self.reason = reason


def _check_identity(event: Event) -> None:
    if isinstance(event, AliasEvent):
        if event.user_id is None:
            raise _Invalid(
                ["userId"], "alias needs userId, the identity previousId merges into", "no-id"
            )
        return
    if event.anonymous_id is None and event.user_id is None:
        raise _Invalid(["anonymousId"], "an event needs anonymousId or userId (or both)", "no-id")


# Times outside these bounds are client bugs; inside them, clock-skew correction and local
# time conversion cannot overflow.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
_TIME_FIELDS = (
    ("timestamp", "timestamp"),
    ("original_timestamp", "originalTimestamp"),
    ("sent_at", "sentAt"),
    ("received_at", "receivedAt"),
)


def _check_times(event: Event) -> None:
    # The common case (aware and in range) is checked inline, with the attributes read
    # directly: this runs for every event. The rest is looked at field by field.
    for moment in (event.timestamp, event.original_timestamp, event.sent_at, event.received_at):
        if moment is not None and not (moment.tzinfo is not None and EARLIEST <= moment <= LATEST):
            for attribute, wire_name in _TIME_FIELDS:
                other: datetime | None = getattr(event, attribute)
                if other is not None:
                    _check_time(other, wire_name)


def _check_time(moment: datetime, wire_name: str) -> None:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if not EARLIEST <= moment <= LATEST:
        raise _Invalid([wire_name], "must be between 1970-01-01 and 2200-01-01", "time-range")


def _check_context(context: Context | None) -> None:
    if context is None:
        return
    if context.ip is not None and not is_ip_address(context.ip):
        raise _Invalid(["context", "ip"], "not an IPv4 or IPv6 address")
    if context.timezone is not None and context.timezone not in _timezones():
        raise _Invalid(["context", "timezone"], "not an IANA timezone name (e.g. Europe/Paris)")


def is_ip_address(text: str) -> bool:
    """Whether `text` is an IPv4 or IPv6 address (inet_pton: C speed, no objects built)."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        socket.inet_pton(family, text)
    except (OSError, ValueError):
        return False
    return True


@cache
def _timezones() -> frozenset[str]:
    return frozenset(available_timezones())


def _check_free_form(event: Event, source_size: int) -> None:
    kind = type(event)
    if kind is IdentifyEvent:
        free, name = event.traits, "traits"  # type: ignore[union-attr]
    elif kind is AliasEvent:
        free, name = None, ""
    else:
        free, name = event.properties, "properties"  # type: ignore[union-attr]
    # The usual properties, flat and within a short event, pass without a walk.
    if free and not within_bounds_without_walk(free, source_size):
        check_free_form(free, [name])
    if event.integrations is not None:
        check_free_form(event.integrations, ["integrations"])
    context = event.context
    if context is not None:
        values = _free_form_of(context)
        if values.count(None) != len(values):  # most events send none of them
            for name, value in zip(_FREE_FORM_CONTEXT, values, strict=True):
                if value is not None:
                    check_free_form(value, ["context", name])


# Context fields that are free-form maps; each is a single word, so the same on the wire.
_FREE_FORM_CONTEXT = (
    "referrer", "traits", "library", "app", "device", "os", "screen", "network", "location",
)  # fmt: skip
_free_form_of = operator.attrgetter(*_FREE_FORM_CONTEXT)


_NOT_UTF8 = "the body is not valid UTF-8"
_TOO_DEEP = "the body is nested too deeply to read"
_UNREADABLE = frozenset({"invalid-utf8", "too-deep"})


def _read_json(body: bytes, decoder: msgspec.json.Decoder[Any]) -> Any:
    try:
        return decoder.decode(body)
    except UnicodeDecodeError:
        raise BodyError(400, "invalid-utf8", _NOT_UTF8) from None
    except RecursionError:
        raise BodyError(400, "too-deep", _TOO_DEEP) from None
    except msgspec.ValidationError as exc:
        detail, path = split_msgspec_error(str(exc))
        raise BodyError(400, "invalid-body", detail, _pointer(None, path)) from None
    except msgspec.DecodeError as exc:
        raise BodyError(400, "malformed-json", f"the body is not valid JSON: {exc}") from None


def _batch_field(raw: msgspec.Raw, name: str) -> Any:
    if not raw:
        return None
    wire_name, decoder = _BATCH_FIELDS[name]
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        detail, path = split_msgspec_error(str(exc))
        raise BodyError(400, "invalid-body", detail, _pointer(None, [wire_name, *path])) from None
    except UnicodeDecodeError:  # the envelope keeps these raw, unchecked
        raise BodyError(400, "invalid-utf8", _NOT_UTF8, f"/{wire_name}") from None
    except RecursionError:
        raise BodyError(400, "too-deep", _TOO_DEEP, f"/{wire_name}") from None


def _batch_context(batch: Batch) -> Context | None:
    if not batch.context:
        return None
    try:
        return msgspec.convert(batch.context, Context)
    except msgspec.ValidationError as exc:
        detail, path = split_msgspec_error(str(exc))
        raise BodyError(400, "invalid-body", detail, _pointer(None, ["context", *path])) from None


def _check_batch_fields(batch: Batch, defaults: Context | None) -> None:
    """The batch's `sentAt` and `context` are copied into its events after they were
    checked, so they get the same checks here, as errors of the body."""
    try:
        if batch.sent_at is not None:
            _check_time(batch.sent_at, "sentAt")
        _check_context(defaults)
        if defaults is not None:
            for name in _FREE_FORM_CONTEXT:
                value = getattr(defaults, name)
                if value is not None:
                    check_free_form(value, ["context", name])
    except _Invalid as exc:
        raise BodyError(400, "invalid-body", exc.detail, _pointer(None, exc.path)) from None
    except LimitError as exc:
        raise BodyError(400, "invalid-body", exc.detail, _pointer(None, exc.path)) from None


def _merge_context(own: Context | None, defaults: Context) -> Context:
    """Fill the fields an event's context lacks from the batch's context."""
    if own is None:
        return msgspec.structs.replace(defaults)
    for name in Context.__struct_fields__:
        if getattr(own, name) is None:
            setattr(own, name, getattr(defaults, name))
    return own


def _body_write_key(event: Event | None) -> str | None:
    return None if event is None else event.write_key


# msgspec reports "<detail> - at `$.a.b[0]`"; a missing field is named in backticks.
_AT = re.compile(r"^(?P<detail>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.DOTALL)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
# A field that is missing, or that a strict struct does not know, is named in backticks.
_MISSING = re.compile(r"(?:missing required|contains unknown) field `([^`]+)`")


def split_msgspec_error(message: str) -> tuple[str, Path]:
    """msgspec's validation message as (detail, path of the field at fault)."""
    match = _AT.match(message)
    detail = match["detail"] if match else message
    path: Path = []
    if match and match["path"]:
        for key, item in _STEP.findall(match["path"]):
            if key:
                path.append(key)
            elif item.isdigit():
                path.append(int(item))
    missing = _MISSING.search(detail)
    if missing:
        path.append(missing.group(1))
    return detail, path


def field_error(
    index: int | None, path: Path, detail: str, reason: str, container: str = "batch"
) -> FieldError:
    field = ".".join(f"[{p}]" if isinstance(p, int) else p for p in path).replace(".[", "[")
    return FieldError(
        field=field or "$", pointer=_pointer(index, path, container), detail=detail,
        reason=reason, index=index,
    )  # fmt: skip


def _pointer(index: int | None, path: Path, container: str = "batch") -> str:
    """An RFC 6901 JSON pointer into the request body (an entry of `container` when
    `index` is given)."""
    steps: Path = [] if index is None else [container, index]
    steps = steps + path
    return "".join("/" + str(s).replace("~", "~0").replace("/", "~1") for s in steps)
