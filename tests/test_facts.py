"""Reading one product's properties straight from the event gives the facts that converting
them with the e-commerce schema gives, for every event the schema accepts."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from intently.context.facts import (
    _COMMERCE_READERS,
    _ONE_PRODUCT,
    Facts,
    _read_one_product,
)
from intently.events.ecommerce import commerce_properties
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
        "other": st.text(max_size=4),
    },
)


def facts() -> Facts:
    return Facts(kind="k", at_ms=0, anonymous_id="a", user_id=None)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(_ONE_PRODUCT)), properties)
def test_one_product_read_directly_equals_the_schema_conversion(
    name: str, sent: dict[str, Any]
) -> None:
    event = TrackEvent(event=name, properties=sent)
    try:
        typed = commerce_properties(event)
    except msgspec.ValidationError:
        return  # refused at ingest: never reaches the context layer
    expected = facts()
    _COMMERCE_READERS[name](typed, expected)
    direct = facts()
    if _read_one_product(name, sent, direct):
        # Encoded, so that 42 and 42.0 differ (Struct equality would let them pass).
        assert msgspec.json.encode(direct) == msgspec.json.encode(expected)
    else:  # it declined: nothing was set, and the schema path is taken instead
        assert direct == facts()


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
