"""Experiments through the real engine: definitions and their bad input, assignment
(deterministic, by weight, exclusive within a layer, sticky across a merge), holdouts,
and metrics kept incrementally against a count from scratch."""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from scipy import stats as scipy_stats

from intently import Engine, ManualClock
from intently.configfile import ConfigError
from intently.context.identity import derived_profile_id
from intently.experiments.assign import Bucketer, pick
from support import SECRET_KEY, client_for, make_settings, track
from test_decide import load_catalog

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_collection_pauses")]


def experiment(**fields: Any) -> dict[str, Any]:
    """A running A/B test on home_hero: A as defined, B with banner b2 only."""
    return {
        "placements": ["home_hero"],
        "status": "running",
        "variants": [
            {"id": "A", "weight": 0.5},
            {"id": "B", "weight": 0.5, "offers": ["b2"]},
        ],
        **fields,
    }


async def put(engine: Engine, experiment_id: str, body: dict[str, Any]) -> httpx.Response:
    async with client_for(engine, SECRET_KEY) as admin:
        return await admin.put(f"/v1/experiments/{experiment_id}", json=body)


async def hero(client: httpx.AsyncClient, **identity: Any) -> dict[str, Any]:
    body = {"placements": [{"id": "home_hero"}], **identity}
    answer = await client.post("/v1/decide", json=body)
    assert answer.status_code == 200, answer.text
    decision: dict[str, Any] = answer.json()["decisions"][0]
    return decision


# -- definitions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "pointer", "words"),
    [
        ({"variants": [{"id": "A", "weight": 0.5}, {"id": "B", "weight": 0.4}]},
         "/variants", "sum to 0.9"),
        ({"variants": [{"id": "A", "weight": 1.0}, {"id": "B", "weight": 0.0}]},
         "/variants/1/weight", "no traffic"),
        ({"variants": [{"id": "A", "weight": 0.5}, {"id": "A", "weight": 0.5}]},
         "/variants/1/id", "named twice"),
        ({"placements": ["nowhere"]}, "/placements/0", "no placement"),
        ({"range": [0.6, 0.2]}, "/range", "0 <= start < end"),
        ({"control": "C"}, "/control", "no variant 'C'"),
        ({"metrics": [{"name": "signups"}]}, "/metrics/0", "names its event"),
        ({"metrics": [{"name": "spend", "event": "Spent", "aggregate": "sum"}]},
         "/metrics/0/property", "names the property"),
        ({"variants": [{"id": "A", "weight": 0.5},
                       {"id": "B", "weight": 0.5, "offers": ["b1"], "default_content": True}]},
         "/variants/1", "not offers and default_content"),
    ],
)  # fmt: skip
async def test_bad_definitions_are_refused_naming_the_field(
    engine: Engine, change: dict[str, Any], pointer: str, words: str
) -> None:
    answer = await put(engine, "hero-test", experiment(**change))
    assert answer.status_code == 400, answer.text
    problem = answer.json()
    assert answer.headers["content-type"] == "application/problem+json"
    assert problem["pointer"] == pointer
    assert words in problem["detail"]
    assert engine.experiments.registry.get("hero-test") is None  # nothing was kept


async def test_a_variant_that_is_no_valid_placement_is_refused(engine: Engine) -> None:
    slate_on_offers = {"id": "B", "weight": 0.5, "policy": {"name": "slate"}}
    answer = await put(
        engine, "x", experiment(variants=[{"id": "A", "weight": 0.5}, slate_on_offers])
    )
    assert answer.status_code == 400
    assert "variant 'B' on placement 'home_hero'" in answer.json()["detail"]


async def test_experiments_in_one_layer_must_not_overlap(engine: Engine) -> None:
    first = await put(engine, "one", experiment(layer="hero", range=[0.0, 0.5]))
    assert first.status_code == 201, first.text
    overlapping = await put(engine, "two", experiment(layer="hero", range=[0.4, 1.0]))
    assert overlapping.status_code == 400
    assert overlapping.json()["pointer"] == "/range"
    assert "overlaps experiment 'one'" in overlapping.json()["detail"]
    # On the same placement in another layer: a visitor could be in both.
    elsewhere = await put(engine, "three", experiment(layer="other", range=[0.5, 1.0]))
    assert elsewhere.status_code == 400
    assert elsewhere.json()["pointer"] == "/layer"
    beside = await put(engine, "four", experiment(layer="hero", range=[0.5, 1.0]))
    assert beside.status_code == 201, beside.text


