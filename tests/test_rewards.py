"""Rewards attributed to the decisions that caused them: by decision id, by last touch
within the window, by each placement's definition, and 0 when nothing happened."""

from __future__ import annotations

import pytest

from intently.learn.rewards import Attribution, Decision, Observed, Reward

MINUTE = 60_000


def attribution() -> tuple[Attribution, list[Reward]]:
    reported: list[Reward] = []
    return Attribution(on_reward=reported.append, window_ms=30 * MINUTE), reported


def shown(decision_id: str, items: list[str], at: int, reward: str = "click",
          visitor: str = "v1", placement: str = "pdp_recs") -> Decision:  # fmt: skip
    return Decision(decision_id, visitor, placement, items, at, reward)  # type: ignore[arg-type]


def test_a_click_goes_to_the_latest_decision_that_showed_the_item() -> None:
    rewards, reported = attribution()
    rewards.decided(shown("d1", ["a", "b"], 0))
    rewards.decided(shown("d2", ["b", "c"], 1 * MINUTE))
    rewards.decided(shown("d3", ["b"], 2 * MINUTE, visitor="someone-else"))
    got = rewards.observe(Observed("v1", 3 * MINUTE, "click", [("b", 0.0)]))
    assert [(r.decision_id, r.item, r.value) for r in got] == [("d2", "b", 1.0)]
    assert reported == got
    # An item no decision of this visitor showed: no reward.
    assert rewards.observe(Observed("v1", 4 * MINUTE, "click", [("z", 0.0)])) == []


def test_an_event_naming_its_decision_goes_to_it_and_late_or_unknown_ones_are_counted() -> None:
    rewards, _ = attribution()
    rewards.decided(shown("d1", ["a"], 0))
    rewards.decided(shown("d2", ["a"], MINUTE))
    got = rewards.observe(Observed("v1", 2 * MINUTE, "click", [("a", 0.0)], decision_id="d1"))
    assert [r.decision_id for r in got] == ["d1"]
    assert rewards.observe(Observed("v1", 2 * MINUTE, "click", [], decision_id="nope")) == []
    assert rewards.observe(Observed("v1", 40 * MINUTE, "click", [], decision_id="d2")) == []
    assert rewards.unattributed == 2


def test_revenue_counts_only_the_order_lines_of_shown_items() -> None:
    rewards, _ = attribution()
    rewards.decided(shown("d1", ["a", "b"], 0, reward="revenue"))
    order = Observed("v1", 5 * MINUTE, "conversion", [("a", 30.0), ("z", 99.0), ("b", 12.5)])
    got = rewards.observe(order)
    assert [(r.item, r.value) for r in got] == [("a", 30.0), ("b", 12.5)]
    # A click is not revenue; an infinite line is not a number to learn from.
    assert rewards.observe(Observed("v1", 6 * MINUTE, "click", [("a", 0.0)])) == []
    bad = Observed("v1", 7 * MINUTE, "conversion", [("a", float("inf"))])
    assert rewards.observe(bad) == []


def test_a_decision_without_a_positive_reward_reports_zero_once_its_window_closes() -> None:
    rewards, reported = attribution()
    rewards.decided(shown("quiet", ["a"], 0))
    rewards.decided(shown("clicked", ["b"], 0))
    rewards.observe(Observed("v1", MINUTE, "click", [("b", 0.0)]))
    assert rewards.close_until(29 * MINUTE) == []  # still open
    closed = rewards.close_until(30 * MINUTE)
    assert [(r.decision_id, r.value, r.item) for r in closed] == [("quiet", 0.0, None)]
    assert [r.decision_id for r in reported] == ["clicked", "quiet"]
    assert rewards.close_until(10**9) == []  # once only
    # After its window, a click on the item no longer counts.
    assert rewards.observe(Observed("v1", 31 * MINUTE, "click", [("b", 0.0)])) == []


def test_outcomes_other_than_the_placements_reward_are_not_rewards() -> None:
    rewards, _ = attribution()
    rewards.decided(shown("d1", ["a"], 0, reward="add_to_cart"))
    assert rewards.observe(Observed("v1", MINUTE, "click", [("a", 0.0)])) == []
    got = rewards.observe(Observed("v1", 2 * MINUTE, "add_to_cart", [("a", 0.0)]))
    assert [(r.decision_id, r.value) for r in got] == [("d1", 1.0)]


