"""Enrichment from the real packaged data: user agents, crawlers, IP geolocation, referrers."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import crawleruseragents
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intently.events.enrich import Enricher, local_time, local_time_at
from intently.events.geo import GeoLocator, anonymize_ip
from intently.events.referrer import ReferrerClassifier, campaign_from_url
from intently.events.schema import Campaign, Context, PageContext, PageEvent
from intently.events.useragent import parse_user_agent


@pytest.fixture(scope="module")
def geo() -> GeoLocator:
    return GeoLocator()


@pytest.fixture(scope="module")
def referrers() -> ReferrerClassifier:
    return ReferrerClassifier()


@pytest.mark.parametrize(
    ("ua", "kind", "browser", "os"),
    [
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
         "like Gecko) Version/17.1 Mobile/15E148 Safari/604.1", "mobile", "Mobile Safari", "iOS"),
        ("Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
         "Version/16.6 Mobile/15E148 Safari/604.1", "tablet", "Mobile Safari", "iOS"),
        ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
         "Chrome/124.0.0.0 Mobile Safari/537.36", "mobile", "Chrome Mobile", "Android"),
        ("Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) "
         "Chrome/119.0 Safari/537.36", "tablet", "Chrome", "Android"),
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
         "Gecko) Version/17.2 Safari/605.1.15", "desktop", "Safari", "Mac OS X"),
        ("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0", "desktop",
         "Firefox", "Linux"),
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "bot",
         "Googlebot", None),
        ("curl/8.5.0", "bot", "curl", None),
    ],
)  # fmt: skip
def test_user_agents(ua: str, kind: str, browser: str, os: str | None) -> None:
    device = parse_user_agent(ua)
    assert device.type == kind
    assert device.browser == browser
    assert device.bot == (kind == "bot")
    if os is not None:
        assert device.os == os


def test_every_sampled_crawler_of_the_list_is_a_bot() -> None:
    instances = [
        instance
        for entry in crawleruseragents.CRAWLER_USER_AGENTS_DATA
        for instance in entry.get("instances", [])
    ]
    sample = random.Random(3).sample(instances, 300)
    missed = [ua for ua in sample if not parse_user_agent(ua).bot]
    assert missed == []


def test_geolocation_from_the_packaged_database(geo: GeoLocator) -> None:
    google = geo.locate("8.8.8.8")
    assert google is not None
    assert google.country == "US"
    assert google.timezone is not None
    assert google.timezone.startswith("America/")
    london = geo.locate("81.2.69.160")
    assert london is not None
    assert london.country == "GB"
    assert london.timezone == "Europe/London"
    v6 = geo.locate("2001:4860:4860::8888")  # IPv6 is covered too (the country varies by release)
    assert v6 is not None
    assert v6.country is not None


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "::1", "not-an-ip"])
def test_private_and_invalid_addresses_have_no_location(geo: GeoLocator, ip: str) -> None:
    assert geo.locate(ip) is None


@pytest.mark.parametrize(
    ("ip", "mode", "stored"),
    [
        ("203.0.113.77", "keep", "203.0.113.77"),
        ("203.0.113.77", "truncate", "203.0.113.0"),
        ("203.0.113.77", "drop", None),
        ("2001:db8:85a3:8d3:1319:8a2e:370:7348", "truncate", "2001:db8:85a3::"),
    ],
)
def test_ip_privacy_modes(ip: str, mode: str, stored: str | None) -> None:
    assert anonymize_ip(ip, mode) == stored  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("referrer", "page", "campaign", "medium", "source"),
    [
        ("https://www.google.com/search?q=running+shoes", "https://shop.example/", None, "search",
         "Google"),
        ("https://www.bing.com/search?q=trail", "https://shop.example/", None, "search", "Bing"),
        ("https://www.facebook.com/", "https://shop.example/", None, "social", "Facebook"),
        ("https://t.co/abc", "https://shop.example/", None, "social", "Twitter"),
        ("https://mail.google.com/mail/u/0/", "https://shop.example/", None, "email", "Gmail"),
        ("https://www.googleadservices.com/pagead/aclk", "https://shop.example/", None, "paid",
         "Google"),
        ("https://shop.example/cart", "https://shop.example/checkout", None, "internal", None),
        ("https://blog.shop.example/post", "https://shop.example/", None, "internal", None),
        ("https://news.ycombinator.com/item?id=1", "https://shop.example/", None, "social",
         "Hacker News"),
        ("https://running-blog.example.org/post", "https://shop.example/", None, "referral", None),
        (None, "https://shop.example/", None, "direct", None),
        (None, "https://shop.example/?gclid=abc", None, "paid", None),
        ("https://www.facebook.com/", "https://shop.example/",
         Campaign(source="fb", medium="paid_social"), "paid", "fb"),
        ("https://mail.google.com/", "https://shop.example/", Campaign(source="nl", medium="email"),
         "email", "nl"),
        (None, "https://shop.example/", Campaign(source="partner", medium="weird"), "referral",
         "partner"),
    ],
)  # fmt: skip
def test_referrer_classification(
    referrers: ReferrerClassifier,
    referrer: str | None,
    page: str,
    campaign: Campaign | None,
    medium: str,
    source: str | None,
) -> None:
    result = referrers(referrer, page, campaign)
    assert (result.medium, result.source) == (medium, source)


def test_search_term_from_the_referrer(referrers: ReferrerClassifier) -> None:
    result = referrers("https://www.bing.com/search?q=trail+shoes", "https://shop.example/")
    assert result.term == "trail shoes"


def test_configured_internal_hosts() -> None:
    classify = ReferrerClassifier(frozenset({"checkout.payments.example"}))
    assert (
        classify("https://checkout.payments.example/x", "https://shop.example/").medium
        == "internal"
    )


def test_utm_parameters_from_the_page_url() -> None:
    url = "https://shop.example/p?utm_source=news&utm_medium=email&utm_campaign=black%20friday&utm_term=shoes&utm_content=hero&x=1"
    assert campaign_from_url(url) == Campaign(
        source="news", medium="email", name="black friday", term="shoes", content="hero"
    )
    assert campaign_from_url("https://shop.example/p?x=1") is None
    assert campaign_from_url(None) is None


def test_local_time_follows_the_timezone_and_daylight_saving() -> None:
    winter = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
    summer = datetime(2026, 7, 15, 12, 0, tzinfo=UTC)
    assert local_time(winter, "Europe/Paris") == local_time(winter, "Europe/Paris")
    w = local_time(winter, "Europe/Paris")
    s = local_time(summer, "Europe/Paris")
    assert w is not None
    assert s is not None
    assert (w.hour, s.hour) == (13, 14)
    assert w.weekday == 3  # a Thursday
    assert local_time(winter, None) is None


def test_enricher_combines_everything_and_applies_ip_privacy(
    geo: GeoLocator, referrers: ReferrerClassifier
) -> None:
    event = PageEvent(
        anonymous_id="a",
        timestamp=datetime(2026, 11, 23, 22, 30, tzinfo=UTC),
        context=Context(
            ip="81.2.69.160",
            page=PageContext(
                url="https://shop.example/?utm_source=google&utm_medium=cpc",
                referrer="https://www.google.com/",
            ),
        ),
    )
    enrichment = Enricher(geo, referrers, "drop")(event, None, "curl/8.5.0")
    assert enrichment.geo is not None
    assert enrichment.geo.country == "GB"
    assert enrichment.referrer.medium == "paid"
    assert enrichment.campaign == Campaign(source="google", medium="cpc")
    assert enrichment.local is not None
    assert (enrichment.local.timezone, enrichment.local.hour) == ("Europe/London", 22)
    assert enrichment.device is not None
    assert enrichment.device.bot
    assert event.context is not None
    assert event.context.ip is None  # dropped after geolocation


def test_browser_timezone_wins_over_geo(geo: GeoLocator, referrers: ReferrerClassifier) -> None:
    event = PageEvent(
        anonymous_id="a",
        timestamp=datetime(2026, 11, 23, 22, 30, tzinfo=UTC),
        context=Context(ip="81.2.69.160", timezone="Asia/Tokyo"),
    )
    local = Enricher(geo, referrers)(event).local
    assert local is not None
    assert (local.timezone, local.hour, local.weekday) == ("Asia/Tokyo", 7, 1)


@pytest.mark.parametrize(
    ("referrer", "page", "medium"),
    [
        ("http://[::1", "https://shop.example/", "direct"),
        ("https://www.google.com/", "http://[::1/x?utm_medium=email", "search"),
        ("https://a.example:99999/", "https://shop.example/", "direct"),
    ],
)
def test_malformed_urls_are_tolerated(
    referrers: ReferrerClassifier, referrer: str, page: str, medium: str
) -> None:
    assert referrers(referrer, page).medium == medium


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 7_258_118_400_000),  # 1970 .. 2200, in epoch milliseconds
    st.sampled_from(["Europe/Paris", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe",
                     "America/St_Johns", "Africa/Monrovia", "Pacific/Chatham", "UTC"]),
)  # fmt: skip
def test_local_time_from_the_minute_cache_equals_the_exact_one(at_ms: int, zone: str) -> None:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=at_ms)
    assert local_time_at(at_ms, moment, zone) == local_time(moment, zone)


def test_a_minute_whose_local_hour_changes_within_it_is_computed_exactly() -> None:
    # Liberia was UTC-0:44:30 until 1972: its local hours began at hh:44:30 UTC.
    before = datetime(1971, 6, 1, 12, 44, 29, tzinfo=UTC)
    after = before + timedelta(seconds=2)
    for moment in (before, after):
        at_ms = int(moment.timestamp() * 1000)
        assert local_time_at(at_ms, moment, "Africa/Monrovia") == local_time(
            moment, "Africa/Monrovia"
        )
    hours = {local_time(m, "Africa/Monrovia").hour for m in (before, after)}  # type: ignore[union-attr]
    assert len(hours) == 2
