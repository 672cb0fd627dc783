"""PostgreSQL for durable records: the connection, its start-up checks, and the schema
with its migrations.

The schema is versioned in `intently_schema`. A worker that starts against an older
schema migrates it (one transaction per step, under an advisory lock, so workers starting
together migrate once); against a newer one, written by a later intently, it refuses to
start rather than write rows that version would misread.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar
from urllib.parse import urlsplit

import psycopg
from psycopg.abc import PQGen
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from intently.configfile import ConfigError
from intently.stores.connect import BackendUnavailable, redacted

POSTGRES_SCHEMES = ("postgres", "postgresql")
MIN_POSTGRES = 120000  # server_version_num: 12
# A server that stalls must not hold its callers (the archiver, an erasure request, the
# catalog and experiment writers) forever. Each guard covers a case the others miss:
# - connect_timeout: a server that does not complete the connection.
CONNECT_TIMEOUT_SECONDS = 2
# - statement_timeout, enforced by the server: a live server stuck on one statement (a
#   lock wait, a runaway scan) cancels it with a clear error. 30 s is far above what any
#   statement here takes: an archive batch is up to 2,000 single-row inserts (and one
#   position update), each a statement timed on its own, not the batch as a whole;
#   erasures and catalog reads go by index. So it cuts only what is stuck. Migrations,
#   which may rewrite big tables, lift it.
STATEMENT_TIMEOUT_MS = 30_000
# - TCP keepalives and tcp_user_timeout, enforced by the kernel: a peer gone from the
#   network (a partition, a host powered off) breaks the connection when idle (after
#   10 s, then 3 probes 5 s apart) or with data unacknowledged for 30 s, where TCP would
#   otherwise retransmit for about 15 minutes. Settings the URL gives itself win.
TCP_SETTINGS = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}
# - ANSWER_SECONDS, enforced here: a server whose kernel acknowledges everything while
#   its process does not answer (stopped, wedged, swapping) trips none of the above (its
#   statement_timeout runs in the process that is stuck). Every wait for an answer is
#   bounded, above the statement timeout so that a live server's own cancel comes first.
ANSWER_SECONDS = 45.0
# pg_advisory_xact_lock key: "intently" as an integer (any constant would do).
_MIGRATION_LOCK = 0x696E74656E746C79

# Each step brings the schema from the version before it to its own number.
MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE events (
    worker       TEXT   NOT NULL,
    seq          BIGINT NOT NULL,
    message_id   TEXT   NOT NULL,
    received_ms  BIGINT NOT NULL,
    at_ms        BIGINT NOT NULL,
    type         TEXT   NOT NULL,
    anonymous_id TEXT,
    user_id      TEXT,
    body         JSONB  NOT NULL,
    PRIMARY KEY (worker, seq)
);
CREATE INDEX events_anonymous ON events (anonymous_id) WHERE anonymous_id IS NOT NULL;
CREATE INDEX events_user ON events (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX events_received ON events (received_ms);
CREATE TABLE decisions (
    decision_id TEXT   PRIMARY KEY,
    worker      TEXT   NOT NULL,
    at_ms       BIGINT NOT NULL,
    placement   TEXT   NOT NULL,
    visitor     TEXT   NOT NULL,
    profile_id  TEXT,
    arm         TEXT,
    policy      TEXT   NOT NULL,
    body        JSONB  NOT NULL
);
CREATE INDEX decisions_placement ON decisions (placement, at_ms);
CREATE INDEX decisions_visitor ON decisions (visitor);
CREATE INDEX decisions_profile ON decisions (profile_id) WHERE profile_id IS NOT NULL;
CREATE TABLE rewards (
    worker      TEXT   NOT NULL,
    seq         BIGINT NOT NULL,
    decision_id TEXT   NOT NULL,
    at_ms       BIGINT NOT NULL,
    item        TEXT,
    value       DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (worker, seq)
);
CREATE INDEX rewards_decision ON rewards (decision_id);
CREATE TABLE exposures (
    worker      TEXT   NOT NULL,
    seq         BIGINT NOT NULL,
    decision_id TEXT   NOT NULL,
    at_ms       BIGINT NOT NULL,
    PRIMARY KEY (worker, seq)
);
CREATE INDEX exposures_decision ON exposures (decision_id);
-- How far each worker's local logs are in PostgreSQL.
CREATE TABLE shipped (
    worker   TEXT   NOT NULL,
    source   TEXT   NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (worker, source)
);
""",
    2: """
-- The catalog, shared by every worker: written here first, polled by the others by
-- version (writes hold an advisory lock, so versions commit in order).
CREATE SEQUENCE catalog_versions;
CREATE TABLE catalog (
    kind    TEXT   NOT NULL,  -- 'item' or 'offer'
    id      TEXT   NOT NULL,
    body    JSONB  NOT NULL,
    version BIGINT NOT NULL,
    worker  TEXT   NOT NULL,  -- who wrote it (it skips its own rows when polling)
    PRIMARY KEY (kind, id)
);
CREATE INDEX catalog_version ON catalog (version);
""",
    3: """
-- Placements, segments and experiments defined through the API, shared by every worker
-- the same way as the catalog. A NULL body is a deletion.
CREATE SEQUENCE definition_versions;
CREATE TABLE definitions (
    kind    TEXT   NOT NULL,  -- 'placement', 'segment' or 'experiment'
    id      TEXT   NOT NULL,
    body    JSONB,
    version BIGINT NOT NULL,
    worker  TEXT   NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX definitions_version ON definitions (version);
""",
    4: """
-- The experiment log of every worker (experiments/tracking.py), under the names it has in
-- SQLite: who was exposed to which variant and what they did after, with running totals.
CREATE SCHEMA intently_experiments;
CREATE TABLE intently_experiments.units (
    experiment TEXT    NOT NULL,
    unit       TEXT    NOT NULL,
    variant    TEXT    NOT NULL,
    first_ms   BIGINT  NOT NULL,
    multiple   INTEGER NOT NULL DEFAULT 0,
    state      BYTEA   NOT NULL,
    PRIMARY KEY (experiment, unit)
);
CREATE INDEX units_by_unit ON intently_experiments.units (unit);
CREATE TABLE intently_experiments.totals (
    experiment        TEXT NOT NULL,
    variant           TEXT NOT NULL,
    metric            TEXT NOT NULL,
    n                 DOUBLE PRECISION NOT NULL,
    total             DOUBLE PRECISION NOT NULL,
    total_squares     DOUBLE PRECISION NOT NULL,
    covariate         DOUBLE PRECISION NOT NULL,
    covariate_squares DOUBLE PRECISION NOT NULL,
    "cross"           DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (experiment, variant, metric)
);
CREATE TABLE intently_experiments.exposed (
    experiment TEXT   NOT NULL,
    variant    TEXT   NOT NULL,
    units      BIGINT NOT NULL,
    multiple   BIGINT NOT NULL,
    PRIMARY KEY (experiment, variant)
);
-- 'seq:<worker>': how far into its own event log each worker has counted.
CREATE TABLE intently_experiments.meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
-- Profiles assigned as another unit; other workers poll them by version.
CREATE SEQUENCE intently_experiments.alias_versions;
CREATE TABLE intently_experiments.aliases (
    profile TEXT   PRIMARY KEY,
    unit    TEXT   NOT NULL,
    version BIGINT NOT NULL DEFAULT nextval('intently_experiments.alias_versions')
);
CREATE INDEX aliases_unit ON intently_experiments.aliases (unit);
CREATE INDEX aliases_version ON intently_experiments.aliases (version);
""",
}
SCHEMA_VERSION = max(MIGRATIONS)

