"""Content templates (act/templates.py): operator markup with escaped values, refused when
unsafe, carried in decisions when asked for."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from intently import Engine
from intently.act.placements import STARTER
from intently.act.templates import (
    DEFAULT_TEMPLATES,
    compile_template,
    default_template,
    format_value,
)
from intently.configfile import ConfigError
from support import SECRET_KEY, client_for


class _Tree(HTMLParser):
    """Elements (tag, attributes) and the text inside each class, from rendered HTML."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text_by_class: dict[str, str] = {}
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.elements.append((tag, attributes))
        if tag not in ("img", "br", "hr", "input"):
            self._open.append(attributes.get("class") or "")

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open:
            key = self._open[-1]
            self.text_by_class[key] = self.text_by_class.get(key, "") + data


def parse(html: str) -> _Tree:
    tree = _Tree()
    tree.feed(html)
    return tree


def decision(*items: dict[str, Any]) -> dict[str, Any]:
    return {"decision_id": "d-1", "placement": "hero", "items": list(items)}


def test_values_are_text_and_unsafe_addresses_are_dropped() -> None:
    template = compile_template(DEFAULT_TEMPLATES["items"])
    html = template.render(
        decision(
            {
                "id": "a",
                "title": "<script>alert(1)</script>",
                "url": "javascript:alert(1)",
                "image": "data:image/svg+xml,<svg onload=alert(1)>",
                "price": 89.0,
            },
            {"id": 'b"><b>', "title": "Tee & socks", "url": "/p/b", "price": 9.5},
        )
    )
    tree = parse(html)
    assert "<script" not in html
    assert "<b>" not in html
    anchors = [attrs for tag, attrs in tree.elements if tag == "a"]
    assert [a.get("data-intently-item") for a in anchors] == ["a", 'b"><b>']
    assert "href" not in anchors[0]  # javascript: dropped
    assert anchors[1]["href"] == "/p/b"
    images = [attrs for tag, attrs in tree.elements if tag == "img"]
    assert "src" not in images[0]  # data: dropped
    root = tree.elements[0][1]
    assert root["data-intently-decision"] == "d-1"
    assert "9.50" in html
    assert ">89<" in html


def test_an_offer_template_reads_the_first_item_and_its_fields() -> None:
    template = compile_template(
        '<a class="x" href="{{fields.url}}" title="{{title}}">{{fields.text}}'
        "<i>{{placement}}/{{decision_id}}</i><b>{{fields.missing}}</b></a>"
    )
    html = template.render(
        decision({"id": "o1", "title": 'Say "hi"', "fields": {"url": "https://x.test/a?b=1&c=2",
                                                               "text": "50% off"}})
    )  # fmt: skip
    tree = parse(html)
    _, attrs = tree.elements[0]
    assert attrs["href"] == "https://x.test/a?b=1&c=2"
    assert attrs["title"] == 'Say "hi"'
    assert tree.text_by_class["x"] == "50% off"
    assert "<i>hero/d-1</i><b></b>" in html


def test_no_items_renders_empty_values_and_no_repeated_element() -> None:
    html = compile_template(DEFAULT_TEMPLATES["items"]).render(decision())
    assert 'class="intently-item"' not in html
    assert html.startswith('<div class="intently-items"')


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("<script>alert(1)</script>", "<script> is not allowed"),
        ("<div><style>a{}</style></div>", "<style> is not allowed"),
        ("<iframe src='/x'></iframe>", "<iframe> is not allowed"),
        ('<img src="x" onerror="alert(1)">', "'onerror' is not allowed"),
        ('<a href="javascript:alert(1)">x</a>', "not a web address"),
        ('<a href=" JavaScript:alert(1)">x</a>', "not a web address"),
        ("<div>", "<div> is not closed"),
        ("</div>", "</div> closes no open <div>"),
        ("<ul><li data-each></li><li data-each></li></ul>", "only one element"),
        ("x" * 5000, "longer than 4096"),
    ],
)
def test_unsafe_or_broken_templates_are_refused(source: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="template") as refused:
        compile_template(source)
    assert problem in str(refused.value)


@pytest.mark.parametrize(
    ("value", "written"),
    [("text", "text"), (89.0, "89"), (89, "89"), (9.5, "9.50"), (0.125, "0.12"), (None, ""),
     (True, ""), ([1], ""), ({"a": 1}, ""), (float("nan"), ""), (float("inf"), "")],
)  # fmt: skip
def test_values_are_written_as_the_tag_writes_them(value: object, written: str) -> None:
    assert format_value(value) == written


@given(st.text(max_size=60))
def test_any_text_comes_back_as_the_same_text(text: str) -> None:
    """Whatever a content field holds, the rendered HTML shows exactly that text."""
    template = compile_template('<p class="t" title="{{title}}">{{title}}</p>')
    tree = parse(template.render(decision({"id": "x", "title": text})))
    _, attrs = tree.elements[0]
    assert [tag for tag, _ in tree.elements] == ["p"]
    assert attrs["title"] == text
    assert tree.text_by_class.get("t", "") == text


def test_every_starter_placement_has_a_template_that_compiles() -> None:
    for spec in STARTER.values():
        compile_template(default_template(spec.kind, spec.offer_kinds))


@pytest.mark.anyio
async def test_a_placement_template_is_checked_and_carried_in_decisions(engine: Engine) -> None:
    async with client_for(engine, SECRET_KEY) as admin:
        refused = await admin.put(
            "/v1/placements/promo",
            json={"kind": "offers", "policy": {"name": "epsilon-greedy"},
                  "template": "<div onclick='x()'>{{title}}</div>"},
        )  # fmt: skip
        assert refused.status_code == 400
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "template" in refused.json()["detail"]
        template = '<p class="promo">{{title}}</p>'
        defined = await admin.put(
            "/v1/placements/promo",
            json={"kind": "offers", "policy": {"name": "epsilon-greedy"}, "template": template},
        )
        assert defined.status_code == 201, defined.text
        await admin.post(
            "/v1/catalog/offers",
            json={"offers": [{"id": "o1", "kind": "banner", "title": "<b>Sale</b>"}]},
        )
    async with client_for(engine) as browser:
        asked = await browser.post(
            "/v1/decide",
            json={"placements": [{"id": "promo"}, {"id": "pdp_recs"}], "anonymousId": "v1",
                  "templates": True},
        )  # fmt: skip
        plain = await browser.post(
            "/v1/decide", json={"placements": [{"id": "promo"}], "anonymousId": "v1"}
        )
    assert asked.status_code == 200, asked.text
    promo, recs = asked.json()["decisions"]
    assert promo["template"] == template
    assert recs["template"] == DEFAULT_TEMPLATES["items"]
    assert plain.json()["decisions"][0]["template"] is None
    rendered = compile_template(promo["template"]).render(promo)
    assert "&lt;b&gt;Sale&lt;/b&gt;" in rendered