async def test_a_running_experiment_changes_only_what_keeps_its_measurement(
    engine: Engine,
) -> None:
    assert (await put(engine, "t", experiment())).status_code == 201
    moved = experiment(variants=[{"id": "A", "weight": 0.3}, {"id": "B", "weight": 0.7}])
    answer = await put(engine, "t", moved)
    assert answer.status_code == 409
    assert answer.json()["pointer"] == "/variants"
    renamed = await put(engine, "t", experiment(name="Hero test", alpha=0.01))
    assert renamed.status_code == 200, renamed.text
    async with client_for(engine, SECRET_KEY) as admin:
        running = await admin.delete("/v1/experiments/t")
        assert running.status_code == 409
        stopped = await put(engine, "t", experiment(status="stopped", name="Hero test"))
        assert stopped.status_code == 200
        assert stopped.json()["stopped_ms"] == engine.now_ms()
        again = await put(engine, "t", experiment(status="running", name="Hero test"))
        assert again.status_code == 409
        assert (await admin.delete("/v1/experiments/t")).status_code == 204
        assert (await admin.get("/v1/experiments/t")).status_code == 404
        assert (await admin.get("/v1/experiments/t/results")).status_code == 404


async def test_definitions_survive_a_restart(tmp_path: Path, clock: ManualClock) -> None:
    settings = make_settings(tmp_path / "data")
    engine = Engine(settings, clock=clock)
    try:
        assert (await put(engine, "kept", experiment(name="Kept"))).status_code == 201
    finally:
        engine.close()
    engine = Engine(settings, clock=clock)
    try:
        found = engine.experiments.registry.get("kept")
        assert found is not None
        assert found.spec.name == "Kept"
        assert found.started_ms == clock.now().timestamp() * 1000
        assert [e.id for e in engine.experiments.registry.on_placement("home_hero")] == ["kept"]
    finally:
        engine.close()


async def test_experiments_from_the_config_file_are_read_only_through_the_api(
    tmp_path: Path, clock: ManualClock
) -> None:
    config = tmp_path / "experiments.yaml"
    config.write_text(
        "experiments:\n"
        "  configured:\n"
        "    placements: [home_hero]\n"
        "    status: running\n"
        "    variants: [{id: A, weight: 0.25}, {id: B, weight: 0.75, default_content: true}]\n"
    )
    engine = Engine(make_settings(tmp_path / "data", experiments_file=config), clock=clock)
    try:
        found = engine.experiments.registry.get("configured")
        assert found is not None
        assert found.source == "config"
        async with client_for(engine, SECRET_KEY) as admin:
            # Running, it may not be deleted; and it is not the API's to delete anyway.
            assert (await admin.delete("/v1/experiments/configured")).status_code == 409
            listed = (await admin.get("/v1/experiments")).json()["experiments"]
            assert [e["id"] for e in listed] == ["configured"]
    finally:
        engine.close()
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiments:\n  broken:\n    placements: [home_hero]\n"
                   "    variants: [{id: A, weight: 0.5}, {id: B, weight: 0.6}]\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"broken.*sum to 1\.1"):
        Engine(make_settings(tmp_path / "other", experiments_file=bad), clock=clock)


async def test_a_bandit_inside_a_variant_learns_from_its_own_decisions(
    engine: Engine, client: httpx.AsyncClient
) -> None:
    await load_catalog(engine)
    variants = [{"id": "A", "weight": 0.5},
                {"id": "B", "weight": 0.5, "policy": {"name": "beta-thompson"}}]  # fmt: skip
    assert (await put(engine, "t", experiment(variants=variants))).status_code == 201
    base = engine.placements.get("home_hero")
    found = engine.experiments.registry.get("t")
    assert base is not None
    assert found is not None
    served = found.placement_for("B", base, engine.experiments.registry.fields)
    assert served is not None
    b_policy = engine.decider.policy(served)
    a_policy = engine.decider.policy(base)
    assert b_policy is not a_policy
    clicks = 0
    for i in range(200):
        decision = await hero(client, anonymousId=f"bandit{i}")
        if decision.get("arm") == "t:B":
            assert decision["policy"]["name"] == "beta-thompson"
            click = track(event="Promotion Clicked", anonymousId=f"bandit{i}",
                          properties={"promotion_id": decision["items"][0]["id"],
                                      "decision_id": decision["decision_id"]})  # fmt: skip
            assert (await client.post("/v1/events", json=click)).status_code == 200
            clicks += 1
        elif decision.get("arm") == "t:A":
            assert decision["policy"]["name"] == "linucb"
    assert clicks > 50
    assert sum(b_policy.successes.values()) == clicks  # type: ignore[attr-defined]
    assert not a_policy.models  # type: ignore[attr-defined]  # A's LinUCB learned nothing yet


