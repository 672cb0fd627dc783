"""Decision policies behind one protocol, each giving the probability of every action.

A policy is asked to choose among the eligible actions (offers, content variants) for a
context, and answers with the whole distribution it draws from: the action is drawn from
exactly the logged propensities, so off-policy estimators (IPS, DR) can trust them. Every
policy keeps an exploration floor: each eligible action has probability at least
`floor / n`, so no action is ever starved of evidence and every logged decision can be
re-weighted. Learning is online: `update` folds in one reward, in O(1) for the counting
policies and O(d^2) (a rank-one update) for the linear ones.

Policies:

- `EpsilonGreedy`: the best mean so far with probability 1 - epsilon, any with epsilon.
- `BetaThompson`: Bernoulli rewards with Beta posteriors; Thompson sampling.
- `LinUCB`: ridge regression per action over hashed context features; the highest upper
  confidence bound (Li et al. 2010, disjoint model).
- `LinThompson`: the same model; a score drawn from each action's Gaussian posterior
  (Agrawal & Goyal 2013).
- `RulesFirst`: a fixed priority order (business rules), still with the floor.

For the sampling policies the probability of each action being the best is estimated by
Monte Carlo with `draws` samples from the posterior, as the Open Bandit Dataset's
production Thompson sampling did; the action is then drawn from that estimate (mixed with
the floor), which makes the logged propensity exact for what was drawn.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from itertools import accumulate
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from msgspec import Struct

from intently.act.features import Vector

Floats = npt.NDArray[np.float64]
DEFAULT_FLOOR = 0.05
MAX_FEATURE = 1e6 * 64  # FeatureHasher clips each value to 1e6; a slot may sum a few


class Choice(Struct, frozen=True):  # (a Struct: made on every decision, and cheaply)
    """The action drawn, its probability, and the distribution it was drawn from
    (eligible actions only)."""

    action: str
    propensity: float
    actions: Sequence[str]
    probabilities: Sequence[float]

    @property
    def propensities(self) -> dict[str, float]:
        return dict(zip(self.actions, self.probabilities, strict=True))


class Policy(Protocol):
    name: str

    def distribution(self, actions: Sequence[str], context: Vector | None) -> Floats:
        """The probability of each of `actions` (all eligible), summing to 1. Sampling
        policies draw their Monte Carlo estimate from their own seeded generator."""
        ...

    def update(self, action: str, reward: float, context: Vector | None) -> None: ...

    def learned(self) -> dict[str, Any]:
        """What the policy has learned, as plain values (msgpack-able): the snapshot a
        worker starting later loads (learn/snapshot.py). Its definition is not in it."""
        ...

    def restore(self, learned: dict[str, Any]) -> None:
        """Take `learned` (from `learned()` of a policy of the same definition) in place
        of what this one has learned; raises ValueError if it does not fit."""
        ...


def choose(
    policy: Policy, actions: Sequence[str], context: Vector | None, rng: random.Random
) -> Choice:
    """Draw one of the eligible `actions` from the policy's distribution."""
    if not actions:
        raise ValueError("no eligible action to choose from")
    if len(set(actions)) != len(actions):
        raise ValueError("actions must be distinct")
    probabilities = policy.distribution(actions, context).tolist()
    # The inverse of the cumulative distribution at a uniform draw (what rng.choice(p=)
    # does, without its checks of p, which cost more than the draw here).
    running = list(accumulate(probabilities))
    index = bisect_right(running, rng.random() * running[-1])
    index = min(index, len(actions) - 1)  # (rounding at the very end)
    # (a copy: the caller may go on changing its list, e.g. removing what was drawn)
    return Choice(actions[index], probabilities[index], tuple(actions), probabilities)


def check_reward(reward: float) -> float:
    reward = float(reward)
    if not math.isfinite(reward):
        raise ValueError(f"a reward must be a finite number, not {reward}")
    return reward


def learnable(policy: Policy, reward: float) -> float:
    """A reward as `policy` can learn it: Bernoulli Thompson sampling takes [0, 1] (a
    revenue counts as one success), the others take it as it is."""
    return min(1.0, max(0.0, reward)) if isinstance(policy, BetaThompson) else reward


