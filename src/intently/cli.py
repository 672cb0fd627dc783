"""The `intently` command: serve the engine, replay history into it, export its log."""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from intently._version import __version__
from intently.clock import epoch_ms
from intently.config import Settings, load_settings
from intently.events.geo import IP_MODES

DATA_DIR_HELP = "Where the embedded store keeps its files (default ./intently-data)."

# Kept here (not imported from intently.recommend) so `intently --help` stays fast.
ALGORITHM_CHOICES = ("vsknn+sr", "vsknn", "sr", "covisit", "trending", "popular")
PROTOCOL_CHOICES = ("static", "prequential")
OBD_CAMPAIGNS = ("all", "men", "women")

# Allocations before a young collection, and young/middle passes before an older one.
GC_THRESHOLDS = (50_000, 20, 100)


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(overrides)
    except ValueError as error:
        raise click.UsageError(str(error)) from None


def _open_engine(settings: Settings) -> Any:
    """The engine, or a clear message for what stops it from starting."""
    from intently.configfile import ConfigError
    from intently.engine import DataDirLocked, Engine
    from intently.stores.connect import BackendUnavailable

    try:
        return Engine(settings)
    except (DataDirLocked, ConfigError, BackendUnavailable) as error:
        raise click.ClickException(str(error)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="intently")
def main() -> None:
    """intently: real-time personalization that decides with what the visitor does now."""