_Result = TypeVar("_Result")


class BoundedConnection(psycopg.Connection[TupleRow]):
    """A connection on which no wait for the server lasts longer than `answer_seconds`
    (None: unbounded): past it the connection is dropped (its state mid-protocol is
    unknown) and the caller gets an `OperationalError`, as in an outage."""

    answer_seconds: float | None = None

    def wait(
        self, gen: PQGen[_Result], interval: float = 0.1, timeout: float | None = None
    ) -> _Result:
        # psycopg's own hook, which every operation waits through. Its timeout raises a
        # private subclass of OperationalError (psycopg is pinned; a rename fails here
        # loudly, in tests/test_archive_review.py).
        bound = self.answer_seconds if timeout is None else timeout
        try:
            return super().wait(gen, interval, bound)
        except psycopg.errors._WaitTimeout:
            if timeout is not None:  # psycopg's own bound: its own handling
                raise
            self.pgconn.finish()
            raise psycopg.OperationalError(
                f"PostgreSQL did not answer within {bound:g} s; the connection is dropped"
            ) from None


@contextmanager
def unbounded(connection: psycopg.Connection) -> Iterator[None]:
    """Lift the client-side bound on `connection`'s waits for a while (migrations)."""
    if not isinstance(connection, BoundedConnection):
        yield
        return
    saved = connection.answer_seconds
    connection.answer_seconds = None
    try:
        yield
    finally:
        connection.answer_seconds = saved


