"""Shared fixtures: a real engine on a temporary data dir, and an HTTP client bound to it."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from intently import Engine, ManualClock
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
def engine(tmp_path: Path, clock: ManualClock) -> Iterator[Engine]:
    eng = Engine(make_settings(tmp_path / "data"), clock=clock)
    yield eng
    eng.close()


@pytest.fixture
async def client(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(engine) as c:
        yield c


# Browser fixtures (a live server, chromium through Playwright): tests/web_support.py.
pytest_plugins = ["web_support"]
