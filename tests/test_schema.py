"""The event schema and decoder, by example and by property (hypothesis)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from intently.events.ecommerce import commerce_properties
from intently.events.record import stamp
from intently.events.schema import AliasEvent, IdentifyEvent, PageEvent, TrackEvent
from intently.events.validate import BodyError, decode_body, decode_event

ids = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text(max_size=30)
    | (st.floats(allow_nan=False, allow_infinity=False))
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2199, 12, 31), timezones=st.just(UTC)
).map(lambda d: d.isoformat().replace("+00:00", "Z"))


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["track", "page", "screen", "identify", "alias"]))
    event: dict[str, Any] = {"type": kind}
    if kind == "alias":
        event["previousId"] = draw(ids)
        event["userId"] = draw(ids)
    else:
        who = draw(st.sampled_from(["anonymousId", "userId", "both"]))
        if who in ("anonymousId", "both"):
            event["anonymousId"] = draw(ids)
        if who in ("userId", "both"):
            event["userId"] = draw(ids)
    if kind == "track":
        event["event"] = draw(st.text(min_size=1, max_size=30))
    if kind in ("track", "page", "screen"):
        event["properties"] = draw(st.dictionaries(st.text(max_size=10), json_values, max_size=5))
    if kind == "identify":
        event["traits"] = draw(st.dictionaries(st.text(max_size=10), json_values, max_size=5))
    for key in ("timestamp", "sentAt"):
        if draw(st.booleans()):
            event[key] = draw(times)
    if draw(st.booleans()):
        event["messageId"] = draw(ids)
    if draw(st.booleans()):
        event["context"] = {
            "locale": "en-US",
            "page": {"url": "https://shop.example/" + draw(st.text(max_size=10))},
            "campaign": {"source": draw(st.text(max_size=10))},
        }
    return event


@given(valid_events())
def test_every_valid_event_is_accepted_and_round_trips(event: dict[str, Any]) -> None:
    decoded, error = decode_event(json.dumps(event).encode(), None)
    assert error is None
    assert decoded is not None
    assert type(decoded).__struct_config__.tag == event["type"]
    again = msgspec.json.decode(msgspec.json.encode(decoded))
    for key, value in event.items():
        if key not in ("timestamp", "sentAt"):
            # Empty maps are defaults, left out when encoding.
            assert again.get(key, {}) == value


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_events() | json_values, max_size=8))
def test_a_batch_is_judged_event_by_event(items: list[Any]) -> None:
    decoded = decode_body(json.dumps({"batch": items}).encode())
    indexes = sorted([i for i, _ in decoded.events] + [e.index for e in decoded.errors])  # type: ignore[misc]
    assert indexes == list(range(len(items)))
    for error in decoded.errors:
        assert error.pointer.startswith(f"/batch/{error.index}")
        assert error.detail


@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_body_decodes_or_fails_with_a_body_error(body: bytes) -> None:
    try:
        decoded = decode_body(body)
    except BodyError as error:
        assert 400 <= error.status < 500
        assert error.detail
    else:
        assert len(decoded.events) + len(decoded.errors) >= 1 or decoded.events == []


@given(valid_events(), st.text(max_size=20), json_values)
def test_mutating_a_valid_event_never_crashes(event: dict[str, Any], key: str, value: Any) -> None:
    event[key] = value
    decoded, error = decode_event(json.dumps(event).encode(), None)
    assert (decoded is None) != (error is None)


def test_camel_case_on_the_wire() -> None:
    event, _ = decode_event(
        b'{"type":"alias","previousId":"a","userId":"u","messageId":"m",'
        b'"context":{"userAgent":"x","groupId":"g"}}',
        None,
    )
    assert isinstance(event, AliasEvent)
    assert (event.previous_id, event.user_id, event.message_id) == ("a", "u", "m")
    assert event.context is not None
    assert event.context.group_id == "g"


def test_unknown_top_level_fields_are_ignored() -> None:
    event, error = decode_event(
        b'{"type":"identify","userId":"u","version":2,"channel":"server","traits":{"a":1}}', None
    )
    assert error is None
    assert isinstance(event, IdentifyEvent)
    assert event.traits == {"a": 1}


def test_commerce_properties_are_typed() -> None:
    props = commerce_properties(
        TrackEvent(
            event="Order Completed",
            properties={
                "order_id": "o1",
                "revenue": "99.50",
                "currency": "EUR",
                "products": [{"product_id": "p1", "price": 49.75, "quantity": 2}],
                "custom": "kept",
            },
        )
    )
    assert props.revenue == 99.5
    assert props.products is not None
    assert props.products[0].quantity == 2


@pytest.mark.parametrize(
    ("properties", "field"),
    [
        ({"price": -1}, "properties.price"),
        ({"price": "NaN"}, "properties.price"),
        ({"quantity": 1.5}, "properties.quantity"),
        ({"currency": "euros"}, "properties.currency"),
        ({"products": {"p1": 1}}, "properties.products"),
    ],
)
def test_commerce_properties_of_the_wrong_type_are_rejected(
    properties: dict[str, Any], field: str
) -> None:
    raw = json.dumps(
        {"type": "track", "event": "Product Added", "userId": "u", "properties": properties}
    )
    event, error = decode_event(raw.encode(), 3)
    assert event is None
    assert error is not None
    assert (error.field, error.index, error.reason) == (field, 3, "ecommerce-schema")


def test_non_commerce_events_keep_free_properties() -> None:
    raw = b'{"type":"track","event":"Video Played","userId":"u","properties":{"price":"free"}}'
    event, error = decode_event(raw, None)
    assert error is None
    assert isinstance(event, TrackEvent)


class TestStamp:
    received = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)

    def test_skew_corrected_by_received_minus_sent(self) -> None:
        event = PageEvent(
            anonymous_id="a",
            timestamp=datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC),  # client clock 2 h ahead
            sent_at=datetime(2026, 11, 23, 12, 0, 4, tzinfo=UTC),
        )
        stamp(event, self.received)
        assert event.timestamp == self.received - timedelta(seconds=4)
        assert event.original_timestamp == datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
        assert event.received_at == self.received
        assert event.message_id

    def test_without_sent_at_the_client_time_is_kept(self) -> None:
        event = PageEvent(anonymous_id="a", timestamp=datetime(2026, 11, 22, 9, 0))  # naive: UTC
        stamp(event, self.received)
        assert event.timestamp == datetime(2026, 11, 22, 9, 0, tzinfo=UTC)

    def test_without_any_client_time_receive_time_is_used(self) -> None:
        event = PageEvent(anonymous_id="a", sent_at=datetime(2026, 1, 1, tzinfo=UTC))
        stamp(event, self.received)
        assert event.timestamp == self.received

    def test_stamping_twice_gives_the_same_times(self) -> None:
        # A replay of an exported event recomputes exactly what was stored.
        event = PageEvent(
            anonymous_id="a",
            timestamp=datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC),
            sent_at=datetime(2026, 11, 23, 12, 0, 4, tzinfo=UTC),
            message_id="m",
        )
        stamp(event, self.received)
        first = (event.timestamp, event.original_timestamp, event.message_id)
        stamp(event, self.received)
        assert (event.timestamp, event.original_timestamp, event.message_id) == first


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timestamp", "0001-01-01T00:00:00Z"),
        ("sentAt", "9999-12-31T00:00:00Z"),
        ("originalTimestamp", "1969-12-31T23:59:59Z"),
        ("receivedAt", "2300-01-01T00:00:00"),
    ],
)
def test_times_out_of_range_are_rejected_before_skew_correction(field: str, value: str) -> None:
    raw = json.dumps({"type": "page", "anonymousId": "a", field: value}).encode()
    event, error = decode_event(raw, None)
    assert event is None
    assert error is not None
    assert (error.field, error.reason) == (field, "time-range")


@given(times, times)
def test_skew_correction_never_overflows_in_range(timestamp: str, sent_at: str) -> None:
    raw = json.dumps(
        {"type": "page", "anonymousId": "a", "timestamp": timestamp, "sentAt": sent_at}
    )
    event, error = decode_event(raw.encode(), None)
    assert error is None
    assert event is not None
    stamp(event, datetime(2026, 11, 23, tzinfo=UTC))
    assert event.timestamp is not None


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.one_of(st.text(max_size=4), st.sampled_from(["k" * 256, "k" * 257])),
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
            st.text(max_size=8), st.sampled_from(["s" * 16_384, "s" * 16_385]),
            st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.none()),
        ),
        max_size=6,
    )
)  # fmt: skip
def test_the_flat_map_shortcut_judges_like_the_walk(value: dict[str, object]) -> None:
    """Knowing the size of the JSON a map came from lets flat maps skip the walk: the
    verdict is the walk's either way."""
    from intently.events.limits import LimitError, check_free_form, within_bounds_without_walk

    size = len(json.dumps(value).encode())

    def verdict(source_size: int | None) -> str | None:
        if source_size is not None and within_bounds_without_walk(value, source_size):
            return None  # the shortcut's verdict
        try:
            check_free_form(value, ["properties"])
        except LimitError as error:
            return error.detail
        return None

    assert (verdict(size) is None) == (verdict(None) is None)


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"type": "track", "event": "E", "properties": {"k" * 257: 1}}, "properties." + "k" * 257),
        ({"type": "page", "properties": {"a": "s" * 16_385}}, "properties.a"),
        ({"type": "identify", "traits": {"k" * 257: "v"}}, "traits." + "k" * 257),
        ({"type": "track", "event": "E", "properties": {"a": [[[[[[[[[[[1]]]]]]]]]]]}},
         "properties.a[0][0][0][0][0][0][0][0][0]"),
        ({"type": "track", "event": "E", "context": {"device": {"k" * 257: 1}}},
         "context.device." + "k" * 257),
        ({"type": "track", "event": "E", "integrations": {"k" * 257: True}},
         "integrations." + "k" * 257),
    ],
)  # fmt: skip
def test_free_form_bounds_are_enforced_on_every_event_kind(
    event: dict[str, object], field: str
) -> None:
    """The decoder's own shortcut for flat maps never lets a bound pass."""
    raw = json.dumps({"anonymousId": "a", **event}).encode()
    decoded, error = decode_event(raw, None)
    assert decoded is None
    assert error is not None
    assert (error.field, error.reason) == (field, "limits")
