"""`GET /v1/render/{placement}`: a placement's decision as HTML for one named person (email
content rendered at open time), signed URLs, bad input, consent, the decision log."""

from __future__ import annotations

import html
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from click.testing import CliRunner

from intently import Engine
from intently.act.decisions import DecisionLogReader
from intently.api.render import signature, signed_path
from intently.cli import main
from support import SECRET_KEY, WRITE_KEY, client_for, track

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_collection_pauses")]

HOSTILE = '<script>alert("x")</script> & "quotes"'
BANNERS = [
    {
        "id": "b1",
        "kind": "banner",
        "title": HOSTILE,
        "fields": {
            "url": "https://shop.example/sale?a=1&b=2",
            "image": "javascript:alert(1)",
            "text": "50% off <b>now</b>",
            "cta": "Shop",
        },
    }
]


async def load(engine: Engine) -> None:
    async with client_for(engine, SECRET_KEY) as admin:
        answer = await admin.post("/v1/catalog/offers", json={"offers": BANNERS})
        assert answer.status_code == 200, answer.text


def logged(engine: Engine) -> dict[str, Any]:
    engine.decisions.flush()
    reader = DecisionLogReader(engine.settings.decision_log_path)
    try:
        return {record.decision_id: record for record in reader.decisions()}
    finally:
        reader.close()