async def test_after_a_restart_each_policy_learns_again_from_its_own_decisions(
    tmp_path: Path, clock: ManualClock
) -> None:
    settings = make_settings(tmp_path / "data")
    engine = Engine(settings, clock=clock)
    greedy = {"name": "epsilon-greedy", "epsilon": 0.2}
    made: Counter[str | None] = Counter()
    try:
        await load_catalog(engine)
        async with client_for(engine, SECRET_KEY) as admin:
            live = {"kind": "offers", "offer_kinds": ["banner"], "policy": greedy}
            assert (await admin.put("/v1/placements/home_hero", json=live)).status_code == 200
        variants = [{"id": "A", "weight": 0.5},
                    {"id": "B", "weight": 0.5, "policy": {**greedy, "epsilon": 0.5}}]  # fmt: skip
        assert (await put(engine, "t", experiment(variants=variants))).status_code == 201
        async with client_for(engine) as client:
            for i in range(120):
                made[(await hero(client, anonymousId=f"w{i}")).get("arm")] += 1
        clock.advance(timedelta(minutes=31))
        engine.decider.tick(engine.now_ms())
    finally:
        engine.close()
    assert made["t:A"] > 30
    assert made["t:B"] > 30
    engine = Engine(settings, clock=clock)
    try:
        base = engine.placements.get("home_hero")
        found = engine.experiments.registry.get("t")
        assert base is not None
        assert found is not None
        served = found.placement_for("B", base, engine.experiments.registry.fields)
        assert served is not None
        live_pulls = engine.decider.policy(base).pulls  # type: ignore[attr-defined]
        variant_pulls = engine.decider.policy(served).pulls  # type: ignore[attr-defined]
        assert sum(live_pulls.values()) == made["t:A"]  # not B's, nor the holdout's
        assert sum(variant_pulls.values()) == made["t:B"]
    finally:
        engine.close()


async def test_ids_are_not_reused_with_old_data_and_holdout_is_reserved(
    engine: Engine, client: httpx.AsyncClient
) -> None:
    await load_catalog(engine)
    reserved = await put(engine, "holdout", experiment())
    assert reserved.status_code == 400
    assert reserved.json()["pointer"] == "/id"
    assert (await put(engine, "t", experiment())).status_code == 201
    for i in range(30):
        await hero(client, anonymousId=f"old{i}")
    assert (await put(engine, "t", experiment(status="stopped"))).status_code == 200
    async with client_for(engine, SECRET_KEY) as admin:
        assert (await admin.delete("/v1/experiments/t")).status_code == 204
    assert (await put(engine, "t", experiment(status="draft"))).status_code == 201
    results = await asyncio_results(engine, "t")
    assert {v["id"]: v["units"] for v in results["variants"]} == {"A": 0, "B": 0}


async def test_a_placement_change_that_breaks_a_running_variant_is_refused(
    engine: Engine,
) -> None:
    assert (await put(engine, "t", experiment())).status_code == 201  # B: an offers override
    async with client_for(engine, SECRET_KEY) as admin:
        items = {"kind": "items", "recommender": "similar", "policy": {"name": "slate"}}
        answer = await admin.put("/v1/placements/home_hero", json=items)
        assert answer.status_code == 409
        assert "experiment 't' runs on this placement" in answer.json()["detail"]
        assert engine.placements.get("home_hero").spec.kind == "offers"  # type: ignore[union-attr]


async def test_a_running_configured_experiment_keeps_its_start_and_its_design(
    tmp_path: Path, clock: ManualClock
) -> None:
    config = tmp_path / "experiments.yaml"
    running = ("experiments:\n  c:\n    placements: [home_hero]\n    status: running\n"
               "    variants: [{id: A, weight: 0.5}, {id: B, weight: 0.5}]\n")  # fmt: skip
    config.write_text(running)
    settings = make_settings(tmp_path / "data", experiments_file=config)
    Engine(settings, clock=clock).close()
    started = clock.now().timestamp() * 1000
    clock.advance(timedelta(hours=2))
    engine = Engine(settings, clock=clock)
    try:
        found = engine.experiments.registry.get("c")
        assert found is not None
        assert found.started_ms == started  # not the restart's time
        assert (await put(engine, "c", experiment(status="stopped"))).status_code == 409
    finally:
        engine.close()
    config.write_text(
        running.replace("weight: 0.5}, {id: B, weight: 0.5", "weight: 0.2}, {id: B, weight: 0.8")
    )
    with pytest.raises(ConfigError, match=r"'c'.*variants cannot change"):
        Engine(settings, clock=clock)
    config.write_text(running.replace("status: running", "status: stopped"))
    engine = Engine(settings, clock=clock)
    try:
        found = engine.experiments.registry.get("c")
        assert found is not None
        assert found.stopped_ms == clock.now().timestamp() * 1000
        assert found.started_ms == started
    finally:
        engine.close()


# -- assignment --------------------------------------------------------------------------------


def test_buckets_are_uniform_and_independent_across_salts() -> None:
    first, second = Bucketer("salt-1"), Bucketer("salt-2")
    units = [f"p_{i}" for i in range(20_000)]
    a = [first(u) for u in units]
    b = [second(u) for u in units]
    assert all(0.0 <= x < 1.0 for x in a)
    assert scipy_stats.kstest(a, "uniform").pvalue > 0.001
    assert abs(scipy_stats.pearsonr(a, b).statistic) < 0.03
    assert [first(u) for u in units[:100]] == a[:100]  # the same unit, the same place


