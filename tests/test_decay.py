"""Forward-decayed affinities equal the direct sum of decayed contributions, also across
a rebase (far apart in time) and a merge of two owners with different bases."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from intently.context.decay import DecayedScores

HOUR = 3_600_000
DECAY = DecayedScores(half_life_ms=HOUR, max_entries=10)


def owner(base_ms: int) -> SimpleNamespace:
    return SimpleNamespace(affinity_base_ms=base_ms, categories=None, brands=None)


def direct(contributions: list[tuple[int, float]], now_ms: int) -> float:
    return sum(w * 2.0 ** (-(now_ms - t) / HOUR) for t, w in contributions)


def test_a_rebase_for_one_map_keeps_the_other_right() -> None:
    # 700 half-lives apart: adding the category rebases, and the brand added before must
    # be rescaled with it (they share the base).
    person = owner(0)
    far = 700 * HOUR
    DECAY.add(person, None, "acme", 3.0, at_ms=0)
    DECAY.add(person, "shoes", None, 1.0, at_ms=far)
    assert person.affinity_base_ms == far
    now = far - 690 * HOUR  # a read between the two, where both values are finite
    brand = DECAY.value(person.brands, person.affinity_base_ms, "acme", now)
    category = DECAY.value(person.categories, person.affinity_base_ms, "shoes", now)
    assert brand == pytest.approx(direct([(0, 3.0)], now), rel=1e-9)
    assert category == pytest.approx(direct([(far, 1.0)], now), rel=1e-9)


def test_merging_owners_with_different_bases_adds_their_decayed_scores() -> None:
    into, other = owner(0), owner(800 * HOUR)
    DECAY.add(into, "shoes", "acme", 2.0, at_ms=5 * HOUR)
    DECAY.add(other, "shoes", "zen", 1.0, at_ms=801 * HOUR)
    DECAY.merge(into, other)
    now = 801 * HOUR
    shoes = DECAY.value(into.categories, into.affinity_base_ms, "shoes", now)
    assert shoes == pytest.approx(direct([(5 * HOUR, 2.0), (801 * HOUR, 1.0)], now), rel=1e-9)
    zen = DECAY.value(into.brands, into.affinity_base_ms, "zen", now)
    assert zen == pytest.approx(1.0, rel=1e-9)