def test_an_offer_click_naming_its_decision_counts_for_the_decision_as_a_whole() -> None:
    rewards, _ = attribution()
    rewards.decided(shown("hero", ["welcome10"], 0, placement="home_hero"))
    got = rewards.observe(Observed("v1", MINUTE, "click", [], decision_id="hero"))
    assert [(r.decision_id, r.item, r.value) for r in got] == [("hero", None, 1.0)]


def test_a_decision_id_is_recorded_once() -> None:
    rewards, _ = attribution()
    rewards.decided(shown("d1", ["a"], 0))
    with pytest.raises(ValueError, match="already recorded"):
        rewards.decided(shown("d1", ["a"], 0))


def test_open_decisions_are_bounded_the_oldest_closing_early() -> None:
    """Memory stays bounded under any load: past `max_open`, the oldest open decision is
    closed early, with its zero reported (as when its window ends)."""
    reported: list[Reward] = []
    attribution = Attribution(reported.append, max_open=3)
    for i in range(5):
        attribution.decided(Decision(f"d{i}", "a:v", "home_hero", ["x"], at_ms=1000 + i))
    assert sorted(attribution.decisions) == ["d2", "d3", "d4"]
    assert attribution.closed_early == 2
    assert [(r.decision_id, r.value) for r in reported] == [("d0", 0.0), ("d1", 0.0)]
    click = Observed("a:v", 1010, "click", [("x", 0.0)])
    assert [r.decision_id for r in attribution.observe(click)] == ["d4"]  # last touch


def test_last_touch_prefers_the_events_own_device_and_bounds_each_visitor() -> None:
    reported: list[Reward] = []
    attribution = Attribution(reported.append, max_open_per_visitor=2)
    laptop = Decision("d_laptop", "a:laptop", "pdp", ["x"], at_ms=1000, aliases=("p:1",))
    phone = Decision("d_phone", "a:phone", "pdp", ["x"], at_ms=2000, aliases=("p:1",))
    attribution.decided(laptop)
    attribution.decided(phone)
    click = Observed("a:laptop", 3000, "click", [("x", 0.0)], aliases=("p:1",))
    assert [r.decision_id for r in attribution.observe(click)] == ["d_laptop"]
    # A third decision of the same person: the profile's list holds two, the oldest goes.
    attribution.decided(Decision("d3", "a:tablet", "pdp", ["y"], at_ms=4000, aliases=("p:1",)))
    assert "d_laptop" not in attribution.decisions
    assert attribution.closed_early == 1


def test_decisions_closed_early_do_not_pile_up_until_their_window_would_end() -> None:
    """A visitor past their bound closes a decision with every new one; what is kept for
    the decisions still open stays proportional to them, not to all decisions made."""
    reported: list[Reward] = []
    attribution = Attribution(reported.append, max_open_per_visitor=3)
    for i in range(20_000):
        attribution.decided(Decision(f"d{i}", "a:bot", "pdp", ["x"], at_ms=1000 + i))
    assert sorted(attribution.decisions) == ["d19997", "d19998", "d19999"]
    assert attribution.closed_early == 19_997
    assert len(attribution._closing) + len(attribution._behind) <= 2 * 3 + 1024 + 1  # the bound
    # Windows still close on time for those open, and only for them.
    closed = attribution.close_until(1000 + 19_999 + 30 * MINUTE)
    assert sorted(r.decision_id for r in closed) == ["d19997", "d19998", "d19999"]
    assert not attribution.decisions


def test_windows_close_in_time_order_even_when_decisions_come_out_of_order() -> None:
    """A decision made "earlier" than the last one (the clock went back, or decisions of
    several threads) still closes when its own window ends: not before, not after."""
    rewards, reported = attribution()
    made = [("d1", 10), ("d2", 12), ("d3", 5), ("d4", 12), ("d5", 1), ("d6", 20)]
    for decision_id, minute in made:
        rewards.decided(shown(decision_id, ["a"], minute * MINUTE, visitor=decision_id))
    for now in range(0, 60):
        closed = [r.decision_id for r in rewards.close_until(now * MINUTE)]
        expected = sorted(
            (minute, decision_id) for decision_id, minute in made if minute + 30 == now
        )
        assert closed == [decision_id for _, decision_id in expected]
    assert sorted(r.decision_id for r in reported) == sorted(d for d, _ in made)
