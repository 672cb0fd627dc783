"""Reading one product's properties (or a search's query) straight from the event gives the
facts that converting them with the e-commerce schema gives, for every event the schema
accepts."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intently.context.facts import (
    _COMMERCE_READERS,
    _READ_DIRECTLY,
    _STAGE_OF_EVENT,
    Facts,
    _read_track,
)
from intently.events.ecommerce import commerce_properties, surely_valid
from intently.events.schema import TrackEvent

numbers = st.one_of(
    st.integers(0, 10**6), st.floats(0, 1e6, allow_nan=False), st.just(True),
    st.integers(0, 999).map(str), st.floats(0, 999).map(lambda x: f"{x:.2f}"),
)  # fmt: skip
properties = st.fixed_dictionaries(
    {},
    optional={
        "product_id": st.one_of(st.text(min_size=1, max_size=8), st.integers(0, 99), st.none()),
        "price": st.one_of(numbers, st.none()),
        "quantity": st.one_of(st.integers(0, 9), st.integers(0, 9).map(str), st.just(2.0)),
        "category": st.one_of(st.text(max_size=6), st.none(), st.integers(0, 3)),
        "brand": st.one_of(st.text(max_size=6), st.none()),
        "query": st.one_of(st.text(max_size=8), st.none(), st.integers(0, 3), st.just(" A  b ")),
        "other": st.text(max_size=4),
    },
)


def facts() -> Facts:
    return Facts(kind="k", at_ms=0, anonymous_id="a", user_id=None)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(_READ_DIRECTLY)), properties)
def test_one_product_read_directly_equals_the_schema_conversion(
    name: str, sent: dict[str, Any]
) -> None:
    event = TrackEvent(event=name, properties=sent)
    try:
        typed = commerce_properties(event)
    except msgspec.ValidationError:
        return  # refused at ingest: never reaches the context layer
    expected = facts()  # what reading through the schema gives
    expected.checkout_stage = _STAGE_OF_EVENT.get(name, 0)
    expected.properties = event.properties  # (kept as they came, for custom metrics)
    _COMMERCE_READERS[name](typed, expected)
    direct = facts()  # what the entry point gives: the shortcut when `surely_valid`
    _read_track(event, direct)
    # Encoded, so that 42 and 42.0 differ (Struct equality would let them pass).
    assert msgspec.json.encode(direct) == msgspec.json.encode(expected)


def test_facts_of_a_record_logged_without_its_time_in_ms_compute_it() -> None:
    """Records logged before `at_ms` was kept decode with 0 there: the time comes from the
    timestamp, the same as for a record that carries it."""
    from datetime import UTC, datetime

    from intently.context.facts import facts_of
    from intently.events.enrich import Enrichment
    from intently.events.record import EventRecord
    from intently.events.referrer import Referrer

    moment = datetime(2039, 7, 18, 11, 1, 13, 601000, tzinfo=UTC)
    event = TrackEvent(event="Product Viewed", anonymous_id="a", timestamp=moment)
    old = EventRecord(event, Enrichment(referrer=Referrer("direct")))
    new = EventRecord(event, Enrichment(referrer=Referrer("direct")), at_ms=2194599673601)
    assert facts_of(old).at_ms == facts_of(new).at_ms == 2194599673601


# -- the ingest shortcut for e-commerce validation ----------------------------------------

edge_strings = st.one_of(
    st.text(max_size=3), st.sampled_from(["", "x" * 256, "x" * 257, "y" * 2048, "y" * 2049]),
    st.sampled_from(["z" * 8192, "z" * 8193, "é" * 256, "é" * 257]),
)  # fmt: skip
edge_numbers = st.one_of(
    st.integers(-3, 3), st.sampled_from([10**6, 10**6 + 1, 10**12, 10**12 + 1, 2**70, -(2**70)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e12, 1e12 + 1, -0.0, 0.5, 2.0, 7.25]),
    st.booleans(),
)  # fmt: skip
any_value = st.one_of(edge_strings, edge_numbers, st.none(), st.lists(st.integers(), max_size=2))
product_keys = st.sampled_from(
    ["product_id", "sku", "category", "name", "brand", "variant", "coupon", "url", "image_url",
     "price", "quantity", "position", "color", "query", "revenue", "products"]
)  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(st.dictionaries(product_keys, any_value, max_size=6))
def test_the_validation_shortcut_never_accepts_what_the_schema_refuses(
    sent: dict[str, Any],
) -> None:

    event = TrackEvent(event="Product Viewed", properties=sent)
    if surely_valid(event):
        commerce_properties(event)  # raises if the schema refuses them


def test_the_validation_shortcut_takes_what_clients_usually_send() -> None:
    usual = {"product_id": "p1", "sku": "SKU-1", "category": "running", "name": "Shoe",
             "brand": "Acme", "price": 89.9, "quantity": 1, "url": "https://s/p1",
             "color": "red"}  # fmt: skip
    assert surely_valid(TrackEvent(event="Product Viewed", properties=usual))
    assert surely_valid(TrackEvent(event="Products Searched", properties={"query": "red shoe"}))
    assert not surely_valid(TrackEvent(event="Product Viewed", properties={"price": "89.9"}))
    assert not surely_valid(TrackEvent(event="Order Completed", properties={"revenue": 1.0}))


@pytest.mark.parametrize(
    "sent",
    [
        {"product_id": "p1", "quantity": -3},
        {"product_id": "p1", "price": 10**400},
        {"product_id": "", "price": 5.0},
        {"product_id": "p1", "price": float("nan")},
        {"product_id": "p1", "revenue": "abc"},
    ],
)
def test_properties_the_schema_refuses_give_no_product(sent: dict[str, Any]) -> None:
    """Log history may predate today's checks: what the schema refuses is not read."""
    from intently.context.facts import _read_track

    direct = facts()
    _read_track(TrackEvent(event="Product Viewed", properties=sent), direct)
    assert direct.product is None
    expected = facts()
    expected.properties = sent  # kept as they came (custom metrics read them), nothing more
    assert direct == expected