def test_variants_get_their_weights() -> None:
    cumulative = (0.2, 0.5, 1.0)
    bucket = Bucketer("weights")
    counts = Counter(pick(bucket(f"p_{i}"), cumulative) for i in range(30_000))
    observed = [counts[i] for i in range(3)]
    assert scipy_stats.chisquare(observed, [6000, 9000, 15000]).pvalue > 0.001


async def test_assignment_is_deterministic_and_a_first_visit_keeps_its_arm(
    engine: Engine, client: httpx.AsyncClient
) -> None:
    await load_catalog(engine)
    assert (await put(engine, "t", experiment())).status_code == 201
    arms = {}
    for i in range(40):
        first = await hero(client, anonymousId=f"new{i}")  # no profile yet
        arms[f"new{i}"] = first.get("arm")
        event = track(anonymousId=f"new{i}", properties={"product_id": "p1"})
        assert (await client.post("/v1/events", json=event)).status_code == 200
        profile = engine.context.lookup(f"new{i}")
        assert profile is not None
        assert profile.id == derived_profile_id(f"a:new{i}")  # the unit assigned before
        again = await hero(client, anonymousId=f"new{i}")
        assert again.get("arm") == first.get("arm")
    in_test = [a for a in arms.values() if a is not None and a != "holdout"]
    assert {"t:A", "t:B"} == set(in_test)
    # B serves its own content set: banner b2 only.
    for visitor, arm in arms.items():
        if arm == "t:B":
            assert (await hero(client, anonymousId=visitor))["items"][0]["id"] == "b2"


async def test_a_layer_keeps_its_experiments_apart(engine: Engine) -> None:
    await load_catalog(engine)
    assert (await put(engine, "left", experiment(layer="L", range=[0.0, 0.3]))).status_code == 201
    right = experiment(layer="L", range=[0.3, 0.8], variants=[{"id": "X", "weight": 1.0 / 3},
                       {"id": "Y", "weight": 2.0 / 3}])  # fmt: skip
    assert (await put(engine, "right", right)).status_code == 201
    placement = engine.placements.get("home_hero")
    assert placement is not None
    seen: Counter[str] = Counter()
    for i in range(4000):
        arm = engine.experiments.arm(placement, f"p_{i}", None)
        seen[arm.experiment if arm else "none"] += 1
    # Out of the 95% not held out: 30% in left, 50% in right, 20% in neither.
    held = seen["holdout"]
    rest = 4000 - held
    assert scipy_stats.binomtest(held, 4000, 0.05).pvalue > 0.001
    assert (
        scipy_stats.chisquare(
            [seen["left"], seen["right"], seen["none"]], [0.3 * rest, 0.5 * rest, 0.2 * rest]
        ).pvalue
        > 0.001
    )


async def test_a_segment_targets_an_experiment(engine: Engine, client: httpx.AsyncClient) -> None:
    await load_catalog(engine)
    async with client_for(engine, SECRET_KEY) as admin:
        segment = {"expression": "session.pages >= 2"}
        assert (await admin.put("/v1/segments/engaged", json=segment)).status_code in (200, 201)
    assert (await put(engine, "t", experiment(segment="engaged"))).status_code == 201
    visitor = next(
        f"s{i}" for i in range(100)
        if not engine.experiments.assigner.in_holdout(derived_profile_id(f"a:s{i}"))
    )  # fmt: skip
    page = {"type": "page", "anonymousId": visitor, "properties": {"path": "/a"}}
    assert (await client.post("/v1/events", json=page)).status_code == 200
    assert (await hero(client, anonymousId=visitor)).get("arm") is None  # not in the segment
    second = {**page, "properties": {"path": "/b"}}
    assert (await client.post("/v1/events", json=second)).status_code == 200
    assert (await hero(client, anonymousId=visitor))["arm"].startswith("t:")


# -- identity merges ---------------------------------------------------------------------------


def _id_in(engine: Engine, variant: str, kind: str, prefix: str) -> str:
    """An id (kind "a": an anonymousId, "u": a userId) whose unit is in `variant` of
    experiment t (and not held out)."""
    placement = engine.placements.get("home_hero")
    assert placement is not None
    for i in range(1000):
        found = f"{prefix}{i}"
        arm = engine.experiments.arm(placement, derived_profile_id(f"{kind}:{found}"), None)
        if arm is not None and arm.label == f"t:{variant}":
            return found
    raise AssertionError(f"no id found in variant {variant}")


def _visitor_in(engine: Engine, variant: str, prefix: str) -> str:
    return _id_in(engine, variant, "a", prefix)


def _user_in(engine: Engine, variant: str) -> str:
    return _id_in(engine, variant, "u", "user")


