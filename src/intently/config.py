"""Settings: defaults, overridden by environment variables, overridden by the command line.

Every setting has an `INTENTLY_*` variable (12-factor); `intently serve --help` lists the
command-line flags for the common ones.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
from msgspec import Struct

from intently.context.settings import DAY_MS, MINUTE_MS, ContextSettings
from intently.events.geo import IpMode
from intently.log.eventlog import Synchronous


class Settings(Struct, kw_only=True):
    """How one engine runs."""

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("intently-data")
    # Keys: None means "read from the data dir, creating them on first start".
    write_key: str | None = None
    secret_key: str | None = None
    # Origins allowed to call the API from a browser (CORS); "*" for any.
    cors_origins: tuple[str, ...] = ()
    ip_mode: IpMode = "truncate"
    # None: the packaged DB-IP Lite City database; Path("off") disables geolocation.
    geoip_db: Path | None = None
    dedupe_window_seconds: int = 24 * 3600
    dedupe_max_entries: int = 2_000_000
    max_body_bytes: int = 512 * 1024
    max_batch: int = 500
    # NORMAL: an acknowledged event is in the log's WAL (written to the OS) before the
    # answer, so a crash or kill -9 of the process loses nothing; the WAL is fsynced at
    # every checkpoint (each second), so a power cut can lose the last second, as Redis's
    # `appendfsync everysec`. FULL: fsync before every acknowledgement, which ties request
    # latency to the disk's flush latency (see docs/architecture.md, "Durability").
    synchronous: Synchronous = "NORMAL"
    # Hosts of the site itself beyond the page's own (referrers from them are internal).
    internal_hosts: tuple[str, ...] = ()
    # Where profiles and sessions live: "embedded" (memory + SQLite in the data dir) or a
    # Redis URL shared by many workers (`--store redis://127.0.0.1:6379/0`).
    state_store: str = "embedded"
    # Prefix of every Redis key: several deployments may share one Redis.
    redis_prefix: str = "intently:"
    # Load shedding (api/shedding.py): past this many requests in flight, work that can
    # wait (exports, the dashboard, metrics) is refused with 503; past the second, all.
    shed_at_in_flight: int = 256
    refuse_at_in_flight: int = 4096
    # PostgreSQL for durable records (events, decisions, rewards, exposures), shipped from
    # the local logs in the background: `postgresql://user@host:5432/db`. None: none.
    database: str | None = None
    # Entries kept (approximately) in the Redis event stream for consumers downstream:
    # each holds an event as JSON (about 1 KB), so this bounds the stream's memory.
    stream_length: int = 100_000
    # Workers sharing Redis: how often one of them writes a snapshot of what they learned
    # for the workers that start later (learn/snapshot.py). At most 60: the learning
    # stream, which a worker starting reads from the snapshot on, keeps 120 s. The event
    # loop of the worker whose turn it is pauses while it captures and encodes it
    # (bench/snapshot.py: 44 ms at 84,000 views learned, 167 ms at 335,000).
    learning_snapshot_seconds: float = 30.0
    # This worker's name in a shared store (which worker's log a position belongs to):
    # by default the host name and the data dir, unique per worker.
    worker_id: str | None = None
    # How often a cut of the changed state is taken and written to state.db (encoded a
    # few profiles per event, see stores/embedded.py); start-up replays the log after it,
    # so this bounds the replay. Measured at 1,000 req/s: writing every second added about
    # 0.4 ms to the single-event p99 (SQLite takes 15-35 ms of a core per 640 profiles);
    # every 5 s, the p99 was that of no state writes at all.
    state_flush_seconds: float = 5.0
    session_timeout_minutes: float = 30
    anonymous_retention_days: float = 30
    # Purposes granted when a visitor has said nothing: all three is an opt-out regime;
    # "analytics" alone (or nothing) is opt-in.
    default_consent: tuple[str, ...] = ("analytics", "personalization", "marketing")
    # Segments defined by the operator (YAML: `segments: {name: {expression: ...}}`).
    segments_file: Path | None = None
    # Placements defined by the operator (YAML: `placements: {id: {...}}`), over the
    # starter configuration.
    placements_file: Path | None = None
    # Experiments defined by the operator (YAML: `experiments: {id: {...}}`).
    experiments_file: Path | None = None
    # Triggered placements (YAML: `triggers: {name: {segment, placement, url}}`): entering
    # the segment decides the placement and POSTs it to the url (act/triggers.py).
    triggers_file: Path | None = None
    # Edge rules served with the browser tag (YAML: `edge: [{placement, offer, when}]`):
    # the first page of a session shows a matching offer without a round trip (web/sdk.py).
    edge_file: Path | None = None
    # The global holdout: this share of visitors gets default content everywhere, so
    # that the total lift of personalization is measured. The salt places visitors: a
    # new salt draws a new holdout.
    holdout_share: float = 0.05
    holdout_salt: str = "intently-global-holdout"
    # How long after a decision an outcome is still credited to it.
    attribution_window_minutes: float = 30
    # At start-up, recommenders learn again from at most this many of the log's latest
    # events (they are kept in memory only).
    recommender_warmup_events: int = 1_000_000
    # At start-up, each offer placement's bandit learns again from at most this many of
    # its latest logged decisions whose reward is known.
    policy_warmup_decisions: int = 100_000
    # Signs segment webhooks (HMAC-SHA256); needed once a segment names a webhook.
    webhook_secret: str | None = None
    webhook_max_attempts: int = 6
    webhook_timeout_seconds: float = 5.0
    # Browser privacy signals: Sec-GPC refuses marketing; DNT refuses personalization
    # and marketing.
    honor_gpc: bool = True
    honor_dnt: bool = False
    # Serve POST /_bench/hello, the ceiling that bench/ingest.py measures against.
    bench_endpoints: bool = False
    # Serve the demo shop at /demo (set by `intently demo`, which also seeds its data).
    demo: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1-65535, not {self.port}")
        if self.max_batch < 1 or self.max_body_bytes < 1024:
            raise ValueError("max_batch must be >= 1 and max_body_bytes >= 1024")
        if self.session_timeout_minutes <= 0 or self.anonymous_retention_days <= 0:
            raise ValueError("session_timeout_minutes and anonymous_retention_days must be > 0")
        if not 0.0 <= self.holdout_share < 1.0:
            raise ValueError(f"holdout_share must be in [0, 1), not {self.holdout_share}")
        if not 0 < self.learning_snapshot_seconds <= 60:
            every = self.learning_snapshot_seconds
            raise ValueError(f"learning_snapshot_seconds must be in (0, 60], not {every}")
        unknown = set(self.default_consent) - {"analytics", "personalization", "marketing"}
        if unknown:
            raise ValueError(
                f"default_consent: unknown purposes {sorted(unknown)}; "
                "use analytics, personalization, marketing"
            )

    @property
    def event_log_path(self) -> Path:
        return self.data_dir / "events.db"

    @property
    def attribution_window_ms(self) -> int:
        return int(self.attribution_window_minutes * 60_000)

    @property
    def decision_log_path(self) -> Path:
        return self.data_dir / "decisions.db"

    @property
    def experiments_path(self) -> Path:
        return self.data_dir / "experiments.db"

    @property
    def state_path(self) -> Path:
        return self.data_dir / "state.db"

    @property
    def worker(self) -> str:
        """This worker's id among those sharing Redis and PostgreSQL, which key its log
        positions there: the setting, or one made at the first start and kept in the data
        dir (a container's host name changes when it is recreated; a new id would make
        the worker apply its whole log again)."""
        if self.worker_id:
            return self.worker_id
        kept = self.data_dir / "worker-id"
        try:
            return kept.read_text().strip()
        except FileNotFoundError:
            pass
        made = f"{socket.gethostname()}:{self.data_dir.resolve()}"
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            kept.write_text(made + "\n")
        except OSError:  # a read-only data dir (an export): the id is only read here
            pass
        return made

    def context_settings(self) -> ContextSettings:
        return ContextSettings(
            session_timeout_ms=int(self.session_timeout_minutes * MINUTE_MS),
            anonymous_retention_ms=int(self.anonymous_retention_days * DAY_MS),
            default_consent=self.default_consent,
        )


# INTENTLY_<NAME> -> field; lists are comma-separated.
_ENV_FIELDS = {
    "HOST": "host",
    "PORT": "port",
    "DATA_DIR": "data_dir",
    "WRITE_KEY": "write_key",
    "SECRET_KEY": "secret_key",
    "CORS_ORIGINS": "cors_origins",
    "IP_MODE": "ip_mode",
    "GEOIP_DB": "geoip_db",
    "DEDUPE_WINDOW_SECONDS": "dedupe_window_seconds",
    "DEDUPE_MAX_ENTRIES": "dedupe_max_entries",
    "MAX_BODY_BYTES": "max_body_bytes",
    "MAX_BATCH": "max_batch",
    "SYNCHRONOUS": "synchronous",
    "INTERNAL_HOSTS": "internal_hosts",
    "BENCH_ENDPOINTS": "bench_endpoints",
    "STATE_STORE": "state_store",
    "STORE": "state_store",
    "REDIS_PREFIX": "redis_prefix",
    "WORKER_ID": "worker_id",
    "DATABASE": "database",
    "STREAM_LENGTH": "stream_length",
    "LEARNING_SNAPSHOT_SECONDS": "learning_snapshot_seconds",
    "SHED_AT_IN_FLIGHT": "shed_at_in_flight",
    "REFUSE_AT_IN_FLIGHT": "refuse_at_in_flight",
    "STATE_FLUSH_SECONDS": "state_flush_seconds",
    "SESSION_TIMEOUT_MINUTES": "session_timeout_minutes",
    "ANONYMOUS_RETENTION_DAYS": "anonymous_retention_days",
    "DEFAULT_CONSENT": "default_consent",
    "SEGMENTS_FILE": "segments_file",
    "PLACEMENTS_FILE": "placements_file",
    "EXPERIMENTS_FILE": "experiments_file",
    "TRIGGERS_FILE": "triggers_file",
    "EDGE_FILE": "edge_file",
    "HOLDOUT_SHARE": "holdout_share",
    "HOLDOUT_SALT": "holdout_salt",
    "ATTRIBUTION_WINDOW_MINUTES": "attribution_window_minutes",
    "RECOMMENDER_WARMUP_EVENTS": "recommender_warmup_events",
    "POLICY_WARMUP_DECISIONS": "policy_warmup_decisions",
    "WEBHOOK_SECRET": "webhook_secret",
    "WEBHOOK_MAX_ATTEMPTS": "webhook_max_attempts",
    "WEBHOOK_TIMEOUT_SECONDS": "webhook_timeout_seconds",
    "HONOR_GPC": "honor_gpc",
    "HONOR_DNT": "honor_dnt",
}
_FLAGS = {"bench_endpoints", "honor_gpc", "honor_dnt"}
_LISTS = {"cors_origins", "internal_hosts", "default_consent"}


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from the environment, then `overrides` (None values are ignored)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for suffix, name in _ENV_FIELDS.items():
        raw = env.get(f"INTENTLY_{suffix}")
        if raw is None or raw == "":
            continue
        if name in _LISTS:
            values[name] = [item.strip() for item in raw.split(",") if item.strip()]
        elif name in _FLAGS:
            values[name] = raw.lower() in {"1", "true", "yes", "on"}
        else:
            values[name] = raw
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return msgspec.convert(values, Settings, strict=False, dec_hook=_decode_path)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid setting: {exc}") from None


def _decode_path(kind: type, value: Any) -> Any:
    if kind is Path and isinstance(value, str | Path):
        return Path(value)
    raise NotImplementedError
