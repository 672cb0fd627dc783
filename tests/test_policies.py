"""One conformance suite over every decision policy: eligibility, propensities, the
exploration floor, determinism, and learning from rewards in a simulation."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intently.act import features as features_module
from intently.act.features import FeatureHasher, contributions
from intently.act.policies import (
    BetaThompson,
    EpsilonGreedy,
    Floats,
    LinThompson,
    LinUCB,
    Policy,
    RulesFirst,
    _best_with_floor,
    choose,
)
from support import GilTakes

DIMENSIONS = 16
FLOOR = 0.05
ACTIONS = [f"offer-{i}" for i in range(6)]

POLICIES: dict[str, Callable[[int], Policy]] = {
    "epsilon-greedy": lambda seed: EpsilonGreedy(epsilon=FLOOR),
    "beta-thompson": lambda seed: BetaThompson(floor=FLOOR, draws=500, seed=seed),
    "linucb": lambda seed: LinUCB(dimensions=DIMENSIONS, alpha=0.5, floor=FLOOR),
    "lin-thompson": lambda seed: LinThompson(
        dimensions=DIMENSIONS, floor=FLOOR, draws=500, seed=seed
    ),
    "rules-first": lambda seed: RulesFirst(priority=["offer-3", "offer-1"], floor=FLOOR),
}
LEARNING = [name for name in POLICIES if name != "rules-first"]
CONTEXTUAL = ["linucb", "lin-thompson"]

hasher = FeatureHasher(DIMENSIONS)
CONTEXTS = [hasher.vector({"device": device, "returning": returning})
            for device in ("mobile", "desktop") for returning in (True, False)]  # fmt: skip


def click_rate(action: str, context_index: int) -> float:
    """A simulated shop: offer-2 is best on the first two contexts, offer-4 on the others;
    the rest click at 3%."""
    best = "offer-2" if context_index < 2 else "offer-4"
    return 0.35 if action == best else 0.03


@pytest.fixture(params=sorted(POLICIES))
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_only_eligible_actions_are_chosen_and_each_keeps_the_floor(name: str) -> None:
    policy = POLICIES[name](1)
    rng = random.Random(1)
    eligible = ["offer-5", "offer-1", "offer-4"]
    for round_ in range(300):
        context = CONTEXTS[round_ % 4]
        choice = choose(policy, eligible, context, rng)
        assert choice.action in eligible
        assert list(choice.propensities) == eligible
        assert sum(choice.propensities.values()) == pytest.approx(1.0, abs=1e-12)
        assert min(choice.propensities.values()) >= FLOOR / len(eligible) - 1e-12
        policy.update(choice.action, float(choice.action == "offer-4"), context)
    # The choice keeps the distribution it was drawn from, whatever the caller does next
    # with its list (the decider removes what was drawn, to draw the next).
    working = list(eligible)
    choice = choose(policy, working, CONTEXTS[0], rng)
    working.remove(choice.action)
    assert list(choice.propensities) == eligible
    assert choice.propensities[choice.action] == choice.propensity


def test_the_same_seed_gives_the_same_choices(name: str) -> None:
    def run() -> list[tuple[str, float]]:
        policy, rng = POLICIES[name](7), random.Random(7)
        out = []
        for round_ in range(100):
            choice = choose(policy, ACTIONS, CONTEXTS[round_ % 4], rng)
            policy.update(choice.action, float(round_ % 3 == 0), CONTEXTS[round_ % 4])
            out.append((choice.action, choice.propensity))
        return out

    assert run() == run()


def test_logged_propensities_are_the_frequencies_actions_are_drawn_with(name: str) -> None:
    policy, rng = POLICIES[name](3), random.Random(3)
    for _ in range(200):  # some learning first, so the distribution is not uniform
        choice = choose(policy, ACTIONS, CONTEXTS[0], rng)
        policy.update(choice.action, float(rng.random() < click_rate(choice.action, 0)),
                      CONTEXTS[0])  # fmt: skip
    drawn: Counter[str] = Counter()
    logged: Counter[str] = Counter()
    rounds = 4000
    for _ in range(rounds):
        choice = choose(policy, ACTIONS, CONTEXTS[0], rng)
        drawn[choice.action] += 1
        for action, p in choice.propensities.items():
            logged[action] += p / rounds
    for action in ACTIONS:
        assert drawn[action] / rounds == pytest.approx(logged[action], abs=0.025)


def simulate(name: str, rounds: int, seed: int) -> float:
    """The click-through of the last half of `rounds` decisions."""
    policy, rng = POLICIES[name](seed), random.Random(seed)
    clicks = 0
    for round_ in range(rounds):
        index = rng.randrange(4)
        choice = choose(policy, ACTIONS, CONTEXTS[index], rng)
        clicked = rng.random() < click_rate(choice.action, index)
        policy.update(choice.action, float(clicked), CONTEXTS[index])
        if round_ >= rounds // 2:
            clicks += clicked
    return clicks / (rounds - rounds // 2)


UNIFORM = (0.35 + 5 * 0.03) / 6  # 0.083: choosing at random
BEST_FIXED = (0.35 + 0.03) / 2  # 0.19: the best single offer for every context


@pytest.mark.parametrize("learner", LEARNING)
def test_learning_from_rewards_raises_the_click_through(learner: str) -> None:
    rates = [simulate(learner, 3000, seed) for seed in (11, 12)]
    assert min(rates) > UNIFORM + 0.06, rates


@pytest.mark.parametrize("learner", CONTEXTUAL)
def test_contextual_policies_learn_what_each_context_prefers(learner: str) -> None:
    rates = [simulate(learner, 3000, seed) for seed in (21, 22)]
    assert min(rates) > BEST_FIXED + 0.08, rates  # above any context-free choice


def test_rules_first_puts_the_mass_on_the_first_eligible_rule() -> None:
    policy = RulesFirst(priority=["offer-3", "offer-1"], floor=FLOOR)
    rng = random.Random(0)
    assert choose(policy, ACTIONS, None, rng).propensities["offer-3"] == pytest.approx(
        1 - FLOOR + FLOOR / 6
    )
    without_3 = ["offer-0", "offer-1", "offer-2"]
    assert (
        max(choose(policy, without_3, None, rng).propensities.items(), key=lambda kv: kv[1])[0]
        == "offer-1"
    )


def learned(policy: Policy) -> str:
    """What a policy has learned, comparable (its sampling generator aside)."""
    state = {k: v for k, v in vars(policy).items() if k != "_rng"}
    models = state.pop("models", {})
    return repr((state, {a: (m.a_inv.tolist(), m.b.tolist()) for a, m in models.items()}))


@pytest.mark.parametrize("reward", [float("nan"), float("inf"), -float("inf")])
def test_rewards_must_be_finite(name: str, reward: float) -> None:
    policy = POLICIES[name](0)
    policy.update("offer-2", 1.0, CONTEXTS[0])
    before = learned(policy)
    with pytest.raises(ValueError, match="finite"):
        policy.update("offer-1", reward, CONTEXTS[0])
    assert learned(policy) == before  # nothing was learned from it


def test_beta_thompson_takes_rewards_in_zero_to_one_only() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        BetaThompson().update("offer-1", 2.0, None)


def test_no_action_or_repeated_actions_are_refused() -> None:
    rng = random.Random(0)
    with pytest.raises(ValueError, match="no eligible action"):
        choose(EpsilonGreedy(), [], None, rng)
    with pytest.raises(ValueError, match="distinct"):
        choose(EpsilonGreedy(), ["a", "a"], None, rng)
    with pytest.raises(ValueError, match="features"):
        LinUCB(dimensions=8).distribution(["a"], np.ones(9))


def test_linear_models_match_a_batch_ridge_regression() -> None:
    """The rank-one updates give the ridge solution computed from scratch."""
    rng = np.random.default_rng(5)
    policy = LinUCB(dimensions=DIMENSIONS, regularization=2.0)
    xs, rewards = [], []
    for _ in range(200):
        x = CONTEXTS[int(rng.integers(4))] + rng.normal(0, 0.1, DIMENSIONS)
        reward = float(rng.random())
        policy.update("offer-1", reward, x)
        xs.append(x)
        rewards.append(reward)
    design = np.array(xs)
    a = 2.0 * np.eye(DIMENSIONS) + design.T @ design
    theta = np.linalg.solve(a, design.T @ np.array(rewards))
    model = policy.models["offer-1"]
    assert np.allclose(model.theta, theta)
    assert np.allclose(model.a_inv, np.linalg.inv(a))


@settings(max_examples=300, deadline=None)
@given(
    scores=st.lists(st.sampled_from([-1.0, 0.0, 0.5, 2.0, float("inf")]) | st.floats(-5, 5),
                    min_size=1, max_size=60),
    floor=st.sampled_from([0.05, 0.1, 0.5, 1.0]),
)  # fmt: skip
def test_best_with_floor_is_the_argmax_share_mixed_with_the_floor(
    scores: list[float], floor: float
) -> None:
    """The greedy policies' distribution, computed in Python floats, equals its
    definition in numpy to the last bit: 1 - floor split between the best scores, and
    floor / n on every action, normalized."""
    array = np.array(scores)
    best = (array == array.max()) / (array == array.max()).sum()
    mixed = (1.0 - floor) * best + floor / len(array)
    assert _best_with_floor(array, floor).tolist() == (mixed / mixed.sum()).tolist()


def test_linucb_keeps_the_gil_while_it_scores_and_learns() -> None:
    """Decisions are made on the request thread, where a numpy call that gives up the
    GIL hands it to a writer thread (docs/architecture.md): LinUCB scores 50 trained
    actions and learns in pieces numpy computes without releasing it."""
    rng = np.random.default_rng(11)
    policy = LinUCB(dimensions=32)
    actions = [f"banner-{i}" for i in range(50)]
    contexts = [np.where(rng.random(32) < 0.3, 1.0, 0.0) for _ in range(20)]
    for i in range(500):
        policy.update(actions[i % 50], float(i % 7 == 0), contexts[i % 20])
    big = np.zeros(2_000_000)
    with GilTakes() as control:  # the watcher sees a release: numpy's add over 2M values
        for _ in range(20):
            np.add(big, 1.0, out=big)
    assert control.count > 0
    # (A short release is seen only when the watcher wakes before it ends: many calls.)
    with GilTakes() as scoring:
        for i in range(300):
            policy.distribution(actions, contexts[i % 20])
    with GilTakes() as learning:
        for i in range(5000):
            policy.update(actions[i % 50], 0.0, contexts[i % 20])
    assert (scoring.count, learning.count) == (0, 0)


def test_remembered_features_hash_as_a_new_hasher_does() -> None:
    features = {"device": "mobile", "country": "DE", "pages": 3, "buyer": True, "returning": "True"}
    remembering = FeatureHasher(DIMENSIONS)
    first = remembering.hashed(features)
    assert remembering.hashed(features) == first == FeatureHasher(DIMENSIONS).hashed(features)
    other = {**features, "country": "FR", "buyer": False}
    assert remembering.hashed(other) == FeatureHasher(DIMENSIONS).hashed(other)
    # One name, a boolean then a string spelled alike: the same label, either way.
    for value in (True, "True", False, "False"):
        alike = {"returning": value}
        assert remembering.hashed(alike) == FeatureHasher(DIMENSIONS).hashed(alike)


def test_the_remembered_features_are_forgotten_past_their_limit_and_still_hash_right(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(features_module, "_MAX_REMEMBERED", 3)
    remembering = FeatureHasher(DIMENSIONS)
    for round_ in range(3):  # the memo fills, is cleared, fills again
        for country in ("DE", "FR", "IT", "ES", "PL"):
            features = {"country": country, "device": f"d{round_}"}
            assert remembering.hashed(features) == FeatureHasher(DIMENSIONS).hashed(features)
            assert len(remembering._one_hot) <= 3


def test_hashed_features_are_stable_across_processes() -> None:
    features = {"device": "mobile", "country": "DE", "cart_value": 120.5, "returning": True}
    here = FeatureHasher(DIMENSIONS).vector(features)
    code = (
        "from intently.act.features import FeatureHasher;"
        f"print(list(FeatureHasher({DIMENSIONS}).vector({features!r})))"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": "123"}).stdout  # fmt: skip
    assert list(here) == eval(there)  # noqa: S307 - a list of floats we printed
    assert here[0] == 1.0
    assert np.count_nonzero(here[1:]) >= 3  # distinct features rarely share a slot
    assert (
        FeatureHasher(DIMENSIONS).vector({"device": None, "x": ""}) == np.eye(DIMENSIONS)[0]
    ).all()


def test_linear_scores_match_batch_ridge_for_many_actions_after_the_arrays_grow() -> None:
    """20 actions (the stacked arrays double from 8 to 16 to 32): every action's mean and
    spread equal those of a ridge regression solved from scratch."""
    rng = np.random.default_rng(9)
    policy = LinUCB(dimensions=DIMENSIONS, regularization=1.5, alpha=1.0)
    actions = [f"a{i}" for i in range(20)]
    seen: dict[str, list[tuple[np.ndarray, float]]] = {a: [] for a in actions}
    for _ in range(400):
        action = actions[int(rng.integers(20))]
        x = CONTEXTS[int(rng.integers(4))] + rng.normal(0, 0.2, DIMENSIONS)
        reward = float(rng.random())
        policy.update(action, reward, x)
        seen[action].append((x, reward))
    query = CONTEXTS[1]
    # Asked in another order than the models were made in, in their own order (nothing to
    # pick), and with an action that has no model yet (the prior).
    in_slot_order = sorted(actions, key=policy._slots.__getitem__)
    for asked in (actions, in_slot_order, [*in_slot_order, "new"], ["new", *actions[::-1]]):
        mean, spread = policy._mean_and_spread(asked, query)
        for i, action in enumerate(asked):
            design = np.array([x for x, _ in seen.get(action, [])]).reshape(-1, DIMENSIONS)
            a = 1.5 * np.eye(DIMENSIONS) + design.T @ design
            rewards = np.array([r for _, r in seen.get(action, [])])
            theta = np.linalg.solve(a, design.T @ rewards)
            assert mean[i] == pytest.approx(query @ theta)
            assert spread[i] == pytest.approx(np.sqrt(query @ np.linalg.solve(a, query)))


def test_contexts_that_would_poison_a_model_are_refused() -> None:
    policy = LinUCB(dimensions=DIMENSIONS)
    for bad in (np.full(DIMENSIONS, np.nan), np.full(DIMENSIONS, 1e200)):
        with pytest.raises(ValueError, match="finite"):
            policy.update("a", 1.0, bad)
    assert "a" not in policy.models
    hashed = FeatureHasher(DIMENSIONS).vector({"n": 10**400, "m": 1e200, "k": float("nan")})
    assert np.isfinite(hashed).all()
    assert np.abs(hashed).max() <= 1e6  # clipped
    policy.update("a", 1.0, hashed)  # a hashed context is always accepted


def test_feature_contributions_add_up_to_the_linear_score() -> None:
    """The "weighed most" reasons: each feature's share of theta . x, which with the bias
    add up to the model's score; values the vector leaves out are left out here too."""
    features = {"device": "mobile", "country": "DE", "pages": 3, "buyer": True,
                "cart_value": 2e7, "huge": 10**400, "nan": float("nan"), "none": None}  # fmt: skip
    theta = np.random.default_rng(5).normal(size=DIMENSIONS)
    shares = contributions(FeatureHasher(DIMENSIONS).hashed(features), theta)
    assert [name for name, _ in shares if name in ("huge", "nan", "none")] == []
    assert [value for _, value in shares] == sorted((v for _, v in shares), reverse=True)
    total = theta[0] + sum(value for _, value in shares)
    assert total == pytest.approx(float(theta @ FeatureHasher(DIMENSIONS).vector(features)))


