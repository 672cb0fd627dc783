"""`GET /sdk/intently.js`: the browser tag (web/static/intently.js), with the edge rules.

The tag's source is kept readable in the repository and minified once, at start, with
rjsmin (no build step). Each answer carries the edge rules (`INTENTLY_EDGE_FILE`) as
JSON in place of the tag's `"__INTENTLY_EDGE__"` literal: on a session's first page,
a rule matching the visit (campaign, source, medium, referrer, device, hour, path)
shows its offer at once, without waiting for a decision (docs/tag.md, "Edge rules").

A rule names an offer and a placement; the offer's content and the placement's
template are read from the engine when the tag is requested, so an offer uploaded or
changed later is served as it is now. A rule whose offer or placement is unknown (or
whose offer is closed, or has an eligibility rule the browser cannot judge) is left
out, with a warning logged once per change.

The answer is cached by browsers and proxies for a few minutes (`Cache-Control`),
validated with an `ETag`, and gzipped when the browser accepts it.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
import rjsmin  # type: ignore[import-untyped]
from msgspec import Meta, Struct
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from intently.configfile import ConfigError

if TYPE_CHECKING:
    from intently.engine import Engine

log = logging.getLogger(__name__)

TAG_SOURCE = Path(__file__).parent / "static" / "intently.js"
PLACEHOLDER = '"__INTENTLY_EDGE__"'
MAX_RULES = 100
CACHE_CONTROL = "public, max-age=300"
Short = Annotated[str, Meta(min_length=1, max_length=256)]
Values = Annotated[list[Short], Meta(max_length=100)]
Hour = Annotated[int, Meta(ge=0, le=24)]


class EdgeWhen(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """When a rule matches: every condition given holds (any of its values); none given
    matches every first page."""

    campaign: Values = msgspec.field(default_factory=list)  # utm_campaign
    source: Values = msgspec.field(default_factory=list)  # utm_source
    medium: Values = msgspec.field(default_factory=list)  # utm_medium
    referrer: Values = msgspec.field(default_factory=list)  # host suffixes
    device: list[Literal["mobile", "tablet", "desktop"]] = msgspec.field(default_factory=list)
    # [from, to): local hours in the browser; from > to wraps past midnight.
    hours: Annotated[list[Hour], Meta(min_length=2, max_length=2)] | None = None
    path: Values = msgspec.field(default_factory=list)  # path prefixes


class EdgeRule(Struct, forbid_unknown_fields=True, omit_defaults=True):
    placement: Annotated[str, Meta(min_length=1, max_length=64)]
    offer: Short
    when: EdgeWhen = msgspec.field(default_factory=EdgeWhen)
    description: Annotated[str, Meta(max_length=500)] | None = None


class EdgeFile(Struct, forbid_unknown_fields=True):
    edge: Annotated[list[EdgeRule], Meta(max_length=MAX_RULES)]


def load_edge_rules(path: Path) -> list[EdgeRule]:
    """The rules of an edge file; raises `ConfigError` naming the file and the field."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the edge rules file: {exc}") from None
    try:
        return msgspec.convert(document, EdgeFile).edge
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def resolve(engine: Engine, rules: list[EdgeRule]) -> tuple[list[dict[str, Any]], list[str]]:
    """The rules as the tag reads them (offer content and template filled in), and why
    the others were left out."""
    served: list[dict[str, Any]] = []
    skipped: list[str] = []
    now_ms = engine.now_ms()
    for index, rule in enumerate(rules):
        where = f"edge[{index}]"
        placement = engine.placements.get(rule.placement)
        live = engine.catalog.get_offer(rule.offer)
        if placement is None:
            skipped.append(f"{where}: unknown placement {rule.placement!r}")
        elif live is None:
            skipped.append(f"{where}: unknown offer {rule.offer!r}")
        elif not live.open_at(now_ms):
            skipped.append(f"{where}: offer {rule.offer!r} is not active now")
        elif live.matches is not None:
            skipped.append(
                f"{where}: offer {rule.offer!r} has an eligibility rule, which only the "
                "server can judge"
            )
        else:
            offer = live.offer
            item: dict[str, Any] = {"id": offer.id, "kind": offer.kind, "fields": offer.fields}
            if offer.title is not None:
                item["title"] = offer.title
            served.append(
                {
                    "placement": rule.placement,
                    "offer": item,
                    "template": placement.template.source,
                    "when": msgspec.to_builtins(rule.when),
                    "description": rule.description or f"edge rule {index}",
                }
            )
    return served, skipped


class _Served:
    """One version of the tag as answered: body, gzipped body, ETag."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.gzipped = gzip.compress(body, compresslevel=9, mtime=0)
        self.etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


class TagServer:
    """Serves the tag: minified once; re-assembled only when the edge rules' JSON
    changes (offers and placements are read again at each request)."""

    def __init__(self, engine: Engine, source: str | None = None) -> None:
        self.engine = engine
        minified: str = rjsmin.jsmin(source if source is not None else TAG_SOURCE.read_text())
        if minified.count(PLACEHOLDER) != 1:
            raise RuntimeError(f"the tag must hold {PLACEHOLDER} exactly once")
        head, tail = minified.split(PLACEHOLDER)
        self.head, self.tail = head.encode(), tail.encode()
        file = engine.settings.edge_file
        self.rules = load_edge_rules(file) if file is not None else []
        self._cached: tuple[bytes, _Served] | None = None
        self._warned: tuple[str, ...] = ()

    def current(self) -> _Served:
        served, skipped = resolve(self.engine, self.rules)
        if tuple(skipped) != self._warned:
            self._warned = tuple(skipped)
            for reason in skipped:
                log.warning("edge rule left out: %s", reason)
        # JSON is a JS expression; U+2028/2029 are escaped for older parsers.
        edge = (
            msgspec.json.encode(served or None)
            .replace("\u2028".encode(), b"\\u2028")
            .replace("\u2029".encode(), b"\\u2029")
        )
        if self._cached is None or self._cached[0] != edge:
            self._cached = (edge, _Served(self.head + edge + self.tail))
        return self._cached[1]

    async def handle(self, request: Request) -> Response:
        served = self.current()
        headers = {
            "Cache-Control": CACHE_CONTROL,
            "ETag": served.etag,
            "Vary": "Accept-Encoding",
        }
        if served.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        media_type = "application/javascript; charset=utf-8"
        if "gzip" in request.headers.get("accept-encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return Response(served.gzipped, media_type=media_type, headers=headers)
        return Response(served.body, media_type=media_type, headers=headers)


def routes(engine: Engine) -> list[BaseRoute]:
    tag = TagServer(engine)
    return [Route("/sdk/intently.js", tag.handle, methods=["GET", "HEAD"], include_in_schema=False)]
