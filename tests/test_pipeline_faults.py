"""A bug in one state stage does not cost the others their events, nor the next events
their state: each event is applied on its own, and each sink on its own."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from intently import Engine, ManualClock
from intently.events.record import EventRecord
from intently.events.validate import decode_body
from support import START, make_settings, track

pytestmark = pytest.mark.anyio


class Broken:
    def apply_many(self, records: Sequence[EventRecord]) -> None:
        raise RuntimeError("a bug")


async def ingest(engine: Engine, *events: dict[str, object]) -> None:
    decoded = decode_body(json.dumps({"batch": list(events)}).encode())
    result = await engine.pipeline.ingest(decoded.events)
    assert result.accepted == len(events)


async def test_a_failing_sink_does_not_keep_the_others_from_the_events(tmp_path: Path) -> None:
    engine = Engine(make_settings(tmp_path), clock=ManualClock(START))
    try:
        engine.pipeline.sinks.insert(0, Broken())
        await ingest(engine, track(anonymousId="a1"), track(anonymousId="a2"))
        assert engine.context.lookup("a1") is not None  # the context stage ran after it
        assert engine.context.lookup("a2") is not None
    finally:
        engine.close()


async def test_an_event_whose_step_fails_does_not_stop_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine(make_settings(tmp_path), clock=ManualClock(START))
    try:
        rules = engine.context.rules
        real_apply = rules.apply

        def apply(profile, facts):  # type: ignore[no-untyped-def]
            if facts.anonymous_id == "bad":
                raise RuntimeError("a bug")
            real_apply(profile, facts)

        monkeypatch.setattr(rules, "apply", apply)
        await ingest(engine, track(anonymousId="bad"), track(anonymousId="good"))
        assert engine.context.failed == 1
        good = engine.context.lookup("good")
        assert good is not None
        assert good.counts.get("Product Viewed") == 1
        # What the failed step had changed is committed like any change (the profile it
        # created and linked), so the state written matches a replay of the log.
        assert engine.store.applied_seq == 2
    finally:
        engine.close()