def reconnect_postgres(url: str) -> BoundedConnection:
    """`connect_postgres` for a worker already running, whose callers wait out an outage:
    any failure is a `psycopg.OperationalError` (the settings were checked at start; a
    refusal now is PostgreSQL being away, restarted, or reconfigured under it)."""
    try:
        return connect_postgres(url)
    except (ConfigError, BackendUnavailable) as error:
        raise psycopg.OperationalError(str(error)) from None


def connect_postgres(url: str) -> BoundedConnection:
    """A connection to `url`, checked (raises `ConfigError` for a malformed URL, wrong
    credentials or too old a server, `BackendUnavailable` when it cannot be reached)."""
    where = redacted(url)
    if urlsplit(url).scheme not in POSTGRES_SCHEMES:
        raise ConfigError(
            f"database: {where!r} is not a PostgreSQL URL (postgresql://user@host:5432/db)"
        )
    try:
        connection = BoundedConnection.connect(make_conninfo(url, **_guards(url)), autocommit=True)
    except psycopg.ProgrammingError as error:  # the URL itself (an unknown option, ...)
        raise ConfigError(f"database: {where!r} is not usable: {error}") from None
    except psycopg.OperationalError as error:
        message = str(error).strip()
        if "password" in message or "authentication" in message or "does not exist" in message:
            raise ConfigError(f"database: PostgreSQL at {where} refused: {message}") from None
        raise BackendUnavailable(
            f"database: cannot reach PostgreSQL at {where}: {message}"
        ) from None
    if connection.info.server_version < MIN_POSTGRES:
        version = connection.info.server_version
        connection.close()
        raise ConfigError(f"database: PostgreSQL at {where} is {version}; intently needs 12+")
    connection.answer_seconds = ANSWER_SECONDS
    return connection


def _guards(url: str) -> dict[str, str]:
    """The connection settings that bound a stalled server (see `STATEMENT_TIMEOUT_MS`),
    where `url` does not set them itself; `options` it sets are kept, after ours (so its
    own statement_timeout, if any, wins)."""
    given = conninfo_to_dict(url)
    guards = {key: value for key, value in TCP_SETTINGS.items() if key not in given}
    if "connect_timeout" not in given:
        guards["connect_timeout"] = str(CONNECT_TIMEOUT_SECONDS)
    own = f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
    guards["options"] = f"{own} {given.get('options') or ''}".strip()
    return guards


def schema_version(connection: psycopg.Connection) -> int:
    """The schema's version (0 for a database intently has not used yet)."""
    found = connection.execute("SELECT to_regclass('intently_schema') IS NOT NULL").fetchone()
    if not found or not found[0]:
        return 0
    row = connection.execute("SELECT max(version) FROM intently_schema").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def migrate(connection: psycopg.Connection) -> list[int]:
    """Bring the schema to `SCHEMA_VERSION`; returns the steps applied. Raises
    `ConfigError` for a schema newer than this version knows."""
    applied: list[int] = []
    with unbounded(connection), connection.transaction():
        # A step may rewrite a big table, and a worker starting meanwhile waits for the
        # lock all that time: neither is cut by the timeouts meant for stalled servers.
        connection.execute("SET LOCAL statement_timeout = 0")
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        connection.execute("CREATE TABLE IF NOT EXISTS intently_schema (version INTEGER NOT NULL)")
        current = schema_version(connection)
        if current > SCHEMA_VERSION:
            raise ConfigError(
                f"database: its schema is version {current}, written by a newer intently; "
                f"this one knows up to {SCHEMA_VERSION}: upgrade intently (never downgrade "
                "against a migrated database; docs/operations.md)"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            connection.execute(MIGRATIONS[version].encode())
            connection.execute("INSERT INTO intently_schema VALUES (%s)", (version,))
            applied.append(version)
    return applied
