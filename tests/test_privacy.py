"""Consent per purpose, browser privacy signals, export and erasure through the API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from intently import Engine, ManualClock
from support import SECRET_KEY, START, client_for, make_settings, track

pytestmark = pytest.mark.anyio


@pytest.fixture
async def admin(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(engine, SECRET_KEY) as c:
        yield c


async def consent_of(admin: httpx.AsyncClient, any_id: str) -> dict[str, bool]:
    body: dict[str, bool] = (await admin.get(f"/v1/profiles/{any_id}")).json()["consent"]
    return body


async def test_global_privacy_control_refuses_marketing_and_the_log_keeps_it(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, engine: Engine
) -> None:
    await client.post("/v1/events", json=track(anonymousId="gpc"), headers={"Sec-GPC": "1"})
    assert await consent_of(admin, "gpc") == {
        "analytics": True, "personalization": True, "marketing": False
    }  # fmt: skip
    # DNT is not honoured unless configured.
    await client.post("/v1/events", json=track(anonymousId="dnt"), headers={"DNT": "1"})
    assert (await consent_of(admin, "dnt"))["personalization"] is True
    # The refusal is in the stored event, so a replay reaches the same consent.
    [stored] = (await admin.get("/v1/profiles/gpc/export")).json()["events"]
    assert stored["event"]["context"]["consent"]["categoryPreferences"] == {"marketing": False}


async def test_dnt_when_configured_refuses_personalization(tmp_path: Path) -> None:
    engine = Engine(make_settings(tmp_path / "d", honor_dnt=True), clock=ManualClock(START))
    try:
        async with client_for(engine) as client, client_for(engine, SECRET_KEY) as admin:
            await client.post("/v1/events", json=track(anonymousId="d1"), headers={"DNT": "1"})
            state = (await admin.get("/v1/profiles/d1")).json()
            assert state["consent"]["personalization"] is False
            assert state["session"]["recent_products"] == []  # no interest kept
            assert state["counts"] == {"Product Viewed": 1}  # still counted (analytics)
    finally:
        engine.close()


async def test_an_opt_in_regime_keeps_nothing_personal_until_consent(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d", default_consent=["analytics"])
    engine = Engine(settings, clock=ManualClock(START))
    try:
        async with client_for(engine) as client, client_for(engine, SECRET_KEY) as admin:
            await client.post("/v1/events", json=track(anonymousId="o1"))
            state = (await admin.get("/v1/profiles/o1")).json()
            assert state["consent"]["personalization"] is False
            assert state["categories"] == {}
            # Consent given on an event applies from that event on.
            granted = track(anonymousId="o1", properties={"product_id": "p2", "category": "bags"},
                            context={"consent": {"categoryPreferences":
                                                 {"personalization": True}}})  # fmt: skip
            await client.post("/v1/events", json=granted)
            state = (await admin.get("/v1/profiles/o1")).json()
            assert state["consent"]["personalization"] is True
            assert list(state["categories"]) == ["bags"]
    finally:
        engine.close()


async def test_consent_updates_are_validated(
    admin: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    await client.post("/v1/events", json=track(anonymousId="v1"))
    assert (await admin.put("/v1/profiles/v1/consent", json={})).status_code == 400
    response = await admin.put("/v1/profiles/v1/consent", json={"advertising": False})
    assert response.status_code == 400
    response = await admin.put("/v1/profiles/v1/consent", json={"marketing": "no"})
    assert response.status_code == 400
    assert (
        await admin.put("/v1/profiles/nobody/consent", json={"marketing": False})
    ).status_code == 404
    assert (
        await client.put("/v1/profiles/v1/consent", json={"marketing": False})
    ).status_code == 403


async def test_erasing_a_merged_person_removes_every_identity_and_history(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, engine: Engine
) -> None:
    await admin.put("/v1/segments/viewers", json={"expression": "session.product_views > 0"})
    await client.post("/v1/events", json={"batch": [
        track(anonymousId="m-anon"), track(anonymousId="m-phone"),
        {"type": "identify", "anonymousId": "m-anon", "userId": "m-user"},
        {"type": "identify", "anonymousId": "m-phone", "userId": "m-user"},
        track(anonymousId="other"),
    ]})  # fmt: skip
    person: dict[str, Any] = (await admin.get("/v1/profiles/m-user")).json()
    assert person["anonymous_ids"] == ["m-anon", "m-phone"]
    assert "viewers" in person["segments"]["current"]
    erased = (await admin.delete("/v1/profiles/m-phone")).json()
    assert (erased["events"], erased["identities"]) == (4, 3)
    for any_id in ("m-user", "m-anon", "m-phone", person["id"]):
        assert (await admin.get(f"/v1/profiles/{any_id}")).status_code == 404
    assert engine.store.segment_history(person["id"], 100) == []
    assert engine.membership.members["viewers"] == 1  # only "other" is left
    assert (await admin.get("/v1/profiles/other")).status_code == 200
    assert (await admin.delete("/v1/profiles/m-user")).status_code == 404