# -- snapshots: learned() and restore() ------------------------------------------------------

SAMPLING = ["beta-thompson", "lin-thompson"]  # draw from their own seeded generator
MORE_ACTIONS = [*ACTIONS, *(f"later-{i}" for i in range(5))]  # 11: the linear arrays grow
ASKED = [ACTIONS, ["offer-4", "offer-2", "offer-0"], [*ACTIONS[::-1], "never-rewarded"]]


def train(policy: Policy, seed: int, rounds: int, actions: list[str] = ACTIONS) -> None:
    """`rounds` updates (only updates: the sampling policies draw nothing): each action
    once in the order given, then random ones, in noisy contexts, with rewards in [0, 1]
    that favour what `click_rate` favours."""
    rng = random.Random(seed)
    for round_ in range(rounds):
        action = actions[round_] if round_ < len(actions) else rng.choice(actions)
        index = rng.randrange(4)
        x = CONTEXTS[index] + np.array([rng.gauss(0.0, 0.1) for _ in range(DIMENSIONS)])
        clicked = rng.random() < 4 * click_rate(action, index)
        policy.update(action, 1.0 if clicked else rng.choice([0.0, 0.0, 0.25]), x)


def asked(policy: Policy) -> list[list[float]]:
    """The policy's distributions over a few action lists in a few contexts (the same
    calls in the same order: a sampling policy's generator moves on alike)."""
    noisy = CONTEXTS[2] + np.linspace(-0.3, 0.3, DIMENSIONS)
    return [
        policy.distribution(actions, context).tolist()
        for context in [*CONTEXTS, noisy, None]
        for actions in ASKED
    ]


