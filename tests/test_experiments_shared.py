"""Experiments measured across workers: with a database, every worker writes one
experiment log in PostgreSQL (experiments/tables.py), so a visitor exposed on one worker
whose purchase lands on another counts, results read the same on every worker, and a
visitor merged on one worker keeps their arm on the others.

Real Redis (shared state) and PostgreSQL; the reference is one worker on its own,
embedded store and SQLite log, given the same traffic: the totals must be the same."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest

from intently import Engine, ManualClock
from intently.experiments.spec import MetricSpec
from intently.experiments.tracking import ExperimentLog, ExperimentsUnavailable, Observation
from intently.stores.postgres import connect_postgres, migrate
from services import REDIS_URL, Relay, postgres_database, redis_namespace
from support import SECRET_KEY, START, client_for, make_settings, track
from test_decide import load_catalog
from test_experiments import _user_in, _visitor_in, experiment, hero

pytestmark = pytest.mark.anyio


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with redis_namespace() as prefix, postgres_database() as database:
        yield {"state_store": REDIS_URL, "redis_prefix": prefix, "database": database}


class Workers:
    def __init__(self, tmp_path: Path, shared: dict[str, Any]) -> None:
        self.tmp_path = tmp_path
        self.shared = shared
        self.engines: list[Engine] = []

    def open(self, name: str, *, alone: bool = False) -> Engine:
        settings = make_settings(
            self.tmp_path / name, worker_id=name, **({} if alone else self.shared)
        )
        engine = Engine(settings, clock=ManualClock(START))
        self.engines.append(engine)
        return engine

    def close(self) -> None:
        for engine in self.engines:
            engine.close()


@pytest.fixture
def workers(tmp_path: Path, deployment: dict[str, Any]) -> Iterator[Workers]:
    found = Workers(tmp_path, deployment)
    yield found
    found.close()


@pytest.fixture
def relay(workers: Workers) -> Iterator[Relay]:
    """Workers opened from now on reach PostgreSQL through a relay the test can cut."""
    database = workers.shared["database"]
    target = urlsplit(database)
    found = Relay(target.hostname or "127.0.0.1", target.port or 5432)
    through = database.replace(f":{target.port}/", f":{found.port}/")
    workers.shared = {**workers.shared, "database": through}
    yield found
    found.close()


async def define(engine: Engine, body: dict[str, Any]) -> None:
    await load_catalog(engine)
    async with client_for(engine, SECRET_KEY) as admin:
        answer = await admin.put("/v1/experiments/t", json=body)
    assert answer.status_code == 201, answer.text


def sync(engine: Engine) -> None:
    """What a tick does: the catalog and definitions other workers wrote."""
    assert engine.definitions is not None
    engine.sync_catalog()
    engine.adopt_definitions(engine.definitions.changes())


def purchase(visitor: str, revenue: float) -> dict[str, Any]:
    order = {"product_id": "p1", "price": revenue, "quantity": 1}
    properties = {"order_id": f"o-{visitor}", "revenue": revenue, "products": [order]}
    return track(event="Order Completed", anonymousId=visitor, properties=properties)


def results(engine: Engine) -> dict[str, Any]:
    found = engine.experiments.results("t")
    assert found is not None
    as_dict: dict[str, Any] = msgspec.to_builtins(found)
    return as_dict


def measured(found: dict[str, Any]) -> dict[str, Any]:
    """What results count: visitors per variant, each metric's units and means."""
    return {
        "variants": {v["id"]: (v["units"], v["multiple_exposures"]) for v in found["variants"]},
        "metrics": {m["name"]: (m["units"], m["means"]) for m in found["metrics"]},
    }


async def test_an_exposure_on_one_worker_and_the_purchase_on_another_count_together(
    workers: Workers,
) -> None:
    a, b, alone = workers.open("a"), workers.open("b"), workers.open("alone", alone=True)
    await define(a, experiment())
    await define(alone, experiment())
    sync(b)
    exposed, bought = 0, 0
    async with client_for(a) as on_a, client_for(b) as on_b, client_for(alone) as single:
        for i in range(40):
            visitor = f"v{i}"
            shown = await hero(on_a, anonymousId=visitor)
            assert (await hero(single, anonymousId=visitor))["arm"] == shown["arm"]
            in_test = str(shown.get("arm", "")).startswith("t:")  # (not the holdout)
            exposed += in_test
            if i % 3 == 0:  # bought: on the other worker
                bought += in_test
                for client in (on_b, single):
                    sent = await client.post("/v1/events", json=purchase(visitor, 10.0 + i))
                    assert sent.status_code == 200
    a.experiments.log.flush()  # a's exposures first: b's flush writes what it held back
    b.experiments.log.flush()
    on_a_results, on_b_results = results(a), results(b)
    assert measured(on_a_results) == measured(on_b_results)  # one log, read anywhere
    counted = measured(on_a_results)
    assert counted == measured(results(alone))  # as one worker counts the same traffic
    assert sum(units for units, _ in counted["variants"].values()) == exposed > 30
    units, means = counted["metrics"]["conversion_rate"]
    assert sum(units.values()) == exposed
    assert sum(means[v] * units[v] for v in units) == pytest.approx(bought)  # every purchase
    assert bought > 10
    # The running totals, kept a batch at a time by two writers, against a recount.
    log = b.experiments.log
    metrics = b.experiments.metrics_of("t")
    assert _rounded(log.totals("t")) == _rounded(log.recount("t", metrics))


def _rounded(totals: dict[tuple[str, str], list[float]]) -> dict[tuple[str, str], list[float]]:
    return {key: [round(x, 6) for x in values] for key, values in totals.items() if values[0]}