def _serve_options(command: Any) -> Any:
    """The options `serve` and `demo` share."""
    options = [
        click.option("--host", default=None, help="Address to listen on (default 127.0.0.1)."),
        click.option("--port", type=int, default=None, help="Port to listen on (default 8000)."),
        click.option(
            "--data-dir", type=click.Path(path_type=Path), default=None, help=DATA_DIR_HELP
        ),
        click.option(
            "--ip-mode",
            type=click.Choice(IP_MODES),
            default=None,
            help="What is stored of visitors' IPs after geolocation (default truncate).",
        ),
        click.option(
            "--cors-origin",
            "cors_origins",
            multiple=True,
            help="An origin allowed to call the API from browsers (repeatable; '*' for any).",
        ),
        click.option(
            "--store",
            "state_store",
            default=None,
            help="Where state lives: 'embedded' (default, the data dir) or a Redis URL "
            "shared by many workers, e.g. redis://127.0.0.1:6379/0 (INTENTLY_STORE).",
        ),
        click.option(
            "--database",
            default=None,
            help="PostgreSQL for durable records, shipped from the local logs, e.g. "
            "postgresql://127.0.0.1:5432/intently (INTENTLY_DATABASE).",
        ),
        click.option("--log-level", default="info", show_default=True, help="Logging level."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command()
@_serve_options
def serve(
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    ip_mode: str | None,
    cors_origins: tuple[str, ...],
    state_store: str | None,
    database: str | None,
    log_level: str,
) -> None:
    """Run the engine's HTTP API (on its embedded store, or on Redis with --store)."""
    _serve(
        log_level,
        host=host, port=port, data_dir=data_dir, ip_mode=ip_mode, cors_origins=cors_origins or None,
        state_store=state_store, database=database,
    )  # fmt: skip


@main.command()
@_serve_options
def demo(
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    ip_mode: str | None,
    cors_origins: tuple[str, ...],
    state_store: str | None,
    database: str | None,
    log_level: str,
) -> None:
    """Run the engine with its demo shop at /demo (what `make run` starts).

    Loads the shop's catalog, offers, placements, segments and (once per data dir) past
    visitors' sessions, then serves everything `serve` does plus the shop. The global
    holdout is off (INTENTLY_HOLDOUT_SHARE sets one): a newcomer must see the shop adapt.
    """
    holdout = None if os.environ.get("INTENTLY_HOLDOUT_SHARE") else 0.0
    _serve(
        log_level, demo=True, holdout_share=holdout,
        host=host, port=port, data_dir=data_dir, ip_mode=ip_mode, cors_origins=cors_origins or None,
        state_store=state_store, database=database,
    )  # fmt: skip


def _serve(log_level: str, **overrides: Any) -> None:
    import uvicorn

    from intently.api.app import create_app

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    settings = _settings(**overrides)
    engine = _open_engine(settings)
    if settings.demo:
        _seed_demo(engine)
    _announce(engine.keys.write_key, engine.keys.secret_key, engine.keys_created, settings)
    if settings.demo:
        url = f"http://{settings.host}:{settings.port}"
        click.echo(f"Demo shop: {url}/demo")
        click.echo(f"Dashboard: {url}/admin  (sign in with the secret key above)")
    # Start-up objects (databases, caches) live as long as the process: move them out of
    # the collector's sight so its full passes stay short under load.
    gc.collect()
    gc.freeze()
    # State and the dedupe window are long-lived and nearly free of reference cycles, yet
    # with the default thresholds (700, 10, 10) the collector walked them again and again
    # under load (gen-2 passes of 4-8 ms, nothing collected). Rarer passes: measured 8%
    # more events/s in process, and fewer multi-millisecond pauses. The app's one-second
    # tick also runs a pass (api/app.py `_collect`): under a steady load these thresholds
    # alone let the young generation grow for half a minute.
    gc.set_threshold(*GC_THRESHOLDS)
    uvicorn.run(
        create_app(engine, close_engine=True),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=log_level.lower(),
        proxy_headers=True,
        forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
    )


def _seed_demo(engine: Any) -> None:
    """The demo shop's data (web/demo/seed.py)."""
    import asyncio

    from intently.web.demo.seed import seed

    try:
        loaded = asyncio.run(seed(engine))
    except Exception:
        engine.close()
        raise
    if loaded:
        click.echo(f"Demo: loaded the shop and {loaded} events of past visitors.")


def _announce(write_key: str, secret_key: str, created: bool, settings: Settings) -> None:
    url = f"http://{settings.host}:{settings.port}"
    if created:
        click.echo("Created API keys (stored in %s):" % (settings.data_dir / "keys.json"))
    elif settings.secret_key is not None:
        # Given in the environment (a deployment): the operator has it, and logs (journald,
        # `docker logs`) are no place for an admin credential.
        click.echo("API keys from the environment (INTENTLY_WRITE_KEY, INTENTLY_SECRET_KEY):")
        secret_key = secret_key[:6] + "..." if len(secret_key) > 12 else "..."
    else:
        click.echo("API keys (from %s):" % (settings.data_dir / "keys.json"))
    click.echo(f"  write key  (browsers, SDKs): {write_key}")
    click.echo(f"  secret key (admin):          {secret_key}")
    click.echo(f"intently {__version__} listening on {url}  (data in {settings.data_dir})")


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help=DATA_DIR_HELP)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def replay(file: Path, data_dir: Path | None, quiet: bool) -> None:
    """Feed historical events (JSONL) through the live pipeline.

    Each line is a Segment event, or a line of `intently export events`. Events keep their
    own receivedAt; duplicates (same messageId) are stored once. The engine must not be
    serving the same data dir meanwhile.
    """
    from intently.log.replay import replay_lines

    settings = _settings(data_dir=data_dir)
    engine = _open_engine(settings)
    try:
        with (
            file.open("rb") as lines,
            click.progressbar(
                length=file.stat().st_size,
                label="replaying",
                file=io.StringIO() if quiet else sys.stderr,
            ) as bar,
        ):
            report = replay_lines(engine.pipeline, lines, bar.update)
    finally:
        engine.close()
    for line, rejection in report.rejected[:20]:
        click.echo(f"line {line}: {rejection.field}: {rejection.detail}", err=True)
    if len(report.rejected) > 20:
        click.echo(f"... and {len(report.rejected) - 20} more rejected lines", err=True)
    click.echo(
        f"replayed {report.lines} lines: {report.accepted} accepted, "
        f"{report.duplicates} duplicates, {len(report.rejected)} rejected"
    )
    if report.rejected:
        sys.exit(1)


@main.group()
def export() -> None:
    """Write stored data as JSONL to standard output."""


@export.command("events")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help=DATA_DIR_HELP)
@click.option(
    "--since",
    default=None,
    help="Only events received at or after this time (ISO 8601, e.g. 2026-11-23T10:00:00Z).",
)
@click.option("--after-seq", type=int, default=0, help="Only events after this log position.")
def export_events_command(data_dir: Path | None, since: str | None, after_seq: int) -> None:
    """Export the event log: one Segment event per line, with `seq` and `enrichment`.

    Safe while the engine is serving: it reads a consistent snapshot.
    """
    from intently.log.eventlog import EventLog
    from intently.log.replay import export_events

    settings = _settings(data_dir=data_dir)
    since_ms = None
    if since is not None:
        try:
            moment = datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            raise click.BadParameter(
                f"not an ISO 8601 time: {since}", param_hint="--since"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        since_ms = epoch_ms(moment)
    if not settings.event_log_path.exists():
        raise click.ClickException(f"no event log in {settings.data_dir}")
    log = EventLog.reader(settings.event_log_path)
    export_events(log, sys.stdout.buffer, since_ms=since_ms, after_seq=after_seq)
    sys.stdout.buffer.flush()


@main.group()
def catalog() -> None:
    """Manage the catalog of items decisions choose from."""


@catalog.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help=DATA_DIR_HELP)
def catalog_import(file: Path, data_dir: Path | None) -> None:
    """Insert or replace items from FILE: JSON Lines (.jsonl, one item per line) or CSV
    (.csv, a header row; category as "A > B", tags as "a|b", other columns attributes).

    Each line is checked on its own: the valid ones are imported, the others listed.
    The engine must not be serving the same data dir meanwhile.
    """
    from intently.catalog.imports import read_items

    settings = _settings(data_dir=data_dir)
    engine = _open_engine(settings)
    refused: list[tuple[int, str]] = []
    items = []
    imported = 0
    try:
        try:
            for line, item, why in read_items(file):
                if item is None:
                    refused.append((line, why or "invalid"))
                else:
                    items.append(item)
        except UnicodeDecodeError:
            raise click.ClickException(f"{file}: not UTF-8 text") from None
        if items:
            imported = engine.catalog.upsert(items)
    finally:
        engine.close()
    for line, why in refused[:20]:
        click.echo(f"line {line}: {why}", err=True)
    if len(refused) > 20:
        click.echo(f"... and {len(refused) - 20} more refused lines", err=True)
    click.echo(f"imported {imported} items, {len(refused)} lines refused")
    if refused:
        sys.exit(1)