def _with_floor(best: Floats, floor: float) -> Floats:
    """`best` (a distribution) mixed with the uniform one: every action >= floor / n."""
    mixed: Floats = (1.0 - floor) * best + floor / len(best)
    normalized: Floats = mixed / mixed.sum()  # exactly 1 despite rounding
    return normalized


def _best_with_floor(scores: Floats, floor: float) -> Floats:
    """`_with_floor` of all the mass on the best score (split evenly between ties), the
    same numbers computed in Python floats: for a few dozen scores numpy's cost per call
    was most of the work (eight calls, measured 9-24 us per decision). Scores are never
    NaN here (contexts and rewards are checked; a NaN would compare otherwise)."""
    values = scores.tolist()
    best = max(values)
    each = floor / len(values)
    top = (1.0 - floor) * (1.0 / values.count(best)) + each
    mixed = np.array([top if value == best else each for value in values])
    normalized: Floats = mixed / mixed.sum()  # exactly 1 despite rounding
    return normalized


def _check_floor(floor: float) -> float:
    if not 0.0 < floor <= 1.0:
        raise ValueError("the exploration floor must be in (0, 1]")
    return floor


class EpsilonGreedy:
    name = "epsilon-greedy"

    def __init__(self, epsilon: float = 0.1) -> None:
        self.epsilon = _check_floor(epsilon)
        self.pulls: dict[str, int] = {}
        self.total: dict[str, float] = {}

    def distribution(self, actions: Sequence[str], context: Vector | None) -> Floats:
        means = np.array([self._mean(a) for a in actions])
        return _best_with_floor(means, self.epsilon)

    def _mean(self, action: str) -> float:
        pulls = self.pulls.get(action, 0)
        # An action never tried is as good as the best (optimism): it gets tried.
        return self.total.get(action, 0.0) / pulls if pulls else np.inf

    def update(self, action: str, reward: float, context: Vector | None) -> None:
        reward = check_reward(reward)  # before any change
        self.pulls[action] = self.pulls.get(action, 0) + 1
        self.total[action] = self.total.get(action, 0.0) + reward

    def learned(self) -> dict[str, Any]:
        return {"pulls": dict(self.pulls), "total": dict(self.total)}

    def restore(self, learned: dict[str, Any]) -> None:
        pulls = _counts(learned, "pulls", int, at_least=0)
        total = _counts(learned, "total", float)  # (rewards may be negative)
        self.pulls, self.total = pulls, total


class BetaThompson:
    """Bernoulli rewards (a reward in [0, 1] counts as that fraction of a success)."""

    name = "beta-thompson"

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 1.0,
        floor: float = DEFAULT_FLOOR,
        draws: int = 1000,
        seed: int = 0,
        priors: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        if alpha <= 0 or beta <= 0:
            raise ValueError("the Beta prior needs alpha > 0 and beta > 0")
        self.alpha, self.beta = alpha, beta
        self.floor = _check_floor(floor)
        self.draws = draws
        self.priors = dict(priors or {})
        self.successes: dict[str, float] = {}
        self.failures: dict[str, float] = {}
        self._rng = np.random.default_rng(seed)

    def posterior(self, action: str) -> tuple[float, float]:
        alpha, beta = self.priors.get(action, (self.alpha, self.beta))
        return alpha + self.successes.get(action, 0.0), beta + self.failures.get(action, 0.0)

    def distribution(self, actions: Sequence[str], context: Vector | None) -> Floats:
        a, b = np.array([self.posterior(x) for x in actions]).T
        samples = self._rng.beta(a[:, None], b[:, None], size=(len(actions), self.draws))
        wins = np.bincount(samples.argmax(axis=0), minlength=len(actions))
        return _with_floor(wins / self.draws, self.floor)

    def update(self, action: str, reward: float, context: Vector | None) -> None:
        reward = check_reward(reward)
        if not 0.0 <= reward <= 1.0:
            raise ValueError(
                f"Beta-Bernoulli Thompson sampling takes rewards in [0, 1], not {reward}"
            )
        self.successes[action] = self.successes.get(action, 0.0) + reward
        self.failures[action] = self.failures.get(action, 0.0) + 1.0 - reward

    def learned(self) -> dict[str, Any]:
        return {"successes": dict(self.successes), "failures": dict(self.failures)}

    def restore(self, learned: dict[str, Any]) -> None:
        successes = _counts(learned, "successes", float, at_least=0)
        failures = _counts(learned, "failures", float, at_least=0)
        self.successes, self.failures = successes, failures