def through_msgpack(learned: dict[str, Any]) -> dict[str, Any]:
    """A snapshot as another worker reads it: encoded, then decoded."""
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(learned))
    assert isinstance(decoded, dict)
    return decoded


@pytest.mark.parametrize(
    "into", ["a new policy", "one that learned more", "one that learned alike"]
)
def test_a_restored_policy_decides_and_learns_as_the_one_it_was_taken_from(
    name: str, into: str
) -> None:
    original = POLICIES[name](5)
    train(original, 1, 300)
    restored = POLICIES[name](5)
    if into != "a new policy":
        # The restore takes the place of all it learned: of more actions (a linear one's
        # arrays grew past the snapshot's), or of the same ones first seen in another
        # order (a linear one's slots differ, their number does not). A policy that draws
        # nothing is asked first, as the restored one will be: a linear one remembers
        # which of the actions last asked have models.
        others = [f"other-{i}" for i in range(12)] if into == "one that learned more" else []
        train(restored, 2, 200, [*ACTIONS[::-1], *others])
        if name not in SAMPLING:
            restored.distribution(ASKED[0], CONTEXTS[0])
    restored.restore(through_msgpack(original.learned()))
    assert through_msgpack(restored.learned()) == through_msgpack(original.learned())
    expected = asked(original)
    assert asked(restored) == expected
    if name in LEARNING:  # what it learned shows: not what a new one would do
        assert asked(POLICIES[name](5)) != expected
    # Both learn the same from here (new actions too), incremental and restored alike.
    train(original, 3, 150, MORE_ACTIONS)
    train(restored, 3, 150, MORE_ACTIONS)
    assert asked(restored) == asked(original)
    assert through_msgpack(restored.learned()) == through_msgpack(original.learned())
    # And a second snapshot, of the restored one, restores as well.
    again = POLICIES[name](5)
    again.restore(through_msgpack(restored.learned()))
    assert through_msgpack(again.learned()) == through_msgpack(original.learned())