@main.group("eval")
def eval_group() -> None:
    """Measure recommenders offline, on recorded data."""


@eval_group.command("sessions")
@click.option(
    "--train", "train", required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Training clicks: tab-separated, header SessionId ItemId Time (Unix seconds).",
)  # fmt: skip
@click.option(
    "--test", "test", required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Test clicks, same format; every next click of each session is predicted.",
)  # fmt: skip
@click.option("--k", type=click.IntRange(min=1), default=20, show_default=True,
              help="Length of the recommendation list (HR@K, MRR@K).")  # fmt: skip
@click.option(
    "--algorithm", type=click.Choice(ALGORITHM_CHOICES), default="vsknn+sr", show_default=True,
    help="vsknn+sr: session kNN blended with sequential rules; the others alone.",
)  # fmt: skip
@click.option(
    "--protocol", type=click.Choice(PROTOCOL_CHOICES), default="static", show_default=True,
    help="static: learning stops after training; prequential: it goes on through the test.",
)  # fmt: skip
def eval_sessions(train: Path, test: Path, k: int, algorithm: str, protocol: str) -> None:
    """Next-item prediction: train through the pipeline, predict every test click.

    Prints JSON: hr@K, mrr@K, predictions, seconds (and the settings used).
    """
    from intently.recommend.evaluate import SessionFileError, evaluate_sessions

    try:
        result = evaluate_sessions(
            train, test, k=k, algorithm=algorithm,
            protocol="prequential" if protocol == "prequential" else "static",
        )  # fmt: skip
    except SessionFileError as error:
        raise click.ClickException(str(error)) from None
    click.echo(json.dumps(result))