async def test_signing_in_keeps_the_variant_seen_while_anonymous(
    engine: Engine, client: httpx.AsyncClient
) -> None:
    await load_catalog(engine)
    assert (await put(engine, "t", experiment())).status_code == 201
    anonymous = _visitor_in(engine, "B", "anon")
    user = _user_in(engine, "A")  # a known profile whose own hash says A
    order = {"product_id": "p1", "price": 10.0, "quantity": 1}
    known = track(event="Signed Up", userId=user, anonymousId=None, properties={})
    assert (await client.post("/v1/events", json=known)).status_code == 200
    assert (await hero(client, anonymousId=anonymous))["arm"] == "t:B"
    # Signing in on this browser merges the anonymous profile into the user's.
    login = track(event="Signed In", userId=user, anonymousId=anonymous, properties={})
    assert (await client.post("/v1/events", json=login)).status_code == 200
    assert engine.context.lookup(anonymous) is engine.context.lookup(user)
    after = await hero(client, userId=user, anonymousId=anonymous)
    assert after["arm"] == "t:B"  # not flipped to the user's own A
    assert (await hero(client, userId=user))["arm"] == "t:B"
    # What they do after counts for B, under the surviving profile.
    purchase = track(
        event="Order Completed", userId=user,
        properties={"order_id": "o1", "revenue": 10.0, "products": [order]},
    )  # fmt: skip
    assert (await client.post("/v1/events", json=purchase)).status_code == 200
    results = await asyncio_results(engine, "t")
    conversion = next(m for m in results["metrics"] if m["name"] == "conversion_rate")
    assert conversion["units"] == {"A": 0, "B": 1}
    assert conversion["means"]["B"] == 1.0


async def test_profiles_exposed_to_two_variants_are_left_out_when_merged(
    engine: Engine, client: httpx.AsyncClient
) -> None:
    await load_catalog(engine)
    assert (await put(engine, "t", experiment())).status_code == 201
    anonymous = _visitor_in(engine, "B", "two")
    user = _user_in(engine, "A")
    assert (await hero(client, userId=user))["arm"] == "t:A"  # exposed as A, elsewhere
    assert (await hero(client, anonymousId=anonymous))["arm"] == "t:B"
    login = track(event="Signed In", userId=user, anonymousId=anonymous, properties={})
    assert (await client.post("/v1/events", json=login)).status_code == 200
    results = await asyncio_results(engine, "t")
    variants = {v["id"]: v for v in results["variants"]}
    assert variants["A"]["multiple_exposures"] == 1
    assert variants["B"]["multiple_exposures"] == 1
    conversion = next(m for m in results["metrics"] if m["name"] == "conversion_rate")
    assert conversion["units"] == {"A": 0, "B": 0}  # the person saw both: left out


async def test_after_signing_in_the_person_keeps_every_arm_at_once(
    engine: Engine, client: httpx.AsyncClient
) -> None:
    """Two experiments share a layer, and the placement has its own holdout: the
    person signing in stays in the experiment (and the holdout) they were in."""
    await load_catalog(engine)
    async with client_for(engine, SECRET_KEY) as admin:
        spec = {"kind": "offers", "offer_kinds": ["banner"], "policy": {"name": "linucb"},
                "holdout": 0.3}  # fmt: skip
        assert (await admin.put("/v1/placements/home_hero", json=spec)).status_code == 200
    assert (await put(engine, "second", experiment(layer="L", range=[0.5, 1.0]))).status_code == 201
    assert (await put(engine, "first", experiment(layer="L", range=[0.0, 0.5]))).status_code == 201
    placement = engine.placements.get("home_hero")
    assert placement is not None

    def arm_of(unit: str) -> str | None:
        found = engine.experiments.arm(placement, unit, None)
        return found.label if found else None

    for wanted in ("first:", "holdout:home_hero"):
        anonymous = next(
            f"a{wanted}{i}" for i in range(2000)
            if (arm_of(derived_profile_id(f"a:a{wanted}{i}")) or "").startswith(wanted)
        )  # fmt: skip
        user = next(
            f"u{wanted}{i}" for i in range(2000)
            if (arm_of(derived_profile_id(f"u:u{wanted}{i}")) or "").startswith("second:")
        )  # fmt: skip
        signed_up = track(event="Signed Up", userId=user, anonymousId=None, properties={})
        assert (await client.post("/v1/events", json=signed_up)).status_code == 200
        before = (await hero(client, anonymousId=anonymous))["arm"]
        assert before.startswith(wanted)
        login = track(event="Signed In", userId=user, anonymousId=anonymous, properties={})
        assert (await client.post("/v1/events", json=login)).status_code == 200
        assert (await hero(client, userId=user, anonymousId=anonymous))["arm"] == before
        profile = engine.context.lookup(user)
        assert profile is not None
        engine.experiments.log.flush()
        arms = engine.experiments.log.arms_of(profile.id)
        assert "second" not in arms  # never in two experiments of one layer