async def test_renders_the_decided_offer_escaped_and_logs_the_decision(
    engine: Engine, client: httpx.AsyncClient
) -> None:
    await load(engine)
    answer = await client.get("/v1/render/home_hero", params={"user_id": "u-42"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert answer.headers["cache-control"] == "no-store"
    markup = answer.text
    decision_id = answer.headers["intently-decision"]
    assert f'data-intently-decision="{decision_id}"' in markup
    # Values are text: markup in them is escaped, never parsed.
    assert html.escape(HOSTILE, quote=False) in markup
    assert "<script>" not in markup
    assert "50% off &lt;b&gt;now&lt;/b&gt;" in markup
    assert 'href="https://shop.example/sale?a=1&amp;b=2"' in markup
    assert "javascript:" not in markup  # an unsafe address drops the attribute
    record = logged(engine)[decision_id]
    assert record.placement == "home_hero"
    assert record.visitor == "u:u-42"
    assert record.items == ["b1"]
    assert record.propensities == [1.0]
    assert record.item_reasons == [["chosen by linucb with probability 1.00"]]
    # Every fetch is a new decision (rendered when the email is opened).
    again = await client.get("/v1/render/home_hero", params={"user_id": "u-42"})
    assert again.headers["intently-decision"] != decision_id


async def test_a_head_request_is_checked_but_decides_nothing(
    engine: Engine, client: httpx.AsyncClient
) -> None:
    await load(engine)
    before = len(logged(engine))
    answer = await client.head("/v1/render/home_hero", params={"user_id": "u-42"})
    assert answer.status_code == 200
    assert "intently-decision" not in answer.headers
    assert len(logged(engine)) == before
    missing = await client.head("/v1/render/nowhere", params={"user_id": "u-42"})
    assert missing.status_code == 404
    opened = await client.get("/v1/render/home_hero", params={"user_id": "u-42"})
    assert len(logged(engine)) == before + 1
    assert opened.headers["intently-decision"] in logged(engine)


async def test_nothing_to_show_renders_empty_with_the_reason(client: httpx.AsyncClient) -> None:
    answer = await client.get("/v1/render/home_hero", params={"anonymous_id": "a-1"})
    assert answer.status_code == 200
    assert answer.text == ""
    assert answer.headers["intently-degraded"] == "no offer is eligible"


async def test_signed_urls_work_without_headers_and_only_as_signed(engine: Engine) -> None:
    await load(engine)
    async with client_for(engine, SECRET_KEY) as admin:
        minted = await admin.post(
            "/v1/render/sign", json={"placement": "home_hero", "user_id": "u-7"}
        )
        assert minted.status_code == 200, minted.text
        expiring = await admin.post(
            "/v1/render/sign",
            json={"placement": "home_hero", "user_id": "u-7", "expires_in": 3600},
        )
    url = minted.json()["url"]
    assert url.startswith("http://intently.test/v1/render/home_hero?")
    path = minted.json()["path"]
    async with client_for(engine, key=None) as mail:  # a mail client: no headers
        answer = await mail.get(path)
        assert answer.status_code == 200, answer.text
        assert "data-intently-decision" in answer.text
        assert (await mail.get(expiring.json()["path"])).status_code == 200
        # Another person, another placement, a changed expiry: the signature does not match.
        for changed in (
            path.replace("u-7", "u-8"),
            path.replace("home_hero", "exit_intent_offer"),
            path + "&anonymous_id=a-1",
            expiring.json()["path"].replace("exp=", "exp=9"),
        ):
            refused = await mail.get(changed)
            assert refused.status_code == 403, changed
            assert refused.json()["type"] == "urn:intently:problem:bad-signature"
        # Expired: correctly signed, in the past.
        past = int(time.time()) - 10
        sig = signature(SECRET_KEY, "home_hero", "u-7", None, past)
        expired = await mail.get(
            "/v1/render/home_hero", params={"user_id": "u-7", "exp": str(past), "sig": sig}
        )
        assert expired.status_code == 403
        assert expired.json()["type"] == "urn:intently:problem:expired"
        # No signature, and no key.
        unsigned = await mail.get("/v1/render/home_hero", params={"user_id": "u-7"})
        assert unsigned.status_code == 401
        assert unsigned.headers["content-type"] == "application/problem+json"
        # A signature made with another secret.
        forged = signed_path("sk_someone_else", "home_hero", "u-7")
        assert (await mail.get(forged)).status_code == 403


async def test_bad_input_is_a_problem_naming_the_field(engine: Engine) -> None:
    async with client_for(engine, SECRET_KEY) as admin:
        unknown = await admin.get("/v1/render/nope", params={"user_id": "u"})
        assert unknown.status_code == 404
        assert unknown.json()["type"] == "urn:intently:problem:unknown-placement"
        nobody = await admin.get("/v1/render/home_hero")
        assert nobody.status_code == 400
        assert nobody.json()["pointer"] == "/user_id"
        assert "user_id or anonymous_id" in nobody.json()["detail"]
        too_long = await admin.get("/v1/render/home_hero", params={"user_id": "x" * 300})
        assert too_long.status_code == 400
        assert too_long.json()["pointer"] == "/user_id"
        bad_exp = await admin.get(
            "/v1/render/home_hero", params={"user_id": "u", "exp": "soon", "sig": "x"}
        )
        assert bad_exp.status_code == 200  # a key in the header: exp and sig are not read
        sign_nobody = await admin.post("/v1/render/sign", json={"placement": "home_hero"})
        assert sign_nobody.status_code == 400
        assert sign_nobody.json()["pointer"] == "/user_id"
        sign_unknown = await admin.post("/v1/render/sign", json={"placement": "x", "user_id": "u"})
        assert sign_unknown.status_code == 404
        sign_bad = await admin.post("/v1/render/sign", json={"placement": 3})
        assert sign_bad.status_code == 400
    async with client_for(engine, key=None) as anyone:
        bad_exp = await anyone.get(
            "/v1/render/home_hero", params={"user_id": "u", "exp": "soon", "sig": "x"}
        )
        assert bad_exp.status_code == 400
        assert bad_exp.json()["pointer"] == "/exp"
        # A digit that int() refuses (str.isdigit accepts it): a 400, not a 500.
        superscript = await anyone.get(
            "/v1/render/home_hero", params={"user_id": "u", "exp": "\u00b2", "sig": "x"}
        )
        assert superscript.status_code == 400
        assert superscript.json()["pointer"] == "/exp"
        wrong_key = await anyone.get(
            "/v1/render/home_hero", params={"user_id": "u"},
            headers={"Authorization": "Bearer wk_wrong"},
        )  # fmt: skip
        assert wrong_key.status_code == 401
    async with client_for(engine, WRITE_KEY) as writer:
        # The write key may render (it may decide for anyone already), not mint URLs.
        assert (
            await writer.get("/v1/render/home_hero", params={"user_id": "u"})
        ).status_code == 200
        minted = await writer.post(
            "/v1/render/sign", json={"placement": "home_hero", "user_id": "u"}
        )
        assert minted.status_code == 403


async def test_a_person_who_refused_personalization_gets_default_content(
    engine: Engine, client: httpx.AsyncClient
) -> None:
    await load(engine)
    assert (await client.post("/v1/events", json=track(userId="u-9"))).status_code == 200
    async with client_for(engine, SECRET_KEY) as admin:
        consent = await admin.put("/v1/profiles/u-9/consent", json={"personalization": False})
        assert consent.status_code == 200, consent.text
    answer = await client.get("/v1/render/home_hero", params={"user_id": "u-9"})
    assert answer.status_code == 200
    assert "data-intently-decision" in answer.text
    record = logged(engine)[answer.headers["intently-decision"]]
    assert record.personalized is False
    assert record.features == {}  # nothing about the person was used


async def test_render_url_command_mints_a_url_the_engine_accepts(engine: Engine) -> None:
    await load(engine)
    result = CliRunner().invoke(
        main,
        ["render-url", "home_hero", "--user-id", "u 1&x", "--expires-in", "600",
         "--base-url", "https://engine.example/"],
        env={"INTENTLY_SECRET_KEY": SECRET_KEY},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    url = result.output.strip()
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == (
        "https",
        "engine.example",
        "/v1/render/home_hero",
    )
    assert parse_qs(parts.query)["user_id"] == ["u 1&x"]
    async with client_for(engine, key=None) as mail:
        answer = await mail.get(f"{parts.path}?{parts.query}")
        assert answer.status_code == 200, answer.text
    missing = CliRunner().invoke(
        main, ["render-url", "home_hero"], env={"INTENTLY_SECRET_KEY": "s"}
    )
    assert missing.exit_code != 0
    assert "--user-id" in missing.output
