"""Shared fixtures: a real engine on a temporary data dir, and an HTTP client bound to it."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from intently import Engine, ManualClock
from services import REDIS_URL, PrivateCluster, PrivateRedis, redis_namespace
from support import START, client_for, make_settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def no_collection_pauses() -> Iterator[None]:
    """No automatic garbage collection during the test. Decisions have a 20 ms deadline; a
    full collection of a test process that has run hundreds of tests can take longer and
    turn a decision into its fallback. (The server freezes its start-up heap and collects
    rarely; see cli.serve.)"""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def state_store() -> str:
    """Which store `engine` runs on; a module runs its tests on every store by overriding
    this fixture with params (the store conformance suite, tests/test_identity.py)."""
    return "embedded"


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    with redis_namespace() as prefix:
        yield prefix


@pytest.fixture
def engine(
    tmp_path: Path, clock: ManualClock, state_store: str, request: pytest.FixtureRequest
) -> Iterator[Engine]:
    overrides: dict[str, str] = {}
    if state_store == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        overrides = {"state_store": REDIS_URL, "redis_prefix": prefix}
    eng = Engine(make_settings(tmp_path / "data", **overrides), clock=clock)
    yield eng
    eng.close()


@pytest.fixture
async def client(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(engine) as c:
        yield c


# Browser fixtures (a live server, chromium through Playwright): tests/web_support.py.
pytest_plugins = ["web_support"]


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateCluster]:
    """A Redis Cluster of three primaries, for the whole run (keys under each test's
    own prefix)."""
    cluster = PrivateCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of the test's own that it may stop and start again; persistent (an
    append-only file, fsynced each write): a restart keeps the state."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = PrivateRedis(directory, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    yield server
    server.stop()
