"""The catalog: bulk upserts through the API and the CLI, each item judged on its own,
live availability, and durability across a restart."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from intently import Engine
from intently.cli import main
from support import SECRET_KEY, client_for, make_settings

pytestmark = pytest.mark.anyio

SHOE = {
    "id": "p1",
    "title": "Trail runner",
    "category": ["Shoes", "Running"],
    "brand": "Acme",
    "price": 89.9,
    "stock": 4,
    "tags": ["trail", "waterproof"],
    "url": "https://shop.example/p1",
    "attributes": {"color": "red", "sizes": [40, 41, 42], "ean": 2**70},
}


async def upload(engine: Engine, body: object, key: str = SECRET_KEY) -> httpx.Response:
    async with client_for(engine, key) as admin:
        return await admin.post("/v1/catalog/items", json=body)


async def test_items_are_upserted_one_by_one_with_errors_named(engine: Engine) -> None:
    items = [
        SHOE,
        {"id": "p2", "price": -1},
        {"title": "no id"},
        {"id": "p3", "colour": "unknown field"},
        {"id": "p4", "category": ["Shoes"], "stock": 0},
    ]
    response = await upload(engine, {"items": items})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["upserted"] == 2
    assert [(e["index"], e["pointer"]) for e in body["rejected"]] == [
        (1, "/items/1/price"),
        (2, "/items/2/id"),
        (3, "/items/3/colour"),
    ]
    async with client_for(engine, SECRET_KEY) as admin:
        stored = (await admin.get("/v1/catalog/items/p1")).json()
        missing = await admin.get("/v1/catalog/items/p2")
    assert stored == {**SHOE, "active": True, "available": True}
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")


async def test_an_item_sold_out_is_unavailable_from_the_acknowledgement_on(
    engine: Engine,
) -> None:
    await upload(engine, {"items": [SHOE, {"id": "p9"}]})
    assert engine.catalog.is_available("p1")
    assert engine.catalog.available == {"p1", "p9"}  # stock not tracked: available
    await upload(engine, {"items": [{**SHOE, "stock": 0}, {"id": "p9", "active": False}]})
    assert not engine.catalog.is_available("p1")
    assert engine.catalog.available == frozenset()
    await upload(engine, {"items": [{**SHOE, "stock": 2}]})
    assert engine.catalog.is_available("p1")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"items": []}, 400, "no-usable-item"),
        ({"items": [{"price": 1}]}, 400, "no-usable-item"),
        ({"things": []}, 400, "invalid-body"),
        ({"items": [{"id": "x"}] * 10_001}, 400, "invalid-body"),
    ],
)
async def test_bad_uploads_get_a_problem_and_store_nothing(
    engine: Engine, body: object, status: int, code: str
) -> None:
    response = await upload(engine, body)
    assert response.status_code == status
    assert response.json()["type"].endswith(code)
    assert len(engine.catalog) == 0


async def test_uploads_need_the_secret_key(engine: Engine) -> None:
    from support import WRITE_KEY

    response = await upload(engine, {"items": [SHOE]}, key=WRITE_KEY)
    assert response.status_code == 403
    assert len(engine.catalog) == 0


async def test_the_catalog_survives_a_restart(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    engine = Engine(settings)
    try:
        await upload(engine, {"items": [SHOE, {"id": "p4", "stock": 0}]})
    finally:
        engine.close()
    again = Engine(settings)
    try:
        assert again.catalog.get("p1") is not None
        assert again.catalog.available == {"p1"}
        assert json.loads(json.dumps(again.catalog.get("p1").attributes)) == SHOE["attributes"]  # type: ignore[union-attr]
    finally:
        again.close()


def test_catalog_import_reads_json_lines_and_csv(tmp_path: Path) -> None:
    data = tmp_path / "data"
    lines = tmp_path / "items.jsonl"
    lines.write_text(json.dumps(SHOE) + "\n\n" + '{"id": "p2", "price": "cheap"}\n' + "{oops\n")
    result = CliRunner().invoke(main, ["catalog", "import", str(lines), "--data-dir", str(data)])
    assert result.exit_code == 1
    assert "imported 1 items, 2 lines refused" in result.output
    assert "line 3: price" in result.output
    assert "line 4: $: malformed JSON" in result.output

    table = tmp_path / "items.csv"
    table.write_text(
        "id,title,category,price,stock,tags,color\n"
        "p5,Court shoe,Shoes > Tennis,59.5,0,clay|grass,white\n"
        "p6,Sock,,3,,,\n"
    )
    result = CliRunner().invoke(main, ["catalog", "import", str(table), "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    engine = Engine(make_settings(data))
    try:
        court = engine.catalog.get("p5")
        assert court is not None
        assert (court.category, court.tags, court.price, court.stock) == (
            ["Shoes", "Tennis"], ["clay", "grass"], 59.5, 0,
        )  # fmt: skip
        assert court.attributes == {"color": "white"}
        assert engine.catalog.available == {"p1", "p6"}
    finally:
        engine.close()


# -- offers and content variants ---------------------------------------------------------------

WELCOME = {
    "id": "welcome10",
    "kind": "discount",
    "title": "10% off your first order",
    "fields": {"code": "WELCOME10", "percent": 10},
    "eligibility": "profile.purchases.count == 0",
}


async def upload_offers(engine: Engine, body: object) -> httpx.Response:
    async with client_for(engine, SECRET_KEY) as admin:
        return await admin.post("/v1/catalog/offers", json=body)


async def test_offers_are_checked_one_by_one_with_their_rules(engine: Engine) -> None:
    offers = [
        WELCOME,
        {"id": "bad-rule", "kind": "banner", "eligibility": "profile.purchases.count =="},
        {"id": "bad-type", "kind": "banner", "eligibility": "session.cart.value + 1"},
        {"id": "no-kind"},
        {"id": "backwards", "kind": "cta", "startsAt": "2026-12-02T00:00:00Z",
         "endsAt": "2026-12-01T00:00:00Z"},
        {"id": "attack", "kind": "message", "eligibility": "__import__('os').system('id')"},
    ]  # fmt: skip
    response = await upload_offers(engine, {"offers": offers})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["upserted"] == 1
    rejected = {e["index"]: e for e in body["rejected"]}
    assert rejected[1]["pointer"] == "/offers/1/eligibility"
    assert rejected[1]["reason"] == "expression"
    assert "position" in rejected[1]["detail"]
    assert rejected[2]["reason"] == "expression"
    assert rejected[3]["pointer"] == "/offers/3/kind"
    assert rejected[4]["pointer"] == "/offers/4/endsAt"
    assert rejected[5]["reason"] == "expression"
    async with client_for(engine, SECRET_KEY) as admin:
        stored = (await admin.get("/v1/catalog/offers/welcome10")).json()
    assert stored == {**WELCOME, "active": True, "openNow": True}


async def test_offers_are_eligible_by_window_and_rule(engine: Engine) -> None:
    from intently.pipeline import ClientInfo

    timed = {"id": "winter", "kind": "banner", "startsAt": "2026-11-23T09:00:00Z",
             "endsAt": "2026-11-23T11:00:00Z"}  # fmt: skip
    await upload_offers(engine, {"offers": [WELCOME, timed, {"id": "off", "kind": "cta",
                                                             "active": False}]})  # fmt: skip
    now = engine.now_ms()  # the test clock: 2026-11-23 10:00 UTC
    # A visitor not seen yet meets only the offers without a rule.
    assert [o.id for o in engine.catalog.eligible_offers(None, now)] == ["winter"]
    from intently.events.validate import decode_event
    from support import track

    event, _ = decode_event(json.dumps(track(messageId="m1")).encode(), None)
    assert event is not None
    await engine.pipeline.ingest([(None, event)], ClientInfo())
    profile = engine.context.lookup("anon-1")
    assert [o.id for o in engine.catalog.eligible_offers(profile, now)] == ["welcome10", "winter"]
    later = now + 2 * 3600 * 1000
    assert [o.id for o in engine.catalog.eligible_offers(profile, later)] == ["welcome10"]


async def test_offers_survive_a_restart(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    engine = Engine(settings)
    try:
        await upload_offers(engine, {"offers": [WELCOME]})
    finally:
        engine.close()
    again = Engine(settings)
    try:
        live = again.catalog.get_offer("welcome10")
        assert live is not None
        assert live.matches is not None  # the rule compiled again
        assert [o.id for o in again.catalog.eligible_offers(None, again.now_ms())] == []
    finally:
        again.close()


async def test_concurrent_uploads_are_all_durable(tmp_path: Path) -> None:
    import asyncio

    settings = make_settings(tmp_path / "data")
    engine = Engine(settings)
    try:
        async with client_for(engine, SECRET_KEY) as admin:
            answers = await asyncio.gather(*(
                admin.post("/v1/catalog/items",
                           json={"items": [{"id": f"u{u}-{i}", "stock": u} for i in range(300)]})
                for u in range(6)
            ))  # fmt: skip
        assert [a.status_code for a in answers] == [200] * 6
    finally:
        engine.close()
    again = Engine(settings)
    try:
        assert len(again.catalog) == 1800
    finally:
        again.close()


async def test_ids_with_a_slash_or_a_line_break_can_be_read_back(engine: Engine) -> None:
    await upload(engine, {"items": [{"id": "shoes/trail-1"}, {"id": "odd\nid"}]})
    async with client_for(engine, SECRET_KEY) as admin:
        found = await admin.get("/v1/catalog/items/shoes/trail-1")
        odd = await admin.get("/v1/catalog/items/odd%0Aid")
        missing = await admin.get("/v1/catalog/items/none%0A")
    assert found.status_code == 200
    assert found.json()["id"] == "shoes/trail-1"
    assert odd.json()["id"] == "odd\nid"
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")


def test_catalog_import_takes_a_byte_order_mark_and_names_bad_numbers(tmp_path: Path) -> None:
    table = tmp_path / "excel.csv"
    table.write_bytes("\ufeffid,price,stock\np1,9.5,3\np2,nan,1\np3,1,inf\n".encode() + b"p4,1,1\n")
    result = CliRunner().invoke(
        main, ["catalog", "import", str(table), "--data-dir", str(tmp_path / "data")]
    )
    assert result.exit_code == 1
    assert "imported 2 items, 2 lines refused" in result.output
    assert "line 3: price" in result.output
    assert "line 4: stock" in result.output