@eval_group.command("ope")
@click.option(
    "--obd", "obd", default=None,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="An Open Bandit Dataset directory (random/, bts/, prior_bts.yaml).",
)  # fmt: skip
@click.option("--campaign", type=click.Choice(OBD_CAMPAIGNS), default="all", show_default=True)
@click.option("--simulations", type=click.IntRange(min=1000), default=100_000, show_default=True,
              help="Rounds simulated to estimate Bernoulli TS's action distribution.")  # fmt: skip
@click.option(
    "--data-dir", type=click.Path(path_type=Path), default=None,
    help="With --placement: the engine's data dir, whose decision log is read.",
)  # fmt: skip
@click.option("--placement", default=None,
              help="Judge a candidate policy on this placement's logged decisions.")  # fmt: skip
@click.option(
    "--candidate", default='{"name": "epsilon-greedy"}', show_default=True,
    help="With --placement: the candidate policy, as JSON (a placement's `policy`).",
)  # fmt: skip
@click.option(
    "--estimator", type=click.Choice(("ips", "snips", "dm", "dr")), default="snips",
    show_default=True, help="With --placement: whose lower bound the gate uses.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
def eval_ope(
    obd: Path | None, campaign: str, simulations: int, data_dir: Path | None,
    placement: str | None, candidate: str, estimator: str, as_json: bool,
) -> None:  # fmt: skip
    """Off-policy evaluation, on the Open Bandit Dataset (--obd) or on this engine's own
    decision log (--placement).

    --obd: Bernoulli TS judged from the uniform random policy's log: IPS and SNIPS of the
    dataset's shipped action distribution and of our own simulation of Bernoulli TS from
    prior_bts.yaml, then IPS, SNIPS, DM and DR with 95% bootstrap intervals and their
    error against the on-policy truth (the bts log).

    --placement: a candidate policy replayed through the placement's logged decisions;
    IPS, SNIPS, DM and DR with 95% intervals, the live policy's value, and whether the
    promotion gate would let the candidate replace it. Exits 3 when it would not.
    """
    if (obd is None) == (placement is None):
        raise click.UsageError("give either --obd DIR or --placement ID")
    if placement is not None:
        _judge_on_log(data_dir, placement, candidate, estimator, as_json)
        return
    assert obd is not None
    from intently.learn.obd import DatasetError, evaluate_obd

    try:
        report = evaluate_obd(obd, campaign, simulations)
    except DatasetError as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    baseline = report["random_log_mean_reward"]
    click.echo(f"campaign {campaign}: {report['rounds']} random rounds, mean reward {baseline}; "
               f"truth (bts log) {report['ground_truth_bts_mean_reward']}")  # fmt: skip
    for key in ("shipped_action_distribution", "simulated_action_distribution"):
        found = report.get(key)
        if isinstance(found, dict):
            click.echo(f"{key.replace('_', ' ')}: IPS relative {found['ips_relative']:.6f}, "
                       f"SNIPS relative {found['snips_relative']:.6f}")  # fmt: skip
    click.echo(f"{'estimator':<10}{'value':>12}{'95% interval':>28}{'relative':>10}{'error':>8}")
    estimators = report["estimators"]
    assert isinstance(estimators, dict)
    for name, found in estimators.items():
        low, high = found["ci95"]
        click.echo(f"{name:<10}{found['value']:>12.6f}   [{low:.6f}, {high:.6f}]"
                   f"{found['relative']:>10.3f}{found['relative_error']:>8.1%}")  # fmt: skip


def _judge_on_log(
    data_dir: Path | None, placement: str, candidate: str, estimator: str, as_json: bool
) -> None:
    import msgspec

    from intently.act.decisions import DecisionLogReader
    from intently.act.placements import PolicySpec
    from intently.learn.gate import NotEnoughEvidence, judge

    settings = _settings(data_dir=data_dir)
    try:
        spec = msgspec.json.decode(candidate, type=PolicySpec)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise click.BadParameter(str(error), param_hint="--candidate") from None
    try:
        reader = DecisionLogReader(settings.decision_log_path)
    except FileNotFoundError as error:
        raise click.ClickException(str(error)) from None
    try:
        closed_by = int(time.time() * 1000) - settings.attribution_window_ms
        judgement = judge(reader, placement, spec, closed_by_ms=closed_by, estimator=estimator)
    except NotEnoughEvidence as error:
        raise click.ClickException(str(error)) from None
    finally:
        reader.close()
    report = judgement.report
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"placement {placement}: {report['decisions']} logged decisions; "
                   f"live policy's value {report['live_value']:.4f}")  # fmt: skip
        for name, found in report["candidate"].items():
            click.echo(f"{name:<6}{found['value']:>10.4f}   "
                       f"[{found['low']:.4f}, {found['high']:.4f}]")  # fmt: skip
        click.echo(report["verdict"])
    if not judgement.promote:
        sys.exit(3)


