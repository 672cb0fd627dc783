"""Policy benchmark: the cost of one decision and of one reward, per policy, in process.

For each policy: `choose` among 50 eligible offers (the whole distribution computed, the
action drawn from it) and `update` with one reward, over hashed context features of 32
dimensions, after 2,000 warm-up rounds of learning. Side by side, the ceiling: the least a
learning step can cost in Python (one dict increment) and the feature hashing itself.

    python bench/policies.py [--rounds 5000] [--actions 50] [--dimensions 32]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from intently.act.features import FeatureHasher
from intently.act.policies import (
    BetaThompson,
    EpsilonGreedy,
    LinThompson,
    LinUCB,
    Policy,
    RulesFirst,
    choose,
)


def per_call_us(action: Callable[[int], object], rounds: int) -> float:
    start = time.perf_counter()
    for i in range(rounds):
        action(i)
    return (time.perf_counter() - start) / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--actions", type=int, default=50)
    parser.add_argument("--dimensions", type=int, default=32)
    args = parser.parse_args()
    actions = [f"offer-{i}" for i in range(args.actions)]
    hasher = FeatureHasher(args.dimensions)
    contexts = [
        hasher.vector({"device": d, "country": c, "top_category": t, "cart_value": v})
        for d in ("mobile", "desktop") for c in ("DE", "IN", "US")
        for t in ("running", "tennis") for v in (0.0, 80.0)
    ]  # fmt: skip
    policies: dict[str, Policy] = {
        "epsilon-greedy": EpsilonGreedy(),
        "beta-thompson": BetaThompson(),
        "linucb": LinUCB(dimensions=args.dimensions),
        "lin-thompson": LinThompson(dimensions=args.dimensions),
        "rules-first": RulesFirst(priority=actions[:5]),
    }
    rng = random.Random(0)
    counts: dict[str, int] = {}

    def ceiling(i: int) -> None:
        counts[actions[i % len(actions)]] = counts.get(actions[i % len(actions)], 0) + 1

    features = {"device": "mobile", "country": "DE", "top_category": "running", "cart_value": 80.0}
    print(f"policies benchmark: {args.actions} actions, {args.dimensions} features, "
          f"{args.rounds} rounds each (microseconds per call)")  # fmt: skip
    print(f"  ceiling (dict increment):        {per_call_us(ceiling, args.rounds):8.2f}")
    print(f"  feature hashing (4 features):    "
          f"{per_call_us(lambda i: hasher.vector(features), args.rounds):8.2f}")  # fmt: skip
    print(f"  {'policy':<16}{'choose':>10}{'update':>10}")
    for name, policy in policies.items():
        for i in range(2000):  # warm up: the models hold something
            context = contexts[i % len(contexts)]
            choice = choose(policy, actions, context, rng)
            policy.update(choice.action, float(rng.random() < 0.05), context)
        choose_us = per_call_us(
            lambda i, p=policy: choose(p, actions, contexts[i % len(contexts)], rng), args.rounds
        )
        update_us = per_call_us(
            lambda i, p=policy: p.update(
                actions[i % len(actions)], float(i % 20 == 0), contexts[i % len(contexts)]
            ),
            args.rounds,
        )
        print(f"  {name:<16}{choose_us:>10.1f}{update_us:>10.1f}")


if __name__ == "__main__":
    main()
