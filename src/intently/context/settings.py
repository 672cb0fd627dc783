"""The knobs of the context layer, with the defaults a shop would start from."""

from __future__ import annotations

from msgspec import Struct

MINUTE_MS = 60_000
DAY_MS = 24 * 60 * MINUTE_MS


class ContextSettings(Struct, frozen=True, kw_only=True):
    # A session ends after this much inactivity, or when a new campaign brings the
    # visitor back.
    session_timeout_ms: int = 30 * MINUTE_MS
    # Interest inside a session fades fast; over a lifetime, slowly.
    session_half_life_ms: int = 10 * MINUTE_MS
    profile_half_life_ms: int = 30 * DAY_MS
    # Anonymous profiles idle this long are forgotten (known ones are kept).
    anonymous_retention_ms: int = 30 * DAY_MS
    # Bounds on every list and map a profile or session holds.
    recent_products: int = 10
    recent_prices: int = 20
    recent_searches: int = 5
    recent_pages: int = 5
    recent_dwells: int = 10
    max_affinities: int = 20
    max_counts: int = 64
    max_cart_lines: int = 100
    max_traits: int = 100
    # Session evidence at which session and profile interest weigh the same.
    blend_pivot: float = 4.0
    # A help page visit this long is a sign of struggle.
    long_help_stay_ms: int = 30_000
    # Clicks on one target this close together, this many times, are a rage click.
    rage_click_gap_ms: int = 700
    rage_click_count: int = 3
    # Purposes granted when the visitor has said nothing (an opt-out regime); set to
    # ("analytics",) or () for opt-in.
    default_consent: tuple[str, ...] = ("analytics", "personalization", "marketing")
