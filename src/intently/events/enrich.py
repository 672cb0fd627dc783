"""Enrichment at ingest: device, geo, referrer, campaign and local time, added once.

Later stages read these fields instead of re-parsing user agents and URLs. The IP is
geolocated first and only then truncated or dropped, as the privacy setting says, so the
stored event never holds more of it than allowed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from msgspec import Struct

from intently.events.geo import GeoInfo, GeoLocator, IpMode, anonymize_ip
from intently.events.referrer import Referrer, ReferrerClassifier, campaign_from_url
from intently.events.schema import Campaign, Context, Event
from intently.events.useragent import DeviceInfo, parse_user_agent
from intently.events.validate import is_ip_address


class LocalTime(Struct, frozen=True, gc=False):
    """The visitor's wall clock when the event happened: hour 0-23, weekday 0 (Monday)-6."""

    timezone: str
    hour: int
    weekday: int


class Enrichment(Struct, omit_defaults=True, gc=False):
    """What intently adds to an event at ingest."""

    referrer: Referrer
    device: DeviceInfo | None = None
    geo: GeoInfo | None = None
    campaign: Campaign | None = None
    local: LocalTime | None = None


class Enricher:
    """Adds `Enrichment` to events; one per process, it holds the databases."""

    def __init__(
        self,
        geo: GeoLocator | None,
        referrers: ReferrerClassifier,
        ip_mode: IpMode = "truncate",
    ) -> None:
        self._geo = geo
        self._referrers = referrers
        self._ip_mode: IpMode = ip_mode
        # A visitor's events repeat the client (address, browser) and often the page and
        # referrer: one cached lookup each instead of several.
        # Bounded like the user-agent cache it sits on: its keys hold user agents (up to
        # 8 KB each), so 16 K entries bound it to about 130 MB even with hostile input.
        self._client = lru_cache(maxsize=16_384)(self._client_uncached)
        self._visit = lru_cache(maxsize=16_384)(self._visit_uncached)

    def __call__(
        self,
        event: Event,
        client_ip: str | None = None,
        client_user_agent: str | None = None,
        at_ms: int | None = None,
    ) -> Enrichment:
        """Enrich `event`, whose `timestamp` is already corrected.

        The request's own address and User-Agent stand in when the event's context lacks
        them (a browser sending its own events). `event.context.ip` is rewritten to what the
        privacy setting allows. `at_ms`, the timestamp in epoch milliseconds when the
        caller has it, lets the local time come from a cache.
        """
        context = event.context
        if context is None:
            context = event.context = Context()
        ip = context.ip or _valid_ip(client_ip)
        user_agent = context.user_agent or client_user_agent
        device, geo, context.ip = self._client(ip, user_agent)
        context.user_agent = user_agent
        page = context.page
        url = page.url if page else None
        if page is not None and page.search and url and "?" not in url:
            url += page.search
        referrer_url = page.referrer if page else None
        if referrer_url is None and context.referrer:
            found = context.referrer.get("url")
            referrer_url = found if isinstance(found, str) else None
        if context.campaign is None:
            campaign, referrer = self._visit(url, referrer_url)
        else:
            campaign = _merge_campaign(context.campaign, campaign_from_url(url))
            referrer = self._referrers(referrer_url, url, campaign)
        timezone = context.timezone or (geo.timezone if geo else None)
        return Enrichment(
            referrer=referrer,
            device=device,
            geo=geo,
            campaign=campaign,
            local=(
                local_time(event.timestamp, timezone)
                if at_ms is None
                else local_time_at(at_ms, event.timestamp, timezone)
            ),
        )

    def client(
        self, ip: str | None, user_agent: str | None
    ) -> tuple[DeviceInfo | None, GeoInfo | None]:
        """The device and place of a client (a decide request, which is not an event)."""
        device, geo, _ = self._client(_valid_ip(ip), user_agent)
        return device, geo

    def visit(self, url: str | None, referrer_url: str | None) -> tuple[Campaign | None, Referrer]:
        """The campaign and the referrer of a page view."""
        return self._visit(url, referrer_url)

    def _client_uncached(
        self, ip: str | None, user_agent: str | None
    ) -> tuple[DeviceInfo | None, GeoInfo | None, str | None]:
        """The device and place of a client, and its address as it may be stored."""
        device = parse_user_agent(user_agent) if user_agent else None
        geo = self._geo.locate(ip) if ip and self._geo is not None else None
        return device, geo, anonymize_ip(ip, self._ip_mode) if ip else None

    def _visit_uncached(
        self, url: str | None, referrer_url: str | None
    ) -> tuple[Campaign | None, Referrer]:
        """The campaign of a landing page (no campaign sent) and how the visit came."""
        campaign = campaign_from_url(url)
        return campaign, self._referrers(referrer_url, url, campaign)


def local_time(moment: datetime | None, timezone: str | None) -> LocalTime | None:
    """The local hour and weekday of `moment` in `timezone` (an IANA name)."""
    if moment is None or not timezone:
        return None
    local = moment.astimezone(_zone(timezone))
    return LocalTime(timezone, local.hour, local.weekday())


def local_time_at(at_ms: int, moment: datetime | None, timezone: str | None) -> LocalTime | None:
    """`local_time(moment, timezone)` for `moment` at `at_ms` epoch milliseconds, from a
    cache of (timezone, UTC minute): events arrive many a minute from few timezones."""
    if not timezone:
        return None
    found = _local_minute(timezone, at_ms // _MINUTE_MS)
    return found if found is not None else local_time(moment, timezone)


@lru_cache(maxsize=16_384)
def _local_minute(timezone: str, minute: int) -> LocalTime | None:
    """The local time all through one UTC minute, or None where it changes within it (a
    UTC offset with seconds, as some zones had before 1972: those are computed exactly)."""
    start = _EPOCH + timedelta(minutes=minute)
    first = local_time(start, timezone)
    last = local_time(start + _LAST_OF_MINUTE, timezone)
    return first if first == last else None


_MINUTE_MS = 60_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LAST_OF_MINUTE = timedelta(milliseconds=_MINUTE_MS - 1)
# ZoneInfo keeps only 8 zones strongly cached; visitors come from hundreds, and a miss
# reads the zone file from disk again.
_zone = lru_cache(maxsize=1024)(ZoneInfo)


def _valid_ip(candidate: str | None) -> str | None:
    """The transport's peer address, if it is one (test transports use names)."""
    return candidate if candidate is not None and is_ip_address(candidate) else None


def _merge_campaign(sent: Campaign | None, from_url: Campaign | None) -> Campaign | None:
    """Explicit `context.campaign` fields win; the landing URL's UTM tags fill the rest."""
    if sent is None or from_url is None:
        return sent or from_url
    return Campaign(
        source=sent.source or from_url.source,
        medium=sent.medium or from_url.medium,
        name=sent.name or from_url.name,
        term=sent.term or from_url.term,
        content=sent.content or from_url.content,
    )
