"""Content templates: how a decision becomes markup, in the browser tag and on the server.

A placement's template is an HTML fragment written by the operator (trusted markup) with
placeholders filled from the decision (untrusted values):

    <a class="hero" href="{{url}}"><h2>{{title}}</h2><p>{{fields.text}}</p></a>

- `{{ path }}` may stand in text and in attribute values, never in a tag or attribute
  name. A path is a dotted name into the decided item (`id`, `kind`, `title`, `url`,
  `image`, `price`, `fields.<name>`), or `decision_id` / `placement`.
- Values are always text: escaped here, set with `textContent` / `setAttribute` by the
  tag. A value with markup shows as that markup's text; it is never parsed.
- In `href`, `src` and `action`, a value must be a web address (http, https, a path or a
  relative address): anything else (`javascript:`, `data:`), or nothing, drops the
  attribute.
- A number is written without decimals when whole, else with two (`89`, `89.90`);
  missing values and other types are written as nothing.
- The first element marked `data-each` is repeated once per decided item (item widgets);
  elsewhere, and without one, placeholders read the first item.
- Each rendered root element gets `data-intently-decision`, each item's element
  `data-intently-item`: clicks are attributed to their decision from these.

The tag (web/static/intently.js) implements the same rules; tests/test_web_tag.py renders
the same cases in the browser and here.

Templates are checked when defined: no `<script>`, `<style>`, `<iframe>`, `<object>`,
`<embed>`, `<base>`, `<meta>` or `<link>`; no `on*` attributes; no `javascript:` address;
at most 4,096 characters. A template that fails is refused naming the problem.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

from intently.configfile import ConfigError

MAX_TEMPLATE = 4096
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)\s*\}\}")
_FORBIDDEN_TAGS = frozenset(
    {"script", "style", "iframe", "object", "embed", "base", "meta", "link", "frame", "form"}
)
_URL_ATTRIBUTES = frozenset({"href", "src", "action", "srcset", "poster", "xlink:href"})
_VOID = frozenset(
    {"area", "br", "col", "hr", "img", "input", "source", "track", "wbr"}
)  # elements without a closing tag
_SAFE_URL = re.compile(r"^(?:https?://|/|\./|\.\./|[^:/?#]*(?:[/?#]|$))", re.IGNORECASE)

# Starter templates, by what a placement shows: an offer's kind, or items.
DEFAULT_TEMPLATES: dict[str, str] = {
    "banner": (
        '<a class="intently-banner" href="{{fields.url}}">'
        '<img class="intently-image" src="{{fields.image}}" alt="">'
        '<span class="intently-text"><strong class="intently-title">{{title}}</strong>'
        '<span class="intently-body">{{fields.text}}</span>'
        '<span class="intently-cta">{{fields.cta}}</span></span></a>'
    ),
    "cta": (
        '<a class="intently-cta-block" href="{{fields.url}}">'
        '<strong class="intently-title">{{title}}</strong>'
        '<span class="intently-body">{{fields.text}}</span>'
        '<span class="intently-cta">{{fields.cta}}</span></a>'
    ),
    "message": (
        '<div class="intently-message"><strong class="intently-title">{{title}}</strong>'
        '<span class="intently-body">{{fields.text}}</span></div>'
    ),
    "discount": (
        '<div class="intently-discount"><strong class="intently-title">{{title}}</strong>'
        '<span class="intently-body">{{fields.text}}</span>'
        '<code class="intently-code">{{fields.code}}</code>'
        '<a class="intently-cta" href="{{fields.url}}">{{fields.cta}}</a></div>'
    ),
    "items": (
        '<div class="intently-items">'
        '<a class="intently-item" data-each href="{{url}}">'
        '<img class="intently-image" src="{{image}}" alt="">'
        '<span class="intently-title">{{title}}</span>'
        '<span class="intently-price">{{price}}</span></a></div>'
    ),
}


@dataclass(frozen=True)
class _Element:
    tag: str
    attributes: tuple[tuple[str, str], ...]
    children: tuple[_Node, ...]
    each: bool


_Node = _Element | str


class _Builder(HTMLParser):
    """Builds a tree of the template, refusing what a template may not hold."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, list[tuple[str, str]], list[_Node], bool]] = [
            ("", [], [], False)
        ]
        self.eaches = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _FORBIDDEN_TAGS:
            raise ConfigError(f"template: <{tag}> is not allowed")
        if _PLACEHOLDER.search(tag):
            raise ConfigError("template: a placeholder cannot name an element")
        kept: list[tuple[str, str]] = []
        each = False
        for name, value in attrs:
            if name.startswith("on"):
                raise ConfigError(f"template: event handler attribute {name!r} is not allowed")
            if "{{" in name:
                raise ConfigError("template: a placeholder cannot name an attribute")
            text = value or ""
            if name in _URL_ATTRIBUTES and "{{" not in text and not _SAFE_URL.match(text.strip()):
                raise ConfigError(f"template: {name}={text!r} is not a web address")
            if name == "data-each":
                each = True
                self.eaches += 1
                if self.eaches > 1:
                    raise ConfigError("template: only one element may be marked data-each")
                continue
            kept.append((name, text))
        self.stack.append((tag, kept, [], each))
        if tag in _VOID:
            self._close()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self._close()

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        if len(self.stack) == 1 or self.stack[-1][0] != tag:
            raise ConfigError(f"template: </{tag}> closes no open <{tag}>")
        self._close()

    def handle_data(self, data: str) -> None:
        self.stack[-1][2].append(data)

    def _close(self) -> None:
        tag, attributes, children, each = self.stack.pop()
        self.stack[-1][2].append(_Element(tag, tuple(attributes), tuple(children), each))


