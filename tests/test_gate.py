"""Off-policy evaluation on the engine's own decision log, and the promotion gate:
simulated visitors with known click-through rates pass through the real decide and event
APIs; a candidate that is truly better is promoted, one that is worse is refused."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from click.testing import CliRunner

from intently import Engine, ManualClock
from intently.cli import main
from support import SECRET_KEY, client_for, make_settings, track

# Decisions have a 20 ms deadline: see conftest.no_collection_pauses.
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_collection_pauses")]


# The true click-through rate of each banner: b2 is by far the best.
TRUE_CTR = {"b0": 0.05, "b1": 0.05, "b2": 0.5}
# A generous deadline: a loaded test machine must not turn a decision into a fallback.
LIVE = {"kind": "offers", "offer_kinds": ["banner"], "deadline_ms": 5000, "policy": {
    "name": "rules-first", "priority": ["b0"], "floor": 0.5}}  # fmt: skip


class Simulated(NamedTuple):
    click_through: float  # of the decisions the live policy made
    chosen: int  # how many it made (the rest went to holdout visitors: default content)


async def simulate(
    engine: Engine, client: httpx.AsyncClient, clock: ManualClock, n: int,
    live: dict[str, Any] = LIVE,
) -> Simulated:  # fmt: skip
    """`n` visitors see home_hero and click with the shown banner's true rate; returns
    the click-through the policy's decisions got. Windows are then closed, so every
    reward is known."""
    async with client_for(engine, SECRET_KEY) as admin:
        banners = [{"id": b, "kind": "banner"} for b in TRUE_CTR]
        assert (await admin.post("/v1/catalog/offers", json={"offers": banners})).status_code == 200
        assert (await admin.put("/v1/placements/home_hero", json=live)).status_code == 200
    rng = random.Random(7)
    clicks = chosen = 0
    for visitor in range(n):
        body = {"anonymousId": f"v{visitor}", "placements": [{"id": "home_hero"}]}
        decision = (await client.post("/v1/decide", json=body)).json()["decisions"][0]
        banner = decision["items"][0]["id"]
        held_out = decision.get("arm") == "holdout"
        assert held_out == (decision["policy"]["name"] == "default")
        chosen += not held_out
        if rng.random() < TRUE_CTR[banner]:
            clicks += not held_out
            click = track(
                event="Promotion Clicked", anonymousId=f"v{visitor}",
                properties={"promotion_id": banner, "decision_id": decision["decision_id"]},
            )  # fmt: skip
            assert (await client.post("/v1/events", json=click)).status_code == 200
    clock.advance(timedelta(minutes=31))
    engine.decider.tick(engine.now_ms())
    engine.decisions.flush()
    assert 0 < n - chosen < n * 0.1  # the global holdout: about 5%
    return Simulated(clicks / chosen, chosen)


async def promote(engine: Engine, policy: dict[str, Any]) -> httpx.Response:
    async with client_for(engine, SECRET_KEY) as admin:
        return await admin.post("/v1/placements/home_hero/promote", json=policy)


async def test_the_gate_needs_evidence(engine: Engine) -> None:
    answer = await promote(engine, {"name": "epsilon-greedy"})
    assert answer.status_code == 409
    assert answer.json()["type"].endswith("not-enough-evidence")


async def test_a_better_policy_is_promoted_and_a_worse_one_is_not(
    engine: Engine, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    observed, chosen = await simulate(engine, client, clock, 600)
    # The live policy shows b0 2/3 of the time: about 0.125 expected.
    assert 0.07 < observed < 0.2
    worse = await promote(engine, {"name": "rules-first", "priority": ["b1"]})
    assert worse.status_code == 409
    report = worse.json()["report"]
    assert report["promote"] is False
    assert report["decisions"] == chosen
    assert report["live_value"] == pytest.approx(observed)
    assert report["candidate"]["snips"]["value"] < report["live_value"]
    assert engine.placements.get("home_hero").spec.policy.name == "rules-first"  # type: ignore[union-attr]

    better = await promote(engine, {"name": "epsilon-greedy", "epsilon": 0.1})
    assert better.status_code == 200, better.text
    report = better.json()
    assert report["promote"] is True
    # Its estimated value is near what it would truly earn: ~0.9 * 0.5 + 0.1 * 0.2. The
    # decider draws unseeded, and IPS over 600 decisions has a standard error of about
    # 0.065 here (importance weights up to 5.6): the bounds are 3.5 of those each side,
    # not 2 (0.3 < v < 0.6 failed in one of a dozen runs here).
    for name in ("ips", "snips", "dm", "dr"):
        found = report["candidate"][name]
        assert found["low"] <= found["value"] <= found["high"]
        assert found["low"] > report["live_value"]
        assert 0.24 < found["value"] < 0.7
    placement = engine.placements.get("home_hero")
    assert placement is not None
    assert placement.spec.policy.name == "epsilon-greedy"
    # It goes live warm: trained on the log, it already prefers b2.
    decision = (
        await client.post(
            "/v1/decide", json={"anonymousId": "after", "placements": [{"id": "home_hero"}]}
        )
    ).json()["decisions"][0]
    assert decision["policy"] == {"name": "epsilon-greedy", "version": placement.version}
    policy = engine.decider.policy(placement)
    assert (
        list(policy.distribution(["b0", "b1", "b2"], None)).index(
            max(policy.distribution(["b0", "b1", "b2"], None))
        )
        == 2
    )


async def test_the_cli_judges_and_exports_the_decision_log(
    engine: Engine, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    chosen = (await simulate(engine, client, clock, 300)).chosen
    data_dir = str(engine.settings.data_dir)
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["eval", "ope", "--data-dir", data_dir, "--placement", "home_hero",
         "--candidate", '{"name": "epsilon-greedy"}', "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["decisions"] == chosen
    assert report["promote"] is True
    result = runner.invoke(
        main,
        ["eval", "ope", "--data-dir", data_dir, "--placement", "home_hero",
         "--candidate", '{"name": "rules-first", "priority": ["b0"], "floor": 0.05}'],
    )  # fmt: skip
    assert result.exit_code == 3
    assert "keep the live policy" in result.output
    result = runner.invoke(
        main, ["eval", "ope", "--data-dir", data_dir, "--placement", "home_hero",
               "--candidate", '{"name": "nope"}'],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--candidate" in result.output
    result = runner.invoke(main, ["export", "decisions", "--data-dir", data_dir])
    assert result.exit_code == 0
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert len(lines) == 300
    assert {line["placement"] for line in lines} == {"home_hero"}
    assert all(line["reward"] in (0.0, 1.0) for line in lines)
    first = lines[0]
    assert set(first) >= {"decision_id", "features", "candidates", "items", "propensities",
                          "policy", "policy_version", "reasons", "latency_us"}  # fmt: skip


async def test_a_bernoulli_candidate_on_a_revenue_placement_is_judged_not_crashed(
    engine: Engine, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """Revenue rewards are not in [0, 1]: Beta-Bernoulli Thompson sampling learns each as
    one success, in the gate as in the live engine (found in review: a 500)."""
    async with client_for(engine, SECRET_KEY) as admin:
        banners = [{"id": b, "kind": "banner"} for b in TRUE_CTR]
        assert (await admin.post("/v1/catalog/offers", json={"offers": banners})).status_code == 200
        revenue = {**LIVE, "reward": "revenue"}
        assert (await admin.put("/v1/placements/home_hero", json=revenue)).status_code == 200
    rng = random.Random(5)
    chosen = 0
    for visitor in range(150):
        body = {"anonymousId": f"r{visitor}", "placements": [{"id": "home_hero"}]}
        decision = (await client.post("/v1/decide", json=body)).json()["decisions"][0]
        chosen += decision.get("arm") != "holdout"
        if rng.random() < TRUE_CTR[decision["items"][0]["id"]]:
            order = track(
                event="Order Completed", anonymousId=f"r{visitor}",
                properties={"order_id": f"o{visitor}", "revenue": 59.0,
                            "decision_id": decision["decision_id"],
                            "products": [{"product_id": "x", "price": 59.0, "quantity": 1}]},
            )  # fmt: skip
            assert (await client.post("/v1/events", json=order)).status_code == 200
    clock.advance(timedelta(minutes=31))
    engine.decider.tick(engine.now_ms())
    engine.decisions.flush()
    answer = await promote(engine, {"name": "beta-thompson"})
    assert answer.status_code in (200, 409), answer.text
    report = answer.json() if answer.status_code == 200 else answer.json()["report"]
    assert report["decisions"] == chosen
    assert report["live_value"] > 1.0  # revenue, not a rate


async def test_a_bandit_learns_again_from_the_decision_log_after_a_restart(
    tmp_path: Path, clock: ManualClock
) -> None:
    settings = make_settings(tmp_path / "data")
    engine = Engine(settings, clock=clock)
    live = {**LIVE, "policy": {"name": "epsilon-greedy", "epsilon": 0.5}}
    try:
        async with client_for(engine) as client:
            observed, chosen = await simulate(engine, client, clock, 200, live)
        before = engine.decider.policy(engine.placements.get("home_hero"))  # type: ignore[arg-type]
        pulls = dict(before.pulls)  # type: ignore[attr-defined]
        totals = dict(before.total)  # type: ignore[attr-defined]
    finally:
        engine.close()
    assert sum(pulls.values()) == chosen
    assert observed > 0
    engine = Engine(settings, clock=clock)
    try:
        after = engine.decider.policy(engine.placements.get("home_hero"))  # type: ignore[arg-type]
        assert after.pulls == pulls  # type: ignore[attr-defined]
        assert after.total == pytest.approx(totals)  # type: ignore[attr-defined]
    finally:
        engine.close()


def test_an_unlearnable_logged_reward_is_left_out() -> None:
    from intently.act.decisions import DecisionRecord
    from intently.learn.gate import usable

    record = DecisionRecord(
        decision_id="d1", at_ms=1, placement="home_hero", visitor="a:v", policy="linucb",
        policy_version="v", candidates=["b0", "b1"], items=["b0"], propensities=[0.5],
        reward_kind="revenue",
    )  # fmt: skip
    assert len(usable([record], {"d1": 5.0}, 8, closed_by_ms=10)) == 1
    assert usable([record], {"d1": 5.0}, 8, closed_by_ms=0) == []  # its window is open
    assert usable([record], {"d1": float("inf")}, 8, closed_by_ms=10) == []


async def test_a_policy_judged_on_an_older_definition_is_not_adopted(engine: Engine) -> None:
    from intently.act.placements import PolicySpec
    from intently.configfile import ConfigError

    placement = engine.placements.get("home_hero")
    assert placement is not None
    spec = PolicySpec(name="epsilon-greedy")
    async with client_for(engine, SECRET_KEY) as admin:  # changed while it was judged
        assert (await admin.put("/v1/placements/home_hero", json=LIVE)).status_code == 200
    with pytest.raises(ConfigError, match="changed while the candidate was judged"):
        engine.decider.adopt("home_hero", spec, engine.decider.policy(placement),
                             judged_version=placement.version)  # fmt: skip
