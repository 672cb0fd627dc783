"""`/v1/admin/*`: what the dashboard (/admin) reads, with the secret key.

- `GET /v1/admin/live`: the tiles (events/s, decisions/s, p50/p99 decision latency, live
  sessions) and the last 15 minutes as series (api/live.py);
- `GET /v1/admin/placements`: per placement, totals since start (api/live_placements.py)
  beside its definition (policy, version, reward);
- `GET /v1/admin/segments`: sizes and entry rates;
- `GET /v1/admin/profiles/{id}/timeline`: one person's latest events from the event log,
  their profile as `GET /v1/profiles/{id}` shows it (session features, segments,
  consent) and their latest decisions from the decision log, with reasons and rewards.

Experiments are read from `/v1/experiments` and their results as they are.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from intently.act.decisions import DecisionLogReader, DecisionRecord
from intently.api.auth import require
from intently.api.live import SECONDS, TILE_SECONDS, live_sessions
from intently.api.live_placements import Totals
from intently.api.problems import json_response, problem
from intently.api.profiles import describe
from intently.context.profile import Profile
from intently.engine import Engine
from intently.events.record import record_as_builtins
from intently.keys import Role

STEPS = (1, 5, 10, 30, 60)
MAX_EVENTS = 1000
MAX_DECISIONS = 200


def _count(request: Request, name: str, default: int, most: int) -> int | Response:
    """A positive integer query parameter, or the problem that names it."""
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= most:
        return problem(
            400, "invalid-parameter", f"{name} is a whole number from 1 to {most}", pointer=None
        )
    return value


@require(Role.ADMIN)
async def admin_live(request: Request) -> Response:
    """The tiles and the series of the last 15 minutes, in points of `step` seconds."""
    engine: Engine = request.app.state.engine
    text = request.query_params.get("step", "5")
    if text not in {str(step) for step in STEPS}:
        return problem(
            400, "invalid-parameter",
            f"step is one of {', '.join(map(str, STEPS))} (seconds per point)",
        )  # fmt: skip
    series = engine.live.series
    tiles = series.tiles()
    tiles["live_sessions"] = live_sessions(engine)
    return json_response(
        {
            "now_ms": engine.now_ms(),
            "window_s": SECONDS,
            "tile_window_s": TILE_SECONDS,
            "tiles": tiles,
            "totals": {
                "events": series.events,
                "decisions": series.decisions,
                "degraded": series.degraded,
            },
            "series": series.series(int(text)),
        }
    )


@require(Role.ADMIN)
async def admin_placements(request: Request) -> Response:
    """Each placement defined (and any that decided since start and is gone since)."""
    engine: Engine = request.app.state.engine
    stats = engine.live.placements.by_placement
    found = []
    for placement in engine.placements:
        spec = placement.spec
        totals = stats.get(placement.id)
        found.append(
            {
                "id": placement.id,
                "defined": True,
                "kind": spec.kind,
                "source": placement.source,
                "policy": spec.policy.name,
                "version": placement.version,
                "reward": spec.reward,
                "description": spec.description,
                **(totals.view() if totals is not None else _empty()),
            }
        )
    # Placements deleted since they decided: their totals, without a definition.
    gone = sorted(set(stats) - {p["id"] for p in found})
    found.extend(
        {"id": placement_id, "defined": False, "kind": None, "source": None, "policy": None,
         "version": None, "reward": None, "description": None, **stats[placement_id].view()}
        for placement_id in gone
    )  # fmt: skip
    return json_response({"since": "start", "placements": found})


def _empty() -> dict[str, Any]:
    return Totals().view()


@require(Role.ADMIN)
async def admin_segments(request: Request) -> Response:
    """Each segment's members now, and its entries in the last minute and 15 minutes."""
    engine: Engine = request.app.state.engine
    series = engine.live.series
    minute, window = series.segment_entries(60), series.segment_entries(SECONDS)
    segments = [
        {
            "name": segment.name,
            "description": segment.description,
            "expression": segment.expression,
            "source": segment.source,
            "members": engine.membership.members[segment.name],
            "entries_last_minute": minute[segment.name],
            "entries_last_15_minutes": window[segment.name],
            "entries_since_start": series.entries[segment.name],
        }
        for segment, _ in engine.segments
    ]
    return json_response({"segments": segments})