def _counts(
    learned: dict[str, Any], name: str, kind: Callable[[float], Any], at_least: float = -math.inf
) -> dict[str, Any]:
    """A checked per-action count of a snapshot: {action: finite number >= at_least}."""
    counts = learned.get(name)
    if not isinstance(counts, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and math.isfinite(v) and v >= at_least
        for k, v in counts.items()
    ):
        bound = "" if at_least == -math.inf else f" of at least {at_least:g}"
        raise ValueError(f"a learned {name!r} must map actions to finite numbers{bound}")
    return {k: kind(v) for k, v in counts.items()}


# numpy gives up the GIL while it computes more than 500 values at once (a ufunc's
# elements, a matrix product's outputs; numpy 2.4, measured). On the request thread each
# such release lets a writer thread take the GIL until that thread blocks again: measured in
# steady state, LinUCB's update took 50 us and its scores 60 us per decision this way, 15
# and 30 without. So the linear models score and learn in pieces of at most this many
# values, for up to 500 dimensions (the default is 32; beyond, one row is more than 500).
# LinThompson's Monte Carlo draws still give it up (docs/architecture.md, "No GIL round
# trips from the request thread"; a test checks LinUCB).
_HELD = 500


def _matvec(matrices: Floats, x: Vector, out: Floats) -> Floats:
    """`matrices @ x` (a stack of d x d, or one m x d) into `out`, in pieces small
    enough that numpy keeps the GIL."""
    outputs_each = out.shape[1] if out.ndim > 1 else 1
    step = max(1, _HELD // outputs_each)
    for start in range(0, len(matrices), step):
        np.matmul(matrices[start : start + step], x, out=out[start : start + step])
    return out


class _Ridge:
    """One action's ridge regression: A = lambda I + sum x x^T, b = sum r x, with A^-1
    kept up to date by Sherman-Morrison (a rank-one update, O(d^2)). Its A^-1 and theta
    are views into the policy's stacked arrays, so every action is scored at once."""

    __slots__ = ("a_inv", "b", "rows", "theta")

    def __init__(self, a_inv: Floats, theta: Floats) -> None:
        self.a_inv = a_inv
        self.theta = theta
        self.b = np.zeros(len(theta))
        self.rows = max(1, _HELD // len(theta))  # of A^-1 per piece of the update

    def update(self, x: Vector, reward: float) -> None:
        a_inv, rows = self.a_inv, self.rows
        a_inv_x = a_inv @ x  # (A^-1 is symmetric: this is also x^T A^-1)
        scaled = a_inv_x / (1.0 + x @ a_inv_x)
        for start in range(0, len(a_inv), rows):  # A^-1 -= (A^-1 x)(x^T A^-1) / (1 + x^T A^-1 x)
            part = a_inv[start : start + rows]
            part -= np.multiply.outer(a_inv_x[start : start + rows], scaled)
        if reward:  # (a zero, the most common reward, leaves b as it is)
            self.b += reward * x
        np.matmul(a_inv, self.b, out=self.theta)


class _Linear:
    def __init__(self, dimensions: int, regularization: float, floor: float) -> None:
        if dimensions <= 0 or regularization <= 0:
            raise ValueError("dimensions and regularization must be positive")
        self.dimensions = dimensions
        self.regularization = regularization
        self.floor = _check_floor(floor)
        self.models: dict[str, _Ridge] = {}
        self._slots: dict[str, int] = {}
        self._inverses = np.empty((0, dimensions, dimensions))
        self._thetas = np.empty((0, dimensions))
        # Where scoring computes A^-1 x, x . theta and x A^-1 x of each model.
        self._scratch = np.empty((0, dimensions))
        self._means, self._variances = np.empty(0), np.empty(0)
        self._known_for: (
            tuple[
                tuple[tuple[str, ...], int],
                tuple[npt.NDArray[np.intp], npt.NDArray[np.intp] | None],
            ]
            | None
        ) = None

    def _context(self, context: Vector | None) -> Vector:
        if context is None:
            x = np.zeros(self.dimensions)
            x[0] = 1.0  # the bias alone
            return x
        if context.shape != (self.dimensions,):
            raise ValueError(f"context must have {self.dimensions} features, not {context.shape}")
        # (not <=: NaN compares false, so one test catches NaN, infinities and the huge)
        if not np.abs(context).max() <= MAX_FEATURE:
            # One such update would poison an action's model for good (NaN in A^-1).
            raise ValueError(f"context features must be finite and within +-{MAX_FEATURE:g}")
        return context

    def _model(self, action: str) -> _Ridge:
        model = self.models.get(action)
        if model is None:
            slot = len(self._slots)
            if slot == len(self._thetas):  # full: double, and re-point every model
                self._grow(max(8, 2 * slot))
            self._inverses[slot] = np.eye(self.dimensions) / self.regularization
            self._thetas[slot] = 0.0
            self._slots[action] = slot
            model = self.models[action] = _Ridge(self._inverses[slot], self._thetas[slot])
        return model

    def _grow(self, capacity: int) -> None:
        inverses = np.empty((capacity, self.dimensions, self.dimensions))
        thetas = np.empty((capacity, self.dimensions))
        used = len(self._slots)
        inverses[:used], thetas[:used] = self._inverses[:used], self._thetas[:used]
        self._inverses, self._thetas = inverses, thetas
        self._scratch = np.empty((capacity, self.dimensions))
        self._means, self._variances = np.empty(capacity), np.empty(capacity)
        for action, slot in self._slots.items():
            model = self.models[action]
            model.a_inv, model.theta = inverses[slot], thetas[slot]

    def _mean_and_spread(self, actions: Sequence[str], x: Vector) -> tuple[Floats, Floats]:
        """Each action's predicted reward x . theta and its standard error sqrt(x A^-1 x),
        for every action at once (one never rewarded has the prior: 0 and x.x/lambda).
        The arrays may be the model's scratch, reused by the next call: read, don't keep."""
        known, at = self._known(actions)
        if len(known) == len(actions):  # (the usual case: every action has a model)
            mean, variance = self._scored(x)
            if at is not None:  # (None: the actions are the models, in slot order)
                mean, variance = mean[at], variance[at]
        else:
            mean = np.zeros(len(actions))
            variance = np.full(len(actions), (x @ x) / self.regularization)
            if len(known):
                all_means, all_variances = self._scored(x)
                slots = np.arange(len(known)) if at is None else at
                mean[known], variance[known] = all_means[slots], all_variances[slots]
        np.maximum(variance, 0.0, out=variance)  # (rounding can take it below 0)
        return mean, np.sqrt(variance, out=variance)

    def _scored(self, x: Vector) -> tuple[Floats, Floats]:
        """x . theta and x A^-1 x of every model, by slot (views of scratch arrays: read
        them before the next call)."""
        used = len(self._slots)
        a_inv_x = _matvec(self._inverses[:used], x, self._scratch[:used])
        means = _matvec(self._thetas[:used], x, self._means[:used])
        return means, _matvec(a_inv_x, x, self._variances[:used])

    def _known(
        self, actions: Sequence[str]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp] | None]:
        """Which of `actions` have a model (their positions) and the models' slots (None
        when they are every model, in slot order: nothing to pick). The same eligible set
        comes back decision after decision: kept until it or the models change."""
        key = (tuple(actions), len(self._slots))
        if self._known_for is not None and self._known_for[0] == key:
            return self._known_for[1]
        slots = self._slots
        known = [i for i, action in enumerate(actions) if action in slots]
        at = [slots[actions[i]] for i in known]
        found = (
            np.array(known, dtype=np.intp),
            None if at == list(range(len(slots))) else np.array(at, dtype=np.intp),
        )
        self._known_for = (key, found)
        return found

    def update(self, action: str, reward: float, context: Vector | None) -> None:
        x, reward = self._context(context), check_reward(reward)  # checked before any change
        self._model(action).update(x, reward)

    def learned(self) -> dict[str, Any]:
        """Each action's A^-1, theta and b, as float64 bytes in slot order."""
        used = len(self._slots)
        actions = sorted(self._slots, key=self._slots.__getitem__)
        return {
            "dimensions": self.dimensions,
            "actions": actions,
            "inverses": self._inverses[:used].astype("<f8").tobytes(),
            "thetas": self._thetas[:used].astype("<f8").tobytes(),
            "b": np.array([self.models[a].b for a in actions]).astype("<f8").tobytes(),
        }

    def restore(self, learned: dict[str, Any]) -> None:
        d, actions = learned.get("dimensions"), learned.get("actions")
        if d != self.dimensions:
            raise ValueError(f"learned with {d} dimensions, this policy has {self.dimensions}")
        if (
            not isinstance(actions, list)
            or not all(isinstance(action, str) for action in actions)
            or len(set(actions)) != len(actions)
        ):
            raise ValueError("learned actions must be a list of distinct names")
        n = len(actions)
        try:
            inverses = np.frombuffer(learned["inverses"], "<f8").reshape(n, d, d)
            thetas = np.frombuffer(learned["thetas"], "<f8").reshape(n, d)
            b = np.frombuffer(learned["b"], "<f8").reshape(n, d)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"learned arrays do not fit {n} actions of {d}: {error}") from None
        if not (np.isfinite(inverses).all() and np.isfinite(thetas).all() and np.isfinite(b).all()):
            raise ValueError("learned arrays must be finite")
        self.models, self._slots, self._known_for = {}, {}, None
        self._grow(max(8, n))
        for slot, action in enumerate(actions):
            model = self._model(action)  # (takes the next slot: `slot`)
            self._inverses[slot], self._thetas[slot] = inverses[slot], thetas[slot]
            model.b = b[slot].copy()


