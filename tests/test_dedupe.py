"""The messageId window, checked step by step against a from-scratch answer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from intently.log.dedupe import MessageIdWindow

WINDOW = 100


def reference(history: list[tuple[str, int, bool]], message_id: str, now: int) -> bool:
    """From scratch: new unless an accepted add of the same id lies within the window."""
    return not any(
        seen == message_id and accepted and now - at < WINDOW for seen, at, accepted in history
    )


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 40)), max_size=200))
def test_matches_the_from_scratch_answer_after_every_step(steps: list[tuple[str, int]]) -> None:
    window = MessageIdWindow(window_ms=WINDOW, max_entries=1_000)
    history: list[tuple[str, int, bool]] = []
    now = 0
    for message_id, gap in steps:
        now += gap  # live traffic: receive times never go back
        expected = reference(history, message_id, now)
        assert window.add(message_id, now) == expected
        history.append((message_id, now, expected))
        # Expired ids are gone from memory, not only ignored.
        assert all(now - at < WINDOW for _, at in window._seen.items())


def test_bounded_by_max_entries_oldest_first() -> None:
    window = MessageIdWindow(window_ms=10_000, max_entries=3)
    for index, message_id in enumerate("abcd"):
        assert window.add(message_id, index)
    assert len(window) == 3
    assert "a" not in window
    assert not window.add("d", 5)


def test_discard_forgets_an_id() -> None:
    window = MessageIdWindow(window_ms=1_000, max_entries=10)
    window.add("m", 0)
    window.discard("m")
    assert window.add("m", 1)


def test_load_counts_what_it_added() -> None:
    window = MessageIdWindow(window_ms=1_000, max_entries=10)
    assert window.load([("a", 0), ("b", 1), ("a", 2)]) == 2


@pytest.mark.parametrize(("window_ms", "max_entries"), [(0, 1), (1, 0)])
def test_invalid_construction_fails_fast(window_ms: int, max_entries: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        MessageIdWindow(window_ms, max_entries)


def test_history_out_of_order_expires_nothing() -> None:
    window = MessageIdWindow(window_ms=10, max_entries=100)
    assert window.add("late", 1000, expire=False)
    assert window.add("early", 0, expire=False)
    assert not window.add("early", 5, expire=False)
    assert not window.add("late", 1001, expire=False)
    # Ids read back from the log do not move the live watermark either.
    window.load([("future", 10_000)])
    assert window.add("live", 20)
    assert "future" in window
    # Whatever memory still holds, an id outside the window is new again.
    assert window.add("early", 20)
