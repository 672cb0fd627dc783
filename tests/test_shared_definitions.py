"""Placements, segments and experiments defined through the API on one worker are served
by every worker sharing the PostgreSQL database (stores/definitions.py): written there
first, installed by the others from their next poll, with when an experiment started
travelling with it. Real PostgreSQL, reached through a relay a test can cut."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from intently import Engine, ManualClock
from intently.api.app import _adopt_definitions
from intently.experiments.registry import Stored
from intently.experiments.spec import ExperimentSpec
from intently.stores.definitions import EXPERIMENT
from services import Relay, postgres_database
from support import SECRET_KEY, START, client_for, make_settings
from test_decide import load_catalog

pytestmark = pytest.mark.anyio

HERO = {"kind": "offers", "offer_kinds": ["banner"], "policy": {"name": "epsilon-greedy"}}
SEGMENT = {"expression": "session.events >= 3", "description": "engaged this visit"}


def experiment(**fields: Any) -> dict[str, Any]:
    return {
        "placements": ["spring_hero"],
        "status": "running",
        "variants": [{"id": "A", "weight": 0.5}, {"id": "B", "weight": 0.5, "offers": ["b2"]}],
        **fields,
    }


@pytest.fixture
def database() -> Iterator[str]:
    with postgres_database() as url:
        yield url


class Cluster:
    """Workers of one deployment: own data dirs, one database (worker "a" through a
    relay that can be cut)."""

    def __init__(self, database: str, tmp_path: Path) -> None:
        self.database = database
        self.tmp_path = tmp_path
        target = urlsplit(database)
        self.relay = Relay(target.hostname or "127.0.0.1", target.port or 5432)
        self.through_relay = database.replace(f":{target.port}/", f":{self.relay.port}/")
        self.engines: list[Engine] = []

    def worker(self, name: str, *, relayed: bool = False) -> Engine:
        url = self.through_relay if relayed else self.database
        settings = make_settings(self.tmp_path / name, database=url, worker_id=name)
        engine = Engine(settings, clock=ManualClock(START))
        self.engines.append(engine)
        return engine

    def close(self) -> None:
        for engine in self.engines:
            engine.close()
        self.relay.close()


@pytest.fixture
def cluster(database: str, tmp_path: Path) -> Iterator[Cluster]:
    found = Cluster(database, tmp_path)
    yield found
    found.close()


def sync(engine: Engine) -> int:
    assert engine.definitions is not None
    engine.sync_catalog()
    return engine.adopt_definitions(engine.definitions.changes())


async def test_definitions_made_on_one_worker_are_served_by_the_others(cluster: Cluster) -> None:
    a, b = cluster.worker("a"), cluster.worker("b")
    await load_catalog(a)
    async with client_for(a, SECRET_KEY) as admin:
        assert (await admin.put("/v1/placements/spring_hero", json=HERO)).status_code == 201
        assert (await admin.put("/v1/segments/engaged", json=SEGMENT)).status_code == 201
        assert (await admin.put("/v1/experiments/t", json=experiment())).status_code == 201
    assert b.placements.get("spring_hero") is None  # not before its poll
    assert sync(b) == 3
    assert sync(b) == 0  # each once
    assert a.adopt_definitions(a.definitions.changes()) == 0  # type: ignore[union-attr]

    placement = b.placements.get("spring_hero")
    assert placement is not None
    assert placement.spec == a.placements.get("spring_hero").spec  # type: ignore[union-attr]
    assert b.segments.get("engaged") is not None
    mine, theirs = a.experiments.registry.get("t"), b.experiments.registry.get("t")
    assert mine is not None
    assert theirs is not None
    assert theirs.spec == mine.spec
    assert theirs.started_ms == mine.started_ms  # both measure from when it started on a
    async with client_for(b) as client:
        answer = await client.post(
            "/v1/decide", json={"anonymousId": "v1", "placements": [{"id": "spring_hero"}]}
        )
    decision = answer.json()["decisions"][0]
    assert decision["items"], decision
    assert decision["arm"] in ("t:A", "t:B")

    # Stopped, then deleted, on the other worker this time. The table holds each
    # definition's latest state, so a learns of the deletion only (never having seen it
    # stopped) and deletes it all the same.
    async with client_for(b, SECRET_KEY) as admin:
        stopped = await admin.put("/v1/experiments/t", json=experiment(status="stopped"))
        assert stopped.status_code == 200, stopped.text
        assert (await admin.delete("/v1/experiments/t")).status_code == 204
        assert (await admin.delete("/v1/segments/engaged")).status_code == 204
    assert sync(a) == 2
    assert a.experiments.registry.get("t") is None
    assert a.segments.get("engaged") is None

    # A worker started later (an empty data dir) has every definition at once.
    c = cluster.worker("c")
    assert c.placements.get("spring_hero") is not None
    assert c.experiments.registry.get("t") is None
    async with client_for(c, SECRET_KEY) as admin:
        assert (await admin.delete("/v1/placements/spring_hero")).status_code == 204
    assert sync(a) == 1
    assert a.placements.get("spring_hero") is None


async def test_a_definition_postgres_cannot_take_changes_nothing_anywhere(
    cluster: Cluster,
) -> None:
    a, b = cluster.worker("a", relayed=True), cluster.worker("b")
    cluster.relay.cut()
    async with client_for(a, SECRET_KEY) as admin:
        refused = await admin.put("/v1/placements/spring_hero", json=HERO)
        assert refused.status_code == 503
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"].endswith(":definitions-unavailable")
        assert int(refused.headers["retry-after"]) > 0
        assert a.placements.get("spring_hero") is None  # not here either
        # Bad input is still told apart from an outage: a 400, before PostgreSQL is asked.
        bad = await admin.put("/v1/segments/engaged", json={"expression": "session.events >"})
        assert bad.status_code == 400
        cluster.relay.restore()
        assert (await admin.put("/v1/placements/spring_hero", json=HERO)).status_code == 201
    assert sync(b) == 1
    assert b.placements.get("spring_hero") is not None


async def test_the_tick_installs_what_others_defined_and_skips_what_it_cannot(
    cluster: Cluster,
) -> None:
    a, b = cluster.worker("a"), cluster.worker("b")
    # A definition b cannot serve (its placement exists nowhere): logged and counted, and
    # what follows it is still installed.
    assert a.definitions is not None
    orphan = ExperimentSpec(
        placements=["nowhere"], status="running",
        variants=[{"id": "A", "weight": 0.5}, {"id": "B", "weight": 0.5}],  # type: ignore[list-item]
    )  # fmt: skip
    a.definitions.publish(EXPERIMENT, "orphan", Stored(orphan, START_MS))
    async with client_for(a, SECRET_KEY) as admin:
        assert (await admin.put("/v1/placements/spring_hero", json=HERO)).status_code == 201
    await _adopt_definitions(b, asyncio.Lock())
    assert b.definitions_refused == 1
    assert b.experiments.registry.get("orphan") is None
    assert b.placements.get("spring_hero") is not None


START_MS = int(START.timestamp() * 1000)


async def test_a_change_checked_against_an_old_definition_is_refused_not_lost(
    cluster: Cluster,
) -> None:
    """b changed the placement; a, not having installed that yet, changes it too: its
    change was checked against the old definition, so it is refused (409), and a's
    next poll installs b's. Sent again, it is taken, and b installs it in turn. A poll
    read before a change here never installs its older row over it."""
    a, b = cluster.worker("a"), cluster.worker("b")
    async with client_for(a, SECRET_KEY) as admin:
        assert (await admin.put("/v1/placements/spring_hero", json=HERO)).status_code == 201
    sync(b)
    on_b = HERO | {"count": 2}
    on_a = HERO | {"count": 3}
    async with client_for(b, SECRET_KEY) as admin:
        assert (await admin.put("/v1/placements/spring_hero", json=on_b)).status_code == 200
    async with client_for(a, SECRET_KEY) as admin:
        refused = await admin.put("/v1/placements/spring_hero", json=on_a)
        assert refused.status_code == 409, refused.text
        assert refused.json()["type"].endswith(":changed-elsewhere")
        assert a.placements.get("spring_hero").spec.count == 1  # type: ignore[union-attr]
        assert a.definitions is not None
        read = a.definitions.read()  # b's row, as a tick reads it...
        assert a.adopt_definitions(a.definitions.take(read)) == 1
        assert a.placements.get("spring_hero").spec.count == 2  # type: ignore[union-attr]
        assert (await admin.put("/v1/placements/spring_hero", json=on_a)).status_code == 200
        assert a.adopt_definitions(a.definitions.take(read)) == 0  # ...older than a's now
    assert a.placements.get("spring_hero").spec.count == 3  # type: ignore[union-attr]
    sync(b)
    assert b.placements.get("spring_hero").spec.count == 3  # type: ignore[union-attr]


async def test_a_definition_read_before_what_it_needs_is_installed_once_that_is(
    cluster: Cluster,
) -> None:
    """The table holds each definition's latest state: an experiment created before its
    placement was last changed comes first, before the placement it runs on. A worker
    starting then installs it once the placement is there, not never."""
    a = cluster.worker("a")
    await load_catalog(a)
    async with client_for(a, SECRET_KEY) as admin:
        assert (await admin.put("/v1/placements/spring_hero", json=HERO)).status_code == 201
        assert (await admin.put("/v1/experiments/t", json=experiment())).status_code == 201
        changed = HERO | {"count": 2}
        assert (await admin.put("/v1/placements/spring_hero", json=changed)).status_code == 200
    c = cluster.worker("c")
    assert c.placements.get("spring_hero") is not None
    assert c.experiments.registry.get("t") is not None
    assert c.definitions_refused == 0