@require(Role.ADMIN)
async def admin_timeline(request: Request) -> Response:
    """One person: the latest events, the profile (session, segments, consent) and the
    latest decisions with their reasons and rewards."""
    engine: Engine = request.app.state.engine
    any_id = request.path_params["id"]
    events = _count(request, "events", 100, MAX_EVENTS)
    if isinstance(events, Response):
        return events
    decisions = _count(request, "decisions", 50, MAX_DECISIONS)
    if isinstance(decisions, Response):
        return decisions
    profile = engine.context.lookup(any_id)
    if profile is None:
        return problem(
            404, "profile-not-found",
            f"no profile has the id, userId or anonymousId {any_id!r}", pointer="/id",
        )  # fmt: skip
    rows = await asyncio.to_thread(
        engine.log.latest_rows_of, list(profile.anonymous_ids), list(profile.user_ids), events
    )
    made, rewards = await asyncio.to_thread(_decisions_of, engine, profile, decisions)
    return json_response(
        {
            "profile": describe(engine, profile),
            "identities": {
                "user_ids": list(profile.user_ids),
                "anonymous_ids": list(profile.anonymous_ids),
            },
            "events": [_event(row.seq, row.received_ms, row.body) for row in rows],
            "decisions": [_decision(record, rewards.get(record.decision_id)) for record in made],
        }
    )


def _decisions_of(
    engine: Engine, profile: Profile, limit: int
) -> tuple[list[DecisionRecord], dict[str, float]]:
    path = engine.settings.decision_log_path
    if not path.exists():
        return [], {}
    engine.decisions.flush()  # (written within milliseconds: wait for those)
    devices = [*("a:" + a for a in profile.anonymous_ids), *("u:" + u for u in profile.user_ids)]
    reader = DecisionLogReader(path)
    try:
        found = reader.decisions_of(devices, [profile.id], limit)
        return found, reader.rewards_of(record.decision_id for record in found)
    finally:
        reader.close()


def _event(seq: int, received_ms: int, body: bytes) -> dict[str, Any]:
    """An event as the inspector lists it: its kind, name, time and properties."""
    record = record_as_builtins(body)
    event = record.get("event", {}) if isinstance(record, dict) else {}
    kind = event.get("type")
    return {
        "seq": seq,
        "received_ms": received_ms,
        "at_ms": record.get("at_ms") if isinstance(record, dict) else None,
        "type": kind,
        "name": event.get("event") if kind == "track" else event.get("name"),
        "anonymous_id": event.get("anonymousId"),
        "user_id": event.get("userId"),
        "properties": event.get("properties") or event.get("traits") or {},
    }


def _decision(record: DecisionRecord, reward: float | None) -> dict[str, Any]:
    return {
        "decision_id": record.decision_id,
        "at_ms": record.at_ms,
        "placement": record.placement,
        "policy": record.policy,
        "policy_version": record.policy_version,
        "arm": record.arm,
        "items": record.items,
        "propensities": record.propensities,
        "reasons": record.reasons,
        "item_reasons": record.item_reasons,
        "degraded": record.degraded,
        "personalized": record.personalized,
        "latency_us": record.latency_us,
        "reward": reward,
    }


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/admin/live", admin_live, methods=["GET"]),
        Route("/v1/admin/placements", admin_placements, methods=["GET"]),
        Route("/v1/admin/segments", admin_segments, methods=["GET"]),
        Route("/v1/admin/profiles/{id}/timeline", admin_timeline, methods=["GET"]),
    ]