@main.group()
def experiments() -> None:
    """Read experiments' results."""


@experiments.command("report")
@click.argument("experiment_id")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help=DATA_DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def experiments_report(experiment_id: str, data_dir: Path | None, as_json: bool) -> None:
    """An experiment's results: exposures, the sample ratio check, every metric's
    comparisons with control. EXPERIMENT_ID `holdout` is the global holdout."""
    import msgspec

    from intently.configfile import ConfigError
    from intently.experiments.report import load_results, render

    settings = _settings(data_dir=data_dir)
    try:
        found = load_results(experiment_id, settings)
    except (ConfigError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from None
    if found is None:
        raise click.ClickException(f"there is no experiment {experiment_id!r}")
    click.echo(msgspec.json.encode(found).decode() if as_json else render(found))


@export.command("decisions")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help=DATA_DIR_HELP)
@click.option("--placement", default=None, help="Only this placement's decisions.")
def export_decisions_command(data_dir: Path | None, placement: str | None) -> None:
    """Export the decision log: one decision per line, with its features, candidates,
    items, propensities, policy and version, reasons, latency, total reward (null while
    its attribution window is open and nothing was earned) and viewable impressions.

    Safe while the engine is serving.
    """
    from intently.act.decisions import DecisionLogReader, as_json_line

    settings = _settings(data_dir=data_dir)
    try:
        reader = DecisionLogReader(settings.decision_log_path)
    except FileNotFoundError as error:
        raise click.ClickException(str(error)) from None
    out = sys.stdout.buffer
    try:
        rewards, exposures = reader.rewards(), reader.exposures()
        for record in reader.decisions(placement=placement):
            found = record.decision_id
            out.write(as_json_line(record, rewards.get(found), exposures.get(found, 0)))
    finally:
        reader.close()
    out.flush()


@main.command("render-url")
@click.argument("placement")
@click.option("--user-id", default=None, help="The person's userId.")
@click.option("--anonymous-id", default=None, help="The person's anonymousId.")
@click.option(
    "--expires-in", type=click.IntRange(min=1), default=None,
    help="Seconds until the URL stops working (default: until the secret key changes).",
)  # fmt: skip
@click.option(
    "--base-url", default=None,
    help="The engine's address as mail clients reach it (default http://HOST:PORT).",
)  # fmt: skip
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help=DATA_DIR_HELP)
def render_url(
    placement: str, user_id: str | None, anonymous_id: str | None, expires_in: int | None,
    base_url: str | None, data_dir: Path | None,
) -> None:  # fmt: skip
    """Print a signed URL that renders PLACEMENT for one person as HTML, decided when it
    is fetched (for email content rendered at open time). Signed with a key derived from
    the secret key (INTENTLY_SECRET_KEY, or the data dir's keys.json)."""
    import msgspec

    from intently.api.render import signed_path
    from intently.keys import Keys

    if user_id is None and anonymous_id is None:
        raise click.UsageError("name the person: --user-id or --anonymous-id")
    settings = _settings(data_dir=data_dir)
    secret = settings.secret_key
    keys_file = settings.data_dir / "keys.json"
    if secret is None and keys_file.exists():
        secret = msgspec.json.decode(keys_file.read_bytes(), type=Keys).secret_key
    if not secret:
        raise click.ClickException(
            f"no secret key: set INTENTLY_SECRET_KEY, or run the engine once on {settings.data_dir}"
        )
    expires = None if expires_in is None else int(time.time()) + expires_in
    base = (base_url or f"http://{settings.host}:{settings.port}").rstrip("/")
    click.echo(base + signed_path(secret, placement, user_id, anonymous_id, expires))


if __name__ == "__main__":
    main()