async def test_a_visitor_merged_on_one_worker_keeps_their_arm_on_the_others(
    workers: Workers,
) -> None:
    a, b = workers.open("a"), workers.open("b")
    await define(a, experiment())
    sync(b)
    anonymous = _visitor_in(a, "B", "anon")
    user = _user_in(a, "A")  # a known profile whose own hash says A
    async with client_for(a) as on_a, client_for(b) as on_b:
        known = track(event="Signed Up", userId=user, anonymousId=None, properties={})
        assert (await on_a.post("/v1/events", json=known)).status_code == 200
        assert (await hero(on_a, anonymousId=anonymous))["arm"] == "t:B"
        a.experiments.log.flush()
        # Signing in, on b, merges the anonymous profile into the user's.
        login = track(event="Signed In", userId=user, anonymousId=anonymous, properties={})
        assert (await on_b.post("/v1/events", json=login)).status_code == 200
        assert (await hero(on_b, userId=user))["arm"] == "t:B"
        b.experiments.log.flush()
        # a learns the alias at its next tick, and keeps them in B too.
        a.experiments.adopt_aliases(a.experiments.log.new_aliases())
        assert (await hero(on_a, userId=user))["arm"] == "t:B"
    a.experiments.log.flush()
    found = measured(results(a))
    assert found["variants"]["A"] == (0, 0)  # never shown A: not exposed to it anywhere
    assert found["variants"]["B"][1] == 0  # and not counted as having seen two


@pytest.mark.parametrize(("grace", "conversions"), [(0.5, 1.0), (0.0, 0.0)])
def test_an_event_written_before_its_exposure_on_another_worker_still_counts(
    deployment: dict[str, Any], tmp_path: Path, grace: float, conversions: float
) -> None:
    """The race the grace is for: b's writer reaches PostgreSQL with a visitor's purchase
    before a's writer with the visitor's exposure. Held back for the grace, it counts;
    without one (the control), it is lost."""
    metrics = [MetricSpec("conversion_rate")]
    database = deployment["database"]

    with connect_postgres(database) as connection:
        migrate(connection)
    a = ExperimentLog(tmp_path / "a.db", lambda _: metrics, database=database, worker="a",
                      grace_seconds=grace)  # fmt: skip
    b = ExperimentLog(tmp_path / "b.db", lambda _: metrics, database=database, worker="b",
                      grace_seconds=grace)  # fmt: skip
    try:
        bought = Observation("v1", START_MS + 1_000, seq=1, adds={"t": {"conversion_rate": (1, 1)}})
        b.observe(bought)  # queued first...
        time.sleep(0.1)
        a.expose("t", "A", "v1", START_MS, dict)  # ...exposed (a moment earlier) after
        a.flush()
        deadline = time.monotonic() + grace + 2.0

        def counted() -> list[float]:
            return b.totals("t").get(("A", "conversion_rate"), [0.0, 0.0])[:2]

        while counted()[1] < 1.0 and time.monotonic() < deadline:
            time.sleep(0.05)  # b writes it once the grace is over, without a flush
        assert counted() == [1.0, conversions]
        assert b.exposures("t") == {"A": (1, 0)}
    finally:
        a.close()
        b.close()


START_MS = int(START.timestamp() * 1000)


async def test_exposures_wait_while_postgres_is_away_and_are_counted_when_it_returns(
    workers: Workers, relay: Relay
) -> None:
    a = workers.open("a")
    await define(a, experiment())
    relay.cut()
    async with client_for(a) as on_a, client_for(a, SECRET_KEY) as admin:
        arms = [(await hero(on_a, anonymousId=f"w{i}")).get("arm") for i in range(20)]
        # Decisions are served as usual; the results wait for PostgreSQL.
        refused = await admin.get("/v1/experiments/t/results")
        assert refused.status_code == 503
        assert refused.json()["type"].endswith(":experiments-unavailable")
        assert a.experiments.log.unavailable
        relay.restore()
        answer = await admin.get("/v1/experiments/t/results")
        assert answer.status_code == 200, answer.text
    found = {v["id"]: v["units"] for v in answer.json()["variants"]}
    assert sum(found.values()) == sum(1 for arm in arms if str(arm).startswith("t:"))
    assert not a.experiments.log.unavailable
    assert a.experiments.log.failed == 0


async def test_a_sign_in_while_postgres_is_away_is_applied_all_the_same(
    workers: Workers, relay: Relay
) -> None:
    """An identity merge asks the experiment log which arms the absorbed id was in; with
    PostgreSQL away the event is still applied at once (the merge is queued, written when
    it returns), not failed or held for the connection's timeouts."""
    a = workers.open("a")
    await define(a, experiment())
    anonymous = _visitor_in(a, "B", "anon")
    async with client_for(a) as client:
        assert (await hero(client, anonymousId=anonymous))["arm"] == "t:B"
        a.experiments.log.flush()
        relay.cut()
        login = track(event="Signed In", userId="u-away", anonymousId=anonymous,
                      properties={})  # fmt: skip
        started = time.monotonic()
        assert (await client.post("/v1/events", json=login)).status_code == 200
        assert time.monotonic() - started < 3.0
        merged = a.context.lookup("u-away")
        assert merged is not None
        assert anonymous in merged.anonymous_ids
        assert a.context.failed == 0
        relay.restore()
        deadline = time.monotonic() + 10
        while True:  # the writer holds what waited, and writes it once it reconnects
            try:
                a.experiments.log.flush()
                break
            except ExperimentsUnavailable:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
    assert a.experiments.log.failed == 0
    assert a.experiments.arms_of(merged.id)["t"] == "B"  # the merge, written
