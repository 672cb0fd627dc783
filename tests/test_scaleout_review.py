"""Failures found in review of the scale-out work, each kept from coming back: requests
that met a Redis outage answer 503 and never 500, whatever the endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from intently import Engine, ManualClock
from services import PrivateRedis
from support import SECRET_KEY, START, client_for, make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = PrivateRedis(directory, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    yield server
    server.stop()


def view(visitor: str) -> dict[str, object]:
    return {"type": "track", "event": "Product Viewed", "anonymousId": visitor,
            "properties": {"product_id": "p1", "category": "running", "price": 10}}  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/profiles/v1", None),
        ("GET", "/v1/profiles/v1/export", None),
        ("PUT", "/v1/profiles/v1/consent", {"marketing": False}),
        ("PUT", "/v1/segments/engaged", {"expression": "session.events >= 3"}),
    ],
)
async def test_a_request_that_meets_a_redis_outage_is_a_503_to_retry(
    private_redis: PrivateRedis, tmp_path: Path, method: str, path: str, body: object
) -> None:
    engine = Engine(
        make_settings(tmp_path / "data", state_store=private_redis.url), clock=ManualClock(START)
    )
    try:
        async with client_for(engine) as client:
            assert (await client.post("/v1/events", json=view("v1"))).status_code == 200
        private_redis.stop()
        async with client_for(engine, SECRET_KEY) as admin:
            answer = await admin.request(method, path, json=body)
            assert answer.status_code == 503, answer.text
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json()["type"].endswith(":state-unavailable")
            assert int(answer.headers["retry-after"]) > 0
            private_redis.start()
            engine.store.recover()
            again = await admin.request(method, path, json=body)
            assert again.status_code < 300, again.text
    finally:
        engine.close()
