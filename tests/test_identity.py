"""Identity stitching through the HTTP API: merges, cross-device, the shared-browser guard,
alias, idempotence, and read-your-writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from intently import Engine
from support import SECRET_KEY, client_for, track

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["embedded", "redis"])
def state_store(request: pytest.FixtureRequest) -> str:
    """Identity stitching runs on every store (the conformance suite's end to end part)."""
    return str(request.param)


T0 = "2026-11-23T10:00:00Z"


def at(second: int) -> str:
    return f"2026-11-23T10:{second // 60:02d}:{second % 60:02d}Z"


def view(anonymous: str | None, product: str, category: str, second: int, **extra: Any) -> dict:
    event = track(
        properties={"product_id": product, "price": 20, "category": category},
        timestamp=at(second),
        **extra,
    )
    if anonymous is None:
        del event["anonymousId"]
    else:
        event["anonymousId"] = anonymous
    return event


def identify(anonymous: str | None, user: str, second: int, **traits: Any) -> dict:
    event: dict[str, Any] = {"type": "identify", "userId": user, "timestamp": at(second),
                             "traits": traits}  # fmt: skip
    if anonymous is not None:
        event["anonymousId"] = anonymous
    return event


@pytest.fixture
async def admin(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(engine, SECRET_KEY) as c:
        yield c


async def send(client: httpx.AsyncClient, *events: dict) -> None:
    response = await client.post("/v1/events", json={"batch": list(events)})
    assert response.status_code == 200, response.text
    assert response.json().get("rejected") is None, response.text


async def profile(admin: httpx.AsyncClient, any_id: str) -> dict[str, Any]:
    response = await admin.get(f"/v1/profiles/{any_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_identify_merges_the_anonymous_profile_into_the_known_one(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    # The known user has history from another visit; the anonymous visitor browses, then
    # logs in: one profile, holding both histories, reachable by every id.
    await send(client, view(None, "k1", "running", 0, userId="u-1"))
    await send(client, view("anon-a", "a1", "hiking", 10), view("anon-a", "a2", "hiking", 20))
    anonymous_id = (await profile(admin, "anon-a"))["id"]
    known_id = (await profile(admin, "u-1"))["id"]
    assert anonymous_id != known_id
    await send(client, identify("anon-a", "u-1", 30, email="a@example.test"))
    merged = await profile(admin, "anon-a")
    assert merged == await profile(admin, "u-1") == await profile(admin, known_id)
    assert merged["id"] == known_id
    assert (merged["user_ids"], merged["anonymous_ids"]) == (["u-1"], ["anon-a"])
    assert merged["counts"] == {"Product Viewed": 3, "identify": 1}
    assert set(merged["categories"]) == {"running", "hiking"}
    assert merged["traits"] == {"email": "a@example.test"}
    assert (await admin.get(f"/v1/profiles/{anonymous_id}")).status_code == 404
    # The merged history is the person's: the export holds all four events.
    export = (await admin.get("/v1/profiles/u-1/export")).json()
    assert len(export["events"]) == 4


async def test_a_second_device_joins_mid_session_and_the_next_read_sees_it(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await send(client, identify("phone", "u-2", 0), view("phone", "p1", "bags", 5))
    await send(client, view("laptop", "p2", "shoes", 60))  # not yet known
    await send(client, identify("laptop", "u-2", 70))
    merged = await profile(admin, "laptop")
    session = merged["session"]
    assert session["recent_products"] == ["p1", "p2"]
    assert session["events"] == 4
    assert merged["anonymous_ids"] == ["phone", "laptop"]


async def test_a_shared_browser_never_merges_two_users(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, engine: Engine
) -> None:
    await send(client, identify("shared", "alice", 0), view("shared", "x1", "tools", 5))
    # Bob logs in on the same browser without a reset: he gets his own profile and the
    # browser stays Alice's.
    await send(
        client, identify("shared", "bob", 10), view("shared", "x2", "toys", 15, userId="bob")
    )
    alice, bob = await profile(admin, "alice"), await profile(admin, "bob")
    assert alice["id"] != bob["id"]
    assert bob["anonymous_ids"] == []
    assert alice["anonymous_ids"] == ["shared"]
    assert bob["counts"] == {"identify": 1, "Product Viewed": 1}
    assert engine.context.identity.conflicts == 2
    # Export and erasure of Alice leave Bob's events alone.
    alice_events = (await admin.get("/v1/profiles/alice/export")).json()["events"]
    assert all(e["event"].get("userId") != "bob" for e in alice_events)
    await admin.delete("/v1/profiles/alice")
    assert len((await admin.get("/v1/profiles/bob/export")).json()["events"]) == 2


async def test_two_known_profiles_never_merge_through_an_anonymous_id(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await send(client, identify("dev-1", "carol", 0), identify("dev-2", "dave", 1))
    await send(client, identify("dev-1", "dave", 2))  # dev-1 is Carol's
    carol, dave = await profile(admin, "carol"), await profile(admin, "dave")
    assert carol["id"] != dave["id"]
    assert (carol["anonymous_ids"], dave["anonymous_ids"]) == (["dev-1"], ["dev-2"])


async def test_alias_merges_and_an_alias_to_itself_changes_nothing(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await send(client, view(None, "o1", "old", 0, userId="old-id"))
    await send(client, view(None, "n1", "new", 1, userId="new-id"))
    await send(client, {"type": "alias", "previousId": "old-id", "userId": "new-id",
                        "timestamp": at(2)})  # fmt: skip
    merged = await profile(admin, "old-id")
    assert merged["user_ids"] == ["new-id", "old-id"]
    assert merged["counts"]["Product Viewed"] == 2
    before = msgspec.json.encode(merged)
    await send(client, {"type": "alias", "previousId": "new-id", "userId": "new-id",
                        "timestamp": at(2)})  # fmt: skip
    after = await profile(admin, "new-id")
    after["counts"]["alias"] -= 1
    after["session"]["counts"]["alias"] -= 1
    after["session"]["events"] -= 1
    assert msgspec.json.encode(after) == before


async def test_merges_are_idempotent_when_the_same_ids_come_again(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, engine: Engine
) -> None:
    await send(client, view("anon-i", "i1", "a", 0), identify("anon-i", "u-i", 1))
    merges = engine.context.identity.merges
    ids = await profile(admin, "u-i")
    for second in range(2, 5):  # every later event carries both ids again
        await send(client, view("anon-i", "i2", "a", second, userId="u-i"))
    again = await profile(admin, "u-i")
    assert engine.context.identity.merges == merges
    assert (again["id"], again["user_ids"], again["anonymous_ids"]) == (
        ids["id"], ids["user_ids"], ids["anonymous_ids"]
    )  # fmt: skip


async def test_replaying_the_log_into_a_fresh_store_gives_the_same_state(
    client: httpx.AsyncClient, engine: Engine, tmp_path: Any
) -> None:
    from intently.context.stage import ContextStage
    from intently.stores.embedded import EmbeddedStore

    await send(
        client,
        view("r1", "p1", "c1", 0), view("r2", "p2", "c2", 1), identify("r1", "ru", 2),
        identify("r2", "ru", 3), {"type": "alias", "previousId": "r3", "userId": "ru",
                                  "timestamp": at(4)},
        view("r3", "p3", "c3", 5),
    )  # fmt: skip
    fresh = EmbeddedStore(tmp_path / "fresh.db")
    stage = ContextStage(fresh, engine.context.settings)
    assert stage.catch_up(engine.log) == 6
    encode = msgspec.msgpack.encode
    live = {p.id: encode(p) for p in engine.store.profiles()}
    assert {p.id: encode(p) for p in fresh.profiles()} == live
    assert fresh.links() == engine.store.links()
    fresh.close()


async def test_an_acknowledged_event_is_visible_to_the_next_request(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    # Read-your-writes: many writers, each reads its own effect right after the ack.
    async def write_then_read(n: int) -> None:
        await send(client, view(f"ryw-{n}", f"prod-{n}", "c", n))
        seen = await profile(admin, f"ryw-{n}")
        assert seen["session"]["recent_products"] == [f"prod-{n}"]

    await asyncio.gather(*(write_then_read(n) for n in range(40)))