class LinUCB(_Linear):
    name = "linucb"

    def __init__(
        self,
        dimensions: int = 32,
        alpha: float = 1.0,
        regularization: float = 1.0,
        floor: float = DEFAULT_FLOOR,
    ) -> None:
        super().__init__(dimensions, regularization, floor)
        self.alpha = alpha

    def distribution(self, actions: Sequence[str], context: Vector | None) -> Floats:
        mean, spread = self._mean_and_spread(actions, self._context(context))
        return _best_with_floor(mean + self.alpha * spread, self.floor)


class LinThompson(_Linear):
    name = "lin-thompson"

    def __init__(
        self,
        dimensions: int = 32,
        scale: float = 0.5,
        regularization: float = 1.0,
        floor: float = DEFAULT_FLOOR,
        draws: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__(dimensions, regularization, floor)
        self.scale = scale
        self.draws = draws
        self._rng = np.random.default_rng(seed)

    def distribution(self, actions: Sequence[str], context: Vector | None) -> Floats:
        # x . theta under the posterior N(theta_hat, scale^2 A^-1) is itself Gaussian:
        # sample the scores directly, not the d-dimensional parameters.
        mean, spread = self._mean_and_spread(actions, self._context(context))
        samples = self._rng.normal(
            mean[:, None], self.scale * spread[:, None], size=(len(actions), self.draws)
        )
        wins = np.bincount(samples.argmax(axis=0), minlength=len(actions))
        return _with_floor(wins / self.draws, self.floor)


class RulesFirst:
    """The eligible action ranked first by `priority` (lower first; unlisted actions
    last, in the order given), with the exploration floor. Rewards are not learned from:
    the rules are the policy."""

    name = "rules-first"

    def __init__(self, priority: Sequence[str] = (), floor: float = DEFAULT_FLOOR) -> None:
        self.rank = {action: i for i, action in enumerate(priority)}
        self.floor = _check_floor(floor)

    def distribution(self, actions: Sequence[str], context: Vector | None) -> Floats:
        unlisted = len(self.rank)
        ranks = [self.rank.get(a, unlisted + i) for i, a in enumerate(actions)]
        best = np.zeros(len(actions))
        best[int(np.argmin(ranks))] = 1.0
        return _with_floor(best, self.floor)

    def update(self, action: str, reward: float, context: Vector | None) -> None:
        check_reward(reward)

    def learned(self) -> dict[str, Any]:
        return {}  # (the rules are its definition)

    def restore(self, learned: dict[str, Any]) -> None:
        pass