@dataclass(frozen=True)
class Template:
    source: str
    nodes: tuple[_Node, ...]

    def render(self, decision: dict[str, Any]) -> str:
        """The decision (a `PlacementDecision` as builtins) as HTML, values escaped."""
        items: list[dict[str, Any]] = list(decision.get("items") or [])
        scope = {**(items[0] if items else {}), **_decision_fields(decision)}
        return "".join(_render(node, scope, items, decision, root=True) for node in self.nodes)


def _decision_fields(decision: dict[str, Any]) -> dict[str, Any]:
    return {"decision_id": decision.get("decision_id"), "placement": decision.get("placement")}


def compile_template(source: str) -> Template:
    """Check and compile a template; raises `ConfigError` naming the problem."""
    if len(source) > MAX_TEMPLATE:
        raise ConfigError(f"template: longer than {MAX_TEMPLATE} characters")
    builder = _Builder()
    builder.feed(source)
    builder.close()
    if len(builder.stack) != 1:
        raise ConfigError(f"template: <{builder.stack[-1][0]}> is not closed")
    return Template(source, tuple(builder.stack[0][2]))


def format_value(value: Any) -> str:
    """A value as the tag writes it: text as is, whole numbers without decimals, other
    numbers with two; anything else (missing, lists, objects, booleans) as nothing."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            return ""
        return str(int(value)) if float(value).is_integer() else f"{value:.2f}"
    return ""


def lookup(scope: dict[str, Any], path: str) -> Any:
    value: Any = scope
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _fill(text: str, scope: dict[str, Any]) -> str:
    return _PLACEHOLDER.sub(lambda m: format_value(lookup(scope, m.group(1))), text)


def _render(
    node: _Node, scope: dict[str, Any], items: list[dict[str, Any]], decision: dict[str, Any],
    *, root: bool = False,
) -> str:  # fmt: skip
    if isinstance(node, str):
        return html.escape(_fill(node, scope), quote=False)
    if node.each:
        outer = _decision_fields(decision)
        return "".join(
            _element(node, {**item, **outer}, None, decision, root, str(item.get("id", "")))
            for item in items
        )
    return _element(node, scope, items, decision, root, None)


def _element(
    node: _Element, scope: dict[str, Any], items: list[dict[str, Any]] | None,
    decision: dict[str, Any], root: bool, item_id: str | None,
) -> str:  # fmt: skip
    parts = [node.tag]
    for name, raw in node.attributes:
        value = _fill(raw, scope)
        if name in _URL_ATTRIBUTES and not (value.strip() and _SAFE_URL.match(value.strip())):
            continue  # no address, or not a web address: the attribute is left out
        parts.append(f'{name}="{html.escape(value)}"')
    if root:
        parts.append(f'data-intently-decision="{html.escape(str(decision.get("decision_id")))}"')
    if item_id is not None:
        parts.append(f'data-intently-item="{html.escape(item_id)}"')
    opening = "<" + " ".join(parts) + ">"
    if node.tag in _VOID:
        return opening
    inner = "".join(_render(child, scope, items or [], decision) for child in node.children)
    return f"{opening}{inner}</{node.tag}>"


def default_template(kind: str, offer_kinds: Sequence[str]) -> str:
    """The starter template of a placement: items, or its first offer kind (banner if
    it names none)."""
    if kind == "items":
        return DEFAULT_TEMPLATES["items"]
    return DEFAULT_TEMPLATES[offer_kinds[0] if offer_kinds else "banner"]