async def test_carried_arms_survive_a_restart(tmp_path: Path, clock: ManualClock) -> None:
    settings = make_settings(tmp_path / "data")
    engine = Engine(settings, clock=clock)
    try:
        await load_catalog(engine)
        assert (await put(engine, "t", experiment())).status_code == 201
        anonymous, user = _visitor_in(engine, "B", "r"), _user_in(engine, "A")
        async with client_for(engine) as client:
            signed_up = track(event="Signed Up", userId=user, anonymousId=None, properties={})
            assert (await client.post("/v1/events", json=signed_up)).status_code == 200
            assert (await hero(client, anonymousId=anonymous))["arm"] == "t:B"
            login = track(event="Signed In", userId=user, anonymousId=anonymous, properties={})
            assert (await client.post("/v1/events", json=login)).status_code == 200
    finally:
        engine.close()
    engine = Engine(settings, clock=clock)
    try:
        async with client_for(engine) as client:
            assert (await hero(client, userId=user))["arm"] == "t:B"
    finally:
        engine.close()


async def asyncio_results(engine: Engine, experiment_id: str) -> dict[str, Any]:
    async with client_for(engine, SECRET_KEY) as admin:
        answer = await admin.get(f"/v1/experiments/{experiment_id}/results")
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


async def test_a_persons_exposures_are_exported_and_erased_with_them(
    engine: Engine, client: httpx.AsyncClient
) -> None:
    await load_catalog(engine)
    assert (await put(engine, "t", experiment())).status_code == 201
    visitor = _visitor_in(engine, "B", "gone")
    keeper = _visitor_in(engine, "B", "kept")
    for who in (visitor, keeper):
        page = {"type": "page", "anonymousId": who, "properties": {"path": "/"}}
        assert (await client.post("/v1/events", json=page)).status_code == 200
        assert (await hero(client, anonymousId=who))["arm"] == "t:B"
    async with client_for(engine, SECRET_KEY) as admin:
        exported = (await admin.get(f"/v1/profiles/{visitor}/export")).json()
        assert exported["experiments"] == {"t": "B", "holdout": "personalized"}
        assert (await admin.delete(f"/v1/profiles/{visitor}")).status_code == 200
    results = await asyncio_results(engine, "t")
    assert {v["id"]: v["units"] for v in results["variants"]} == {"A": 0, "B": 1}  # the keeper
    assert engine.experiments.log.arms_of(derived_profile_id(f"a:{visitor}")) == {}
    raw = (engine.settings.data_dir / "experiments.db").read_bytes()
    assert derived_profile_id(f"a:{visitor}").encode() not in raw
    assert derived_profile_id(f"a:{keeper}").encode() in raw