Breakage = Callable[[dict[str, Any]], dict[str, Any]]


def _with(key: str, value: Any) -> Breakage:
    return lambda learned: {**learned, key: value}


def _without(key: str) -> Breakage:
    return lambda learned: {k: v for k, v in learned.items() if k != key}


def _count(key: str, value: Any) -> Breakage:
    """One action's count in `key` replaced (another's added) by `value`."""
    return lambda learned: {**learned, key: {**learned[key], "offer-1": value}}


def _array(key: str, change: Callable[[Floats], None]) -> Breakage:
    def broken(learned: dict[str, Any]) -> dict[str, Any]:
        values = np.frombuffer(learned[key], "<f8").copy()
        change(values)
        return {**learned, key: values.tobytes()}

    return broken


def _set_at(index: int, value: float) -> Callable[[Floats], None]:
    def change(values: Floats) -> None:
        values[index] = value

    return change


def _learned_in_8_dimensions(learned: dict[str, Any]) -> dict[str, Any]:
    """A whole, consistent snapshot of a policy of another definition (8 features)."""
    other = LinUCB(dimensions=8)
    for i, action in enumerate(ACTIONS):
        other.update(action, float(i % 2), np.eye(8)[i % 8] + 0.5)
    return other.learned()


def _arrays_of_8_dimensions(learned: dict[str, Any]) -> dict[str, Any]:
    """The arrays of 8 features under this policy's number of dimensions."""
    return {**_learned_in_8_dimensions(learned), "dimensions": DIMENSIONS}


