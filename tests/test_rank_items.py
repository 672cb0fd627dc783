"""Ranking the items an ask names (`placements: [{id, items}]`): a search's results or a
category page, ranked for the visitor by an item placement's slate and rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from statistics import mean
from typing import Any

import httpx
import pytest

from intently import Engine
from support import SECRET_KEY, client_for, track

# Decisions have a deadline: see conftest.no_collection_pauses.
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_collection_pauses")]

SEARCH = {
    "kind": "items", "recommender": "for_you", "policy": {"name": "slate"}, "count": 8,
    "deadline_ms": 2000,
}  # fmt: skip


def items(count: int = 40) -> list[dict[str, Any]]:
    """Hiking boots h0..h19 and running shoes r0..r19."""
    found = []
    for i in range(count // 2):
        for kind, category in (("h", "hiking"), ("r", "running")):
            found.append(
                {
                    "id": f"{kind}{i}", "title": f"{category} {i}",
                    "category": ["Shoes", category], "brand": f"brand{i % 3}",
                    "price": 60.0 + i,
                }
            )  # fmt: skip
    return found


@pytest.fixture
async def admin(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(engine, SECRET_KEY) as found:
        answer = await found.post("/v1/catalog/items", json={"items": items()})
        assert answer.status_code == 200, answer.text
        answer = await found.put("/v1/placements/search", json=SEARCH)
        assert answer.status_code in (200, 201), answer.text
        yield found


async def rank(
    client: httpx.AsyncClient, asked: list[str], visitor: str = "v1", **ask: Any
) -> dict[str, Any]:
    body = {"anonymousId": visitor, "placements": [{"id": "search", "items": asked, **ask}]}
    answer = await client.post("/v1/decide", json=body)
    assert answer.status_code == 200, answer.text
    decision: dict[str, Any] = answer.json()["decisions"][0]
    return decision


def ids(decision: dict[str, Any]) -> list[str]:
    return [item["id"] for item in decision["items"]]


# Relevance puts the hiking boots first: the running shoes must climb on their own.
RELEVANCE = [f"h{i}" for i in range(20)] + [f"r{i}" for i in range(20)]


def running_rank(decision: dict[str, Any]) -> float:
    """The mean position of the running shoes in a ranking (0 is the top)."""
    return mean(i for i, item in enumerate(ids(decision)) if item.startswith("r"))


@pytest.mark.usefixtures("admin")
async def test_exactly_the_asked_items_come_back_unknown_ones_dropped(
    client: httpx.AsyncClient,
) -> None:
    asked = ["r3", "nope", "h1", "r3", "h7", "ghost", "r0"]
    decision = await rank(client, asked)
    assert sorted(ids(decision)) == ["h1", "h7", "r0", "r3"]  # once each, no stranger
    assert decision["degraded"] is None
    assert decision["policy"]["name"] == "slate"
    for item in decision["items"]:
        assert 0 < item["propensity"] <= 1
        assert item["reasons"]
        assert item["title"]


@pytest.mark.usefixtures("admin")
async def test_all_asked_items_come_back_beyond_the_placement_count_unless_count_says(
    client: httpx.AsyncClient,
) -> None:
    whole = await rank(client, RELEVANCE)
    assert sorted(ids(whole)) == sorted(RELEVANCE)  # 40, though the placement shows 8
    assert len(ids(await rank(client, RELEVANCE, count=5))) == 5


@pytest.mark.usefixtures("admin")
async def test_a_fresh_visitor_gets_about_the_asked_order(client: httpx.AsyncClient) -> None:
    decision = await rank(client, RELEVANCE, visitor="fresh")
    # Nothing known of the visitor: the relevance order leads (the draw is random, with a
    # floor of exploration, so only its broad shape is asserted).
    assert running_rank(decision) > 22
    assert decision["items"][0]["reasons"][0] == "in the order asked"


async def test_viewing_a_category_moves_its_items_up(
    admin: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    before = mean([running_rank(await rank(client, RELEVANCE, visitor="v9")) for _ in range(5)])
    for product in ("r4", "r11", "r2"):
        event = track(anonymousId="v9", properties={"product_id": product, "category": "running"})
        answer = await client.post("/v1/events", json=event)
        assert answer.status_code == 200, answer.text
    decisions = [await rank(client, RELEVANCE, visitor="v9") for _ in range(5)]
    after = mean(running_rank(d) for d in decisions)
    assert after < before - 8, (before, after)
    shoe = next(item for item in decisions[0]["items"] if item["id"].startswith("r"))
    assert shoe["reasons"][0] == "in running, which you like", shoe
    # The same visitor, the same items: still exactly those.
    assert all(sorted(ids(d)) == sorted(RELEVANCE) for d in decisions)


@pytest.mark.usefixtures("admin")
async def test_sold_out_items_are_kept_but_ranked_last(
    admin: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    answer = await admin.post(
        "/v1/catalog/items", json={"items": [{"id": "h0", "title": "gone", "stock": 0}]}
    )
    assert answer.status_code == 200, answer.text
    decision = await rank(client, ["h0", "h1", "h2", "r1"])
    assert ids(decision)[-1] == "h0"
    assert "buried" in decision["items"][-1]["reasons"][-1]


async def test_the_placement_rules_apply_to_the_asked_items(
    admin: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    rules = [
        {"action": "exclude", "items": ["h2"]},
        {"action": "pin", "items": ["r19", "h99"]},  # h99 is not asked: not pinned
    ]
    answer = await admin.put("/v1/placements/search", json={**SEARCH, "rules": rules})
    assert answer.status_code in (200, 201), answer.text
    decision = await rank(client, ["h1", "h2", "h3", "r19"])
    assert ids(decision)[0] == "r19"
    assert decision["items"][0]["propensity"] == 1.0
    assert sorted(ids(decision)) == ["h1", "h3", "r19"]


@pytest.mark.usefixtures("admin")
async def test_nothing_known_answers_an_empty_marked_fallback(client: httpx.AsyncClient) -> None:
    decision = await rank(client, ["ghost", "nope"])
    assert decision["items"] == []
    assert decision["degraded"] == "none of the items asked is in the catalog"


@pytest.mark.usefixtures("admin")
async def test_items_asked_of_an_offer_placement_are_refused_naming_the_field(
    client: httpx.AsyncClient,
) -> None:
    body = {
        "anonymousId": "v1",
        "placements": [{"id": "search"}, {"id": "home_hero", "items": ["r1"]}],
    }
    for path in ("/v1/decide", "/v1/context"):
        answer = await client.post(path, json=body | {"events": []} if "context" in path else body)
        assert answer.status_code == 400, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["pointer"] == "/placements/1/items"


async def test_five_hundred_items_are_ranked_whole(
    admin: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    many = [{"id": f"x{i}", "title": f"x {i}", "category": ["Bags"]} for i in range(500)]
    answer = await admin.post("/v1/catalog/items", json={"items": many})
    assert answer.status_code == 200, answer.text
    decision = await rank(client, [item["id"] for item in many])
    assert decision["degraded"] is None
    assert sorted(ids(decision)) == sorted(item["id"] for item in many)
    assert all(0 < item["propensity"] <= 1 for item in decision["items"])