async def test_a_viewable_exposure_counts_from_the_view_not_the_decision(
    engine: Engine, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    await load_catalog(engine)
    assert (await put(engine, "t", experiment(exposure="viewable"))).status_code == 201
    visitor = _visitor_in(engine, "B", "seen")
    line = {"product_id": "p1", "price": 30.0, "quantity": 1}

    async def order(number: int) -> None:
        clock.advance(timedelta(seconds=5))
        properties = {"order_id": f"o{number}", "revenue": 30.0, "products": [line]}
        event = track(event="Order Completed", anonymousId=visitor,
                      timestamp=clock.now().isoformat(), properties=properties)  # fmt: skip
        assert (await client.post("/v1/events", json=event)).status_code == 200

    decision = await hero(client, anonymousId=visitor)
    assert decision["arm"] == "t:B"
    await order(1)  # decided but not yet seen: not an effect of the variant
    results = await asyncio_results(engine, "t")
    assert {v["id"]: v["units"] for v in results["variants"]} == {"A": 0, "B": 0}
    viewed = track(event="Decision Viewed", anonymousId=visitor, timestamp=clock.now().isoformat(),
                   properties={"decision_id": decision["decision_id"]})  # fmt: skip
    assert (await client.post("/v1/events", json=viewed)).status_code == 200
    await order(2)
    results = await asyncio_results(engine, "t")
    assert {v["id"]: v["units"] for v in results["variants"]} == {"A": 0, "B": 1}
    revenue = next(m for m in results["metrics"] if m["name"] == "revenue_per_visitor")
    assert revenue["means"]["B"] == 30.0  # the order after the view only
    # Its value before exposure (the first order) is its covariate.
    totals = engine.experiments.log.totals("t")
    assert totals["B", "revenue_per_visitor"][3] == 30.0


async def test_metrics_with_no_data_give_notes_not_numbers(
    engine: Engine, client: httpx.AsyncClient
) -> None:
    """A metric on an event that never occurs, an average order value with no order, and
    a tiny sample: defined results, with a note where a figure cannot be had."""
    await load_catalog(engine)
    metrics = [{"name": "never", "event": "Never Happens"}, {"name": "average_order_value"},
               {"name": "conversion_rate"}]  # fmt: skip
    assert (await put(engine, "t", experiment(metrics=metrics))).status_code == 201
    for i in range(24):
        await hero(client, anonymousId=f"tiny{i}")
    async with client_for(engine, SECRET_KEY) as admin:
        answer = await admin.get("/v1/experiments/t/results")
    assert answer.status_code == 200
    found = {m["name"]: m for m in answer.json()["metrics"]}
    never = found["never"]["comparisons"][0]
    assert never["frequentist"]["p_value"] is None
    assert never["significant"] is False
    assert never["control_n"] >= 2  # (24 visitors: both variants have some)
    assert never["treatment_n"] >= 2
    assert "no variance" in (never["frequentist"]["note"] or "")
    order_value = found["average_order_value"]
    assert order_value["units"] == {"A": 0, "B": 0}
    assert order_value["means"] == {"A": None, "B": None}
    assert order_value["comparisons"][0]["frequentist"]["note"]


# -- holdouts -----------------------------------------------------------------------------------


async def test_the_global_holdout_gets_default_content_only(
    engine: Engine, client: httpx.AsyncClient
) -> None:
    await load_catalog(engine)
    async with client_for(engine, SECRET_KEY) as admin:
        # A rule that pins b1 for everybody: the holdout must not see it applied.
        rule = {"kind": "offers", "offer_kinds": ["banner"], "policy": {"name": "linucb"},
                "fallback": ["b0"], "rules": [{"action": "pin", "items": ["b1"]}]}  # fmt: skip
        assert (await admin.put("/v1/placements/home_hero", json=rule)).status_code == 200
    held = personalized = 0
    for i in range(600):
        decision = await hero(client, anonymousId=f"h{i}")
        if decision.get("arm") == "holdout":
            held += 1
            assert decision["items"][0]["id"] == "b0"  # the default, not the pinned b1
            assert decision["policy"]["name"] == "default"
            assert decision["personalized"] is False
            assert decision["degraded"] is None
            assert decision["reasons"] == ["in the global holdout: default content"]
        else:
            personalized += 1
            assert decision["items"][0]["id"] == "b1"
    assert scipy_stats.binomtest(held, 600, 0.05).pvalue > 0.001
    results = await asyncio_results(engine, "holdout")
    counts = {v["id"]: v["units"] for v in results["variants"]}
    assert counts == {"holdout": held, "personalized": personalized}
    assert results["sample_ratio"]["mismatch"] is False


async def test_a_placements_holdout_and_no_global_one(tmp_path: Path, clock: ManualClock) -> None:
    engine = Engine(make_settings(tmp_path / "data", holdout_share=0.0), clock=clock)
    try:
        await load_catalog(engine)
        async with client_for(engine, SECRET_KEY) as admin:
            spec = {"kind": "offers", "offer_kinds": ["banner"], "policy": {"name": "linucb"},
                    "holdout": 0.2, "fallback": ["b0"]}  # fmt: skip
            assert (await admin.put("/v1/placements/home_hero", json=spec)).status_code == 200
        async with client_for(engine) as client:
            arms = Counter(
                [(await hero(client, anonymousId=f"q{i}")).get("arm") for i in range(400)]
            )
        assert set(arms) == {None, "holdout:home_hero"}
        assert scipy_stats.binomtest(arms["holdout:home_hero"], 400, 0.2).pvalue > 0.001
        results = await asyncio_results(engine, "holdout:home_hero")
        counts = {v["id"]: v["units"] for v in results["variants"]}
        assert counts == {"holdout": arms["holdout:home_hero"], "personalized": arms[None]}
        async with client_for(engine, SECRET_KEY) as admin:
            global_one = (await admin.get("/v1/experiments/holdout/results")).json()
        assert global_one["status"] == "stopped"
        assert all(v["units"] == 0 for v in global_one["variants"])
    finally:
        engine.close()


# -- metrics ------------------------------------------------------------------------------------


# What each metric adds for an event, and a visitor's value: written out again here,
# apart from experiments/metrics.py, as the from-scratch reference.
def _adds(name: str, event: dict[str, Any]) -> tuple[float, float] | None:
    kind = event.get("event")
    revenue = event.get("properties", {}).get("revenue")
    points = event.get("properties", {}).get("points")
    return {
        "conversion_rate": (1.0, 0.0) if kind == "Order Completed" else None,
        "click_through": (1.0, 0.0) if kind == "Promotion Clicked" else None,
        "revenue_per_visitor": (revenue, 0.0) if kind == "Order Completed" else None,
        "average_order_value": (revenue, 1.0) if kind == "Order Completed" else None,
        "wishes": (1.0, 0.0) if kind == "Wishlisted" else None,
        "wished": (1.0, 0.0) if kind == "Wishlisted" else None,
        "points": (float(points), 0.0)
        if kind == "Points Earned" and isinstance(points, int | float) else None,
    }[name]  # fmt: skip


def _value(name: str, numerator: float, denominator: float) -> float | None:
    if name in ("conversion_rate", "click_through", "wished"):
        return 1.0 if numerator > 0 else 0.0
    if name == "average_order_value":
        return numerator / denominator if denominator else None
    return numerator


async def test_running_totals_equal_a_count_from_scratch(
    engine: Engine, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """Visitors decide, click, view pages and buy, before and after exposure, inside and
    outside the metrics' windows. The totals kept as rows change equal those counted
    from the rows, and those computed here from what the test sent."""
    await load_catalog(engine)
    windows = {"click_through": 1.0, "wishes": 2.0}
    names = ["conversion_rate", "click_through", "revenue_per_visitor", "average_order_value",
             "wishes", "wished", "points"]  # fmt: skip
    metrics: list[dict[str, Any]] = [
        {"name": "conversion_rate"}, {"name": "click_through", "window_hours": 1},
        {"name": "revenue_per_visitor"}, {"name": "average_order_value"},
        {"name": "wishes", "event": "Wishlisted", "window_hours": 2},
        {"name": "wished", "event": "Wishlisted", "aggregate": "unique"},
        {"name": "points", "event": "Points Earned", "aggregate": "sum", "property": "points"},
        {"name": "pages_per_session"},
    ]  # fmt: skip
    assert (await put(engine, "t", experiment(metrics=metrics))).status_code == 201
    rng = random.Random(11)
    exposed: dict[str, tuple[str, int]] = {}  # visitor -> variant, first exposure (ms)
    sums: dict[tuple[str, str], list[float]] = {}  # (visitor, metric) -> numerator, denominator
    for step in range(700):
        visitor = f"m{rng.randrange(120)}"
        now = engine.now_ms()
        roll = rng.random()
        if roll < 0.25:
            arm = (await hero(client, anonymousId=visitor)).get("arm")
            if arm is not None and arm.startswith("t:") and visitor not in exposed:
                exposed[visitor] = (arm[2:], now)
            continue
        if roll < 0.45:
            event = {"type": "page", "anonymousId": visitor, "properties": {"path": f"/{step}"}}
        elif roll < 0.55:
            event = track(event="Promotion Clicked", anonymousId=visitor,
                          properties={"promotion_id": "b1"})  # fmt: skip
        elif roll < 0.65:
            revenue = round(rng.uniform(5, 80), 2)
            line = {"product_id": "p1", "price": revenue, "quantity": 1}
            event = track(event="Order Completed", anonymousId=visitor,
                          properties={"order_id": f"o{step}", "revenue": revenue,
                                      "products": [line]})  # fmt: skip
        elif roll < 0.75:
            event = track(event="Wishlisted", anonymousId=visitor, properties={})
        elif roll < 0.9:
            event = track(event="Points Earned", anonymousId=visitor,
                          properties={"points": rng.choice([1, 2.5, "ten", None])})  # fmt: skip
        else:
            clock.advance(timedelta(minutes=rng.choice([5, 40, 90])))
            continue
        event["timestamp"] = clock.now().isoformat()
        answer = await client.post("/v1/events", json=event)
        assert answer.status_code == 200, answer.text
        if visitor in exposed:
            since = now - exposed[visitor][1]
            for name in names:
                add = _adds(name, event)
                if add is not None and since <= windows.get(name, 72.0) * 3_600_000:
                    held = sums.setdefault((visitor, name), [0.0, 0.0])
                    held[0] += add[0]
                    held[1] += add[1]
    expected: dict[tuple[str, str], list[float]] = {}
    for visitor, (variant, _) in exposed.items():
        for name in names:
            y = _value(name, *sums.get((visitor, name), [0.0, 0.0]))
            if y is not None:
                totals = expected.setdefault((variant, name), [0.0, 0.0, 0.0])
                totals[0] += 1
                totals[1] += y
                totals[2] += y * y
    log = engine.experiments.log
    log.flush()
    design = engine.experiments.design("t")
    assert design is not None
    incremental = log.totals("t")
    for key, totals in expected.items():
        assert incremental[key][:3] == pytest.approx(totals, rel=1e-9, abs=1e-9), key
    scratch = log.recount("t", design.metrics)
    for key, totals in incremental.items():
        assert totals == pytest.approx(scratch.get(key, [0.0] * 6), rel=1e-9, abs=1e-9), key
    # Some of everything happened: the checks compared something.
    assert len(exposed) > 40
    assert sum(t[0] for (_, m), t in expected.items() if m == "average_order_value") > 3
    assert sum(t[1] for (_, m), t in expected.items() if m == "points") > 3
    assert any(t[3] for t in incremental.values())  # covariates: events before exposure
    assert {v: u for v, (u, _) in log.exposures("t").items()} == dict(
        Counter(variant for variant, _ in exposed.values())
    )
