"""End to end: simulated visitors with a known true effect pass through the real decide
and event APIs; the results recover the effect within their interval, and A/A tests flag
significance at about their nominal rate. The report reads the same from the CLI."""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from scipy import stats as scipy_stats

from intently import Engine
from intently.cli import main
from support import SECRET_KEY, client_for, track
from test_decide import load_catalog
from test_experiments import asyncio_results

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_collection_pauses")]

PRICE = 40.0


async def run_visitors(
    client: httpx.AsyncClient, prefix: str, count: int, converts: dict[str, float], seed: int
) -> dict[str, list[int]]:
    """Each visitor sees home_hero once and buys with the probability of the banner they
    saw; returns, per arm, each exposed visitor's conversion (0/1)."""
    rng = random.Random(seed)
    outcomes: dict[str, list[int]] = {}
    for i in range(count):
        visitor = f"{prefix}{i}"
        body = {"anonymousId": visitor, "placements": [{"id": "home_hero"}]}
        answer = await client.post("/v1/decide", json=body)
        assert answer.status_code == 200, answer.text
        decision = answer.json()["decisions"][0]
        bought = rng.random() < converts[decision["items"][0]["id"]]
        arm = decision.get("arm")
        if arm is not None and ":" in arm and not arm.startswith("holdout"):
            outcomes.setdefault(arm.split(":", 1)[1], []).append(int(bought))
        if bought:
            line = {"product_id": "p1", "price": PRICE, "quantity": 1}
            order = track(
                event="Order Completed", anonymousId=visitor,
                properties={"order_id": f"o-{visitor}", "revenue": PRICE, "products": [line]},
            )  # fmt: skip
            assert (await client.post("/v1/events", json=order)).status_code == 200
    return outcomes


def metric(results: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(m for m in results["metrics"] if m["name"] == name)
    return found


async def test_a_known_lift_is_recovered_within_its_interval(
    engine: Engine, client: httpx.AsyncClient
) -> None:
    await load_catalog(engine)
    converts = {"b0": 0.10, "b1": 0.0, "b2": 0.16}  # A shows b0, B shows b2
    spec = {
        "placements": ["home_hero"], "status": "running",
        "variants": [{"id": "A", "weight": 0.5, "offers": ["b0"]},
                     {"id": "B", "weight": 0.5, "offers": ["b2"]}],
        "metrics": [{"name": "conversion_rate"}, {"name": "revenue_per_visitor"}],
    }  # fmt: skip
    async with client_for(engine, SECRET_KEY) as admin:
        assert (await admin.put("/v1/experiments/lift", json=spec)).status_code == 201
    outcomes = await run_visitors(client, "v", 2400, converts, seed=3)
    results = await asyncio_results(engine, "lift")

    units = {v["id"]: v["units"] for v in results["variants"]}
    assert units == {arm: len(seen) for arm, seen in outcomes.items()}
    assert results["sample_ratio"]["mismatch"] is False
    conversion = metric(results, "conversion_rate")
    b = conversion["comparisons"][0]
    assert b["variant"] == "B"
    # The figures are those of what the visitors did ...
    assert conversion["means"]["A"] == pytest.approx(sum(outcomes["A"]) / len(outcomes["A"]))
    assert conversion["means"]["B"] == pytest.approx(sum(outcomes["B"]) / len(outcomes["B"]))
    welch = scipy_stats.ttest_ind(outcomes["B"], outcomes["A"], equal_var=False)
    assert b["frequentist"]["p_value"] == pytest.approx(welch.pvalue, rel=1e-9)
    # ... and the true effect lies within every interval reported.
    absolute = b["frequentist"]["absolute"]
    assert absolute["lower"] < 0.06 < absolute["upper"]
    relative = b["frequentist"]["relative"]
    assert relative["lower"] < 0.6 < relative["upper"]
    sequential = b["sequential"]["relative"]
    assert sequential["lower"] <= relative["lower"]  # always valid: never narrower
    assert sequential["upper"] >= relative["upper"]
    assert b["significant"] is True
    assert b["bayesian"]["chance_to_beat_control"] > 0.95
    revenue = metric(results, "revenue_per_visitor")["comparisons"][0]["frequentist"]["absolute"]
    assert revenue["lower"] < 0.06 * PRICE < revenue["upper"]

    # The same results, readable in the terminal and as JSON, from the data dir.
    engine.experiments.log.flush()
    data_dir = str(engine.settings.data_dir)
    runner = CliRunner()
    shown = runner.invoke(main, ["experiments", "report", "lift", "--data-dir", data_dir])
    assert shown.exit_code == 0, shown.output
    assert "conversion_rate (proportion, window 72 h)" in shown.output
    assert "Sample ratio: chi-square p = " in shown.output
    lines = shown.output.splitlines()
    section = lines[lines.index("conversion_rate (proportion, window 72 h)") :]
    row = next(line for line in section if line.startswith("B "))
    assert f"{len(outcomes['B']):,}" in row
    assert f"{conversion['means']['B']:.2%}" in row
    assert "*" in row  # significant
    as_json = runner.invoke(
        main, ["experiments", "report", "lift", "--data-dir", data_dir, "--json"]
    )
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["variants"] == results["variants"]
    missing = runner.invoke(main, ["experiments", "report", "nope", "--data-dir", data_dir])
    assert missing.exit_code == 1
    assert "there is no experiment 'nope'" in missing.output


async def test_aa_tests_flag_significance_at_their_nominal_rate(
    engine: Engine, client: httpx.AsyncClient
) -> None:
    """Sixty A/A tests, one after another on the same placement (each a new salt): the
    share flagged stays near alpha = 0.05 (at most 9 of 60 has probability ~0.997 under
    the nominal rate; the visitors' behaviour is seeded, so the outcome is fixed)."""
    await load_catalog(engine)
    converts = {"b0": 0.3, "b1": 0.3, "b2": 0.3}
    flagged = sequential_flagged = ratio_flagged = 0
    rounds = 60
    async with client_for(engine, SECRET_KEY) as admin:
        for k in range(rounds):
            spec = {
                "placements": ["home_hero"], "status": "running", "layer": "aa",
                "variants": [{"id": "A", "weight": 0.5}, {"id": "A2", "weight": 0.5}],
                "metrics": [{"name": "conversion_rate"}],
            }  # fmt: skip
            assert (await admin.put(f"/v1/experiments/aa{k}", json=spec)).status_code == 201
            await run_visitors(client, f"r{k}-", 160, converts, seed=k)
            results = await asyncio_results(engine, f"aa{k}")
            comparison = metric(results, "conversion_rate")["comparisons"][0]
            flagged += comparison["significant"]
            sequential_flagged += comparison["sequential"]["significant"]
            ratio_flagged += results["sample_ratio"]["mismatch"]
            stop = await admin.put(f"/v1/experiments/aa{k}", json={**spec, "status": "stopped"})
            assert stop.status_code == 200
    assert flagged <= 9
    assert sequential_flagged <= flagged  # always-valid intervals are the wider
    assert ratio_flagged <= 1  # p < 0.001 each