COUNTS = {"epsilon-greedy": ("pulls", "total"), "beta-thompson": ("successes", "failures")}
COUNTING_BREAKAGES: dict[str, Callable[[str], Breakage]] = {
    "a NaN count": lambda key: _count(key, float("nan")),
    "an infinite count": lambda key: _count(key, float("inf")),
    "a count that is a string": lambda key: _count(key, "3"),
    "a count that is None": lambda key: _count(key, None),
    "an action that is not a name": lambda key: (
        lambda learned: {**learned, key: {**learned[key], 7: 1.0}}
    ),
    "counts that are a list": lambda key: _with(key, [1.0, 2.0]),
    "counts missing": _without,
}
LINEAR_BREAKAGES: dict[str, Breakage] = {
    "a snapshot of 8 dimensions": _learned_in_8_dimensions,
    "arrays of 8 dimensions": _arrays_of_8_dimensions,
    "dimensions missing": _without("dimensions"),
    "truncated inverses": lambda learned: {**learned, "inverses": learned["inverses"][:-8]},
    "truncated thetas": lambda learned: {**learned, "thetas": learned["thetas"][:-3]},
    "truncated b": lambda learned: {**learned, "b": learned["b"][:-8]},
    "b missing": _without("b"),
    "inverses that are not bytes": _with("inverses", [1.0, 0.0]),
    "one action more than the arrays hold": lambda learned: {
        **learned,
        "actions": [*learned["actions"], "extra"],
    },
    "an action repeated": lambda learned: {
        **learned,
        "actions": [*learned["actions"][:-1], learned["actions"][0]],
    },
    "actions that are not a list": _with("actions", "offer-1"),
    "a NaN in an inverse": _array("inverses", _set_at(5, float("nan"))),
    "an infinite theta": _array("thetas", _set_at(3, float("inf"))),
    "a NaN in b": _array("b", _set_at(2, float("nan"))),
    "an action that is not a name": lambda learned: {
        **learned,
        "actions": [*learned["actions"][:-1], ["offer-5"]],
    },
}
BROKEN: dict[tuple[str, str], Breakage] = {
    **{
        (name, f"{what} ({key})"): breakage(key)
        for name, keys in COUNTS.items()
        for key in keys
        for what, breakage in COUNTING_BREAKAGES.items()
    },
    **{
        (name, what): breakage for name in CONTEXTUAL for what, breakage in LINEAR_BREAKAGES.items()
    },
    ("beta-thompson", "a negative count (failures)"): _count("failures", -3.0),
}


@pytest.mark.parametrize(
    ("name", "breakage"), [pytest.param(*key, id=f"{key[0]} - {key[1]}") for key in BROKEN]
)
def test_a_broken_snapshot_is_refused_and_changes_nothing(name: str, breakage: str) -> None:
    """Every learning policy refuses a snapshot that does not fit (rules-first learns
    nothing, and takes any), and goes on as it was: deciding and learning as its twin,
    which was trained the same and never offered the broken snapshot."""
    policy, twin = POLICIES[name](4), POLICIES[name](4)
    train(policy, 1, 300)
    train(twin, 1, 300)
    broken = through_msgpack(BROKEN[name, breakage](through_msgpack(policy.learned())))
    with pytest.raises(ValueError):  # noqa: PT011 - each policy words its own
        policy.restore(broken)
    assert through_msgpack(policy.learned()) == through_msgpack(twin.learned())
    assert asked(policy) == asked(twin)
    train(policy, 3, 100, MORE_ACTIONS)
    train(twin, 3, 100, MORE_ACTIONS)
    assert asked(policy) == asked(twin)
