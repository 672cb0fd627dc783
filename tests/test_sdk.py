"""The server side of the browser tag (web/sdk.py): serving, size, caching, edge rules."""

from __future__ import annotations

import gzip
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from intently import Engine, ManualClock
from intently.configfile import ConfigError
from intently.web.sdk import TAG_SOURCE, load_edge_rules
from support import SECRET_KEY, START, client_for, make_settings

pytestmark = pytest.mark.anyio
MAX_GZIPPED = 8 * 1024  # the budget for the tag as served


def _edge_of(script: str) -> object:
    """The edge rules the served tag carries (the JSON the server put in it)."""
    found = re.search(r"const EDGE=(.*?);const errors=", script)
    assert found, "the served tag carries no edge rules"
    return json.loads(found.group(1))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


EDGE_YAML = """
edge:
  - placement: home_hero
    offer: summer
    description: summer campaign visitors
    when: {campaign: [summer-sale], device: [mobile, desktop], hours: [6, 22]}
  - placement: home_hero
    offer: nowhere
    when: {referrer: [google.com]}
"""


@pytest.fixture
def edge_engine(tmp_path: Path) -> Iterator[Engine]:
    file = write(tmp_path / "edge.yaml", EDGE_YAML)
    settings = make_settings(tmp_path / "data", edge_file=file)
    eng = Engine(settings, clock=ManualClock(START))
    yield eng
    eng.close()


async def test_the_tag_is_served_minified_gzipped_and_cached(engine: Engine) -> None:
    async with client_for(engine, key=None) as client:
        plain = await client.get("/sdk/intently.js", headers={"Accept-Encoding": "identity"})
        zipped = await client.get("/sdk/intently.js", headers={"Accept-Encoding": "gzip"})
        again = await client.get(
            "/sdk/intently.js", headers={"If-None-Match": plain.headers["etag"]}
        )
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("application/javascript")
    assert "max-age" in plain.headers["cache-control"]
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.text == plain.text  # httpx decodes it
    served_gzipped = len(gzip.compress(plain.content, 9))
    assert served_gzipped <= MAX_GZIPPED, f"the tag is {served_gzipped} bytes gzipped"
    assert len(plain.content) < len(TAG_SOURCE.read_bytes()) * 0.7  # minified
    assert "__INTENTLY_EDGE__" not in plain.text  # no rules: null
    assert _edge_of(plain.text) is None
    assert again.status_code == 304


async def test_the_tag_is_not_an_api_operation(engine: Engine) -> None:
    async with client_for(engine, key=None) as client:
        document = (await client.get("/openapi.json")).json()
    assert "/sdk/intently.js" not in document["paths"]


async def test_edge_rules_carry_the_offer_and_template_as_they_are_now(
    edge_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="intently.web.sdk")
    async with client_for(edge_engine, key=None) as client:
        before = (await client.get("/sdk/intently.js")).text
        async with client_for(edge_engine, key=SECRET_KEY) as admin:
            offer = {"id": "summer", "kind": "banner", "title": "Summer <sale>",
                     "fields": {"text": "20% off", "url": "/summer"}}  # fmt: skip
            response = await admin.post("/v1/catalog/offers", json={"offers": [offer]})
            assert response.status_code == 200, response.text
        after = await client.get("/sdk/intently.js")
    # Before the offer exists the rule is left out (and said so); then it is served.
    assert _edge_of(before) is None
    assert "unknown offer 'summer'" in caplog.text
    assert "unknown offer 'nowhere'" in caplog.text
    rules = _edge_of(after.text)
    assert isinstance(rules, list)
    assert len(rules) == 1
    rule = rules[0]
    assert rule["placement"] == "home_hero"
    assert rule["offer"] == {**{k: offer[k] for k in ("id", "kind", "title", "fields")}}
    assert "{{title}}" in rule["template"]
    assert rule["when"] == {"campaign": ["summer-sale"], "device": ["mobile", "desktop"],
                            "hours": [6, 22]}  # fmt: skip
    assert after.headers["etag"] != ""
    assert len(gzip.compress(after.content, 9)) <= MAX_GZIPPED


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("edge:\n  - placement: home_hero\n", "offer"),
        ("edge:\n  - {placement: home_hero, offer: x, when: {hours: [6]}}\n", "hours"),
        ("edge:\n  - {placement: home_hero, offer: x, when: {hours: [6, 25]}}\n", "hours"),
        ("edge:\n  - {placement: home_hero, offer: x, when: {device: [phone]}}\n", "device"),
        ("edge:\n  - {placement: home_hero, offer: x, when: {weather: [sun]}}\n", "weather"),
        ("edge: {home_hero: x}\n", "edge"),
        ("rules: []\n", "edge"),
        ("edge: [\n", "cannot read"),
    ],
)
def test_a_bad_edge_file_is_refused_naming_the_field(tmp_path: Path, text: str, named: str) -> None:
    file = write(tmp_path / "edge.yaml", text)
    with pytest.raises(ConfigError, match=named) as caught:
        load_edge_rules(file)
    assert str(file) in str(caught.value)


def test_a_bad_edge_file_stops_the_start(tmp_path: Path) -> None:
    from intently.api.app import create_app

    file = write(tmp_path / "edge.yaml", "edge:\n  - {placement: home_hero}\n")
    eng = Engine(make_settings(tmp_path / "data", edge_file=file), clock=ManualClock(START))
    try:
        with pytest.raises(ConfigError, match="offer"):
            create_app(eng)
    finally:
        eng.close()


def test_the_edge_file_is_a_setting_read_from_the_environment(tmp_path: Path) -> None:
    from intently.config import load_settings

    settings = load_settings(environ={"INTENTLY_EDGE_FILE": str(tmp_path / "e.yaml")})
    assert settings.edge_file == tmp_path / "e.yaml"
