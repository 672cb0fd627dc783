"""Browser, OS and device type from a User-Agent, and known crawlers flagged as bots.

Parsing uses ua-parser (the uap-core regexes, with its native accelerator) and the
crawler-user-agents pattern list; both are kept by their communities and pinned in
pyproject. Results are cached per distinct string: real traffic repeats a few hundred
user agents, so the regexes run once for each.
"""

from __future__ import annotations

from functools import lru_cache

import crawleruseragents
import ua_parser
from msgspec import Struct

# Device types a placement rule can test.
DESKTOP, MOBILE, TABLET, BOT, OTHER = "desktop", "mobile", "tablet", "bot", "other"

# OS families of desktop machines, as uap-core names them.
_DESKTOP_OS = frozenset(
    {"Windows", "Mac OS X", "Linux", "Ubuntu", "Chrome OS", "Fedora", "Debian", "FreeBSD",
     "OpenBSD", "NetBSD", "Red Hat", "Mint", "Arch Linux", "Gentoo", "SUSE", "Solaris"}
)  # fmt: skip
_MOBILE_OS = frozenset(
    {"iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS", "Firefox OS", "Symbian OS",
     "Tizen", "HarmonyOS", "Sailfish"}
)  # fmt: skip


class DeviceInfo(Struct, omit_defaults=True, frozen=True, gc=False):
    """What the user agent says about the visitor's software and device."""

    type: str
    browser: str | None = None
    browser_version: str | None = None
    os: str | None = None
    os_version: str | None = None
    brand: str | None = None
    model: str | None = None
    bot: bool = False


def _version(*parts: str | None) -> str | None:
    present = [p for p in parts if p]
    return ".".join(present) or None


def _device_type(ua: str, result: ua_parser.Result, bot: bool) -> str:
    if bot:
        return BOT
    family = result.device.family if result.device else "Other"
    brand = (result.device.brand if result.device else None) or ""
    os_family = result.os.family if result.os else "Other"
    # uap-core names tablets in the device family or brand ("iPad", "Generic_Android_Tablet",
    # "Kindle"); Android tablets also leave out the "Mobile" token that phones send.
    if "Tablet" in brand or "Tablet" in family or family in {"iPad", "Kindle"}:
        return TABLET
    if os_family == "Android" and "Mobile" not in ua:
        return TABLET
    if os_family in _MOBILE_OS or "Mobile" in ua:
        return MOBILE
    if os_family in _DESKTOP_OS:
        return DESKTOP
    return OTHER


@lru_cache(maxsize=16_384)
def parse_user_agent(ua: str) -> DeviceInfo:
    """Parse one User-Agent string.

    >>> parse_user_agent("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)").bot
    True
    """
    result = ua_parser.parse(ua)
    bot = (result.device is not None and result.device.family == "Spider") or (
        crawleruseragents.is_crawler(ua)
    )
    agent, os, device = result.user_agent, result.os, result.device
    return DeviceInfo(
        type=_device_type(ua, result, bot),
        browser=agent.family if agent else None,
        browser_version=_version(agent.major, agent.minor, agent.patch) if agent else None,
        os=os.family if os else None,
        os_version=_version(os.major, os.minor, os.patch) if os else None,
        brand=device.brand if device else None,
        model=device.model if device else None,
        bot=bot,
    )
