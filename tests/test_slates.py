"""Slates: business rules always hold, no near-duplicates, diversity, and logged
position-wise propensities that are the probabilities the slate was drawn with."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intently.act.slates import Candidate, Rules, build_slate

candidate_lists = st.lists(
    st.builds(
        Candidate,
        id=st.sampled_from([f"p{i}" for i in range(12)]),
        score=st.floats(-5, 5),
        category=st.sampled_from([None, "shoes", "socks", "bags"]),
        brand=st.sampled_from([None, "acme", "zeta"]),
        group=st.sampled_from([None, "g1", "g2", "g3"]),
    ),
    max_size=20,
)


@settings(max_examples=300, deadline=None)
@given(candidate_lists, st.integers(0, 10), st.integers(0, 10**6),
       st.lists(st.sampled_from([f"p{i}" for i in range(12)]), max_size=3),
       st.frozensets(st.sampled_from([f"p{i}" for i in range(12)]), max_size=3),
       st.frozensets(st.sampled_from([f"p{i}" for i in range(12)]), max_size=3))  # fmt: skip
def test_rules_and_groups_always_hold(
    candidates: list[Candidate], size: int, seed: int, pinned: list[str],
    excluded: frozenset[str], buried: frozenset[str],
) -> None:  # fmt: skip
    rules = Rules(pinned=pinned, excluded=excluded, buried=buried)
    slate = build_slate(candidates, size, random.Random(seed), rules)
    first: dict[str, Candidate] = {}
    for candidate in candidates:  # a repeated id: its first entry counts
        first.setdefault(candidate.id, candidate)
    assert len(slate.items) <= size
    assert len(set(slate.items)) == len(slate.items)
    assert not set(slate.items) & excluded
    groups = [first[i].group for i in slate.items if first[i].group is not None]
    assert len(groups) == len(set(groups))  # no near-duplicates
    assert all(0 < p <= 1 for p in slate.propensities)
    # Pinned items come first, in their order, as far as they can be placed.
    expected: list[str] = []
    taken: set[str] = set()
    for item in dict.fromkeys(pinned):
        candidate = first.get(item)
        if len(expected) == size or candidate is None or item in excluded:
            continue
        if candidate.group is None or candidate.group not in taken:
            expected.append(item)
            if candidate.group is not None:
                taken.add(candidate.group)
    assert slate.items[: len(expected)] == expected
    rest = slate.items[len(expected) :]
    # Buried items come only after every allowed unburied one is used up.
    kinds = [item in buried for item in rest]
    assert kinds == sorted(kinds)
    # The slate is as long as the rules allow: one per group, every ungrouped item.
    left = [c for i, c in first.items() if i not in excluded and i not in expected]
    room = len([c for c in left if c.group is None]) + len(
        {c.group for c in left if c.group is not None} - taken
    )
    assert len(slate.items) == min(size, len(expected) + room)


def test_the_same_seed_gives_the_same_slate() -> None:
    candidates = [Candidate(f"p{i}", score=i / 10, category=f"c{i % 3}") for i in range(20)]
    first = build_slate(candidates, 6, random.Random(4))
    again = build_slate(candidates, 6, random.Random(4))
    assert first == again


def test_logged_propensities_are_the_draw_frequencies() -> None:
    candidates = [Candidate("a", 1.0), Candidate("b", 0.9), Candidate("c", 0.5, brand="x"),
                  Candidate("d", 0.0, brand="x")]  # fmt: skip
    rng = random.Random(0)
    rounds = 20_000
    firsts: Counter[str] = Counter()
    logged: Counter[str] = Counter()
    pairs: Counter[tuple[str, str]] = Counter()
    pair_probability: dict[tuple[str, str], float] = {}
    for _ in range(rounds):
        slate = build_slate(candidates, 2, rng)
        firsts[slate.items[0]] += 1
        logged[slate.items[0]] = slate.propensities[0]  # the same every time: no history
        key = (slate.items[0], slate.items[1])
        pairs[key] += 1
        pair_probability[key] = math.prod(slate.propensities)
    for item, probability in logged.items():
        assert firsts[item] / rounds == pytest.approx(probability, abs=0.01)
    for key, probability in pair_probability.items():
        assert pairs[key] / rounds == pytest.approx(probability, abs=0.01)
    assert sum(pair_probability.values()) == pytest.approx(1.0, abs=1e-9)


def test_diversity_spreads_categories_and_brands() -> None:
    candidates = [Candidate(f"s{i}", 1.0, category="shoes", brand="acme") for i in range(5)]
    candidates += [Candidate("bag", 0.8, category="bags", brand="zeta")]
    rng = random.Random(1)
    with_bag = sum("bag" in build_slate(candidates, 2, rng).items for _ in range(500))
    without = sum(
        "bag" in build_slate(candidates, 2, rng, same_category_penalty=0,
                             same_brand_penalty=0).items
        for _ in range(500)
    )  # fmt: skip
    # A lower score, but the only other category and brand: about three times in four
    # as the second item (the first is nearly always a shoe); without the penalties, 1 in 15.
    assert with_bag > 300
    assert without < 100


def test_a_slate_larger_than_the_candidates_and_bad_input() -> None:
    rng = random.Random(0)
    slate = build_slate([Candidate("a", 1.0), Candidate("b", 0.5, group="g"),
                         Candidate("c", 0.4, group="g")], 8, rng)  # fmt: skip
    assert sorted(slate.items) in (["a", "b"], ["a", "c"])
    assert build_slate([], 3, rng).items == []
    with pytest.raises(ValueError, match="finite"):
        build_slate([Candidate("a", float("nan"))], 1, rng)
    with pytest.raises(ValueError, match="negative"):
        build_slate([Candidate("a", 1.0)], -1, rng)
    with pytest.raises(ValueError, match="penalties cannot be negative"):
        build_slate([Candidate("a", 1.0)], 1, rng, same_category_penalty=-1.0)
    pinned = build_slate([Candidate("a", 1.0), Candidate("z", -9.0)], 2, rng,
                         Rules(pinned=["z"]))  # fmt: skip
    assert (pinned.items[0], pinned.propensities[0], pinned.reasons[0]) == (
        "z", 1.0, "pinned by a rule",
    )  # fmt: skip


def test_boosts_must_be_finite_and_huge_scores_do_not_overflow() -> None:
    rng = random.Random(0)
    with pytest.raises(ValueError, match="boosts must be finite"):
        build_slate([Candidate("a", 1.0)], 1, rng, Rules(boost={"a": float("inf")}))
    slate = build_slate([Candidate("a", 1e308), Candidate("b", 0.0)], 2, rng,
                        Rules(boost={"a": 1e308}))  # fmt: skip
    assert slate.items[0] == "a"
    assert all(0 < p <= 1 for p in slate.propensities)


def expected_propensities(
    candidates: list[Candidate], slate_items: list[str], rules: Rules, knobs: tuple[float, ...]
) -> list[float]:
    """From scratch: at each position, every candidate still allowed scores its score plus
    its boost, minus a penalty per item above it on the slate with its category or brand;
    the probability is the floor-mixed softmax over those allowed (the unburied ones while
    any is left)."""
    temperature, floor, category_penalty, brand_penalty = knobs
    first: dict[str, Candidate] = {}
    for candidate in candidates:
        if candidate.id not in rules.excluded:
            first.setdefault(candidate.id, candidate)
    found = []
    for position, item in enumerate(slate_items):
        above = [first[i] for i in slate_items[:position]]
        if item in rules.pinned and all(
            first[i].id in rules.pinned for i in slate_items[: position + 1]
        ):
            found.append(1.0)
            continue
        taken_groups = {c.group for c in above if c.group is not None}
        allowed = [c for i, c in first.items() if i not in slate_items[:position]
                   and (c.group is None or c.group not in taken_groups)]  # fmt: skip
        choices = [c for c in allowed if c.id not in rules.buried] or allowed

        def score(c: Candidate, above: list[Candidate] = above) -> float:
            penalty = sum(
                category_penalty for a in above if c.category and a.category == c.category
            )
            penalty += sum(brand_penalty for a in above if c.brand and a.brand == c.brand)
            return c.score + rules.boost.get(c.id, 0.0) - penalty

        top = max(score(c) for c in choices)
        weights = {c.id: math.exp((score(c) - top) / temperature) for c in choices}
        total = sum(weights.values())
        found.append((1 - floor) * weights[item] / total + floor / len(choices))
    return found


@settings(max_examples=300, deadline=None)
@given(candidate_lists, st.integers(0, 10), st.integers(0, 10**6),
       st.frozensets(st.sampled_from([f"p{i}" for i in range(12)]), max_size=3),
       st.frozensets(st.sampled_from([f"p{i}" for i in range(12)]), max_size=3),
       st.sampled_from([0.1, 0.5, 2.0]))  # fmt: skip
def test_logged_propensities_equal_a_from_scratch_computation(
    candidates: list[Candidate], size: int, seed: int, buried: frozenset[str],
    boosted: frozenset[str], temperature: float,
) -> None:  # fmt: skip
    """The slate keeps its weights incrementally; each logged probability must equal the
    definition computed afresh from the items above it."""
    rules = Rules(boost=dict.fromkeys(boosted, 0.7), buried=buried)
    knobs = (temperature, 0.05, 0.3, 0.15)
    slate = build_slate(candidates, size, random.Random(seed), rules,
                        temperature=temperature)  # fmt: skip
    expected = expected_propensities(candidates, slate.items, rules, knobs)
    assert slate.propensities == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_tiny_temperatures_and_one_category_do_not_break_the_draw() -> None:
    """Every candidate shares one category and brand: the penalties pile up position after
    position, and at a temperature of 0.001 the raw weights would underflow (found in
    review: a math domain error made every decision fall back)."""
    candidates = [Candidate(f"p{i}", i / 50, category="c", brand="b") for i in range(60)]
    for temperature, size in ((0.001, 10), (0.01, 30), (0.02, 48)):
        slate = build_slate(candidates, size, random.Random(1), temperature=temperature, floor=1e-9)
        assert len(slate.items) == size
        assert all(0 < p <= 1 for p in slate.propensities)
        if temperature == 0.001:  # the best, all but surely (p58 weighs exp(-20))
            assert slate.items[0] == "p59"
