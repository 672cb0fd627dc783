"""`/v1/placements`: define, read and delete placements (admin key)."""

from __future__ import annotations

import asyncio

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from intently.act.decisions import DecisionLogReader
from intently.act.placements import PlacementSpec, PolicySpec, prepare
from intently.api.auth import require
from intently.api.events import read_json
from intently.api.problems import json_response, problem
from intently.api.sharing import defining, share
from intently.configfile import ConfigError
from intently.engine import Engine
from intently.experiments.registry import ExperimentConflict
from intently.keys import Role
from intently.learn.gate import Judgement, NotEnoughEvidence, judge
from intently.learn.ope import ESTIMATORS
from intently.stores.definitions import PLACEMENT

_spec = msgspec.json.Decoder(PlacementSpec)


def _missing(placement_id: str) -> Response:
    return problem(
        404, "placement-not-found", f"there is no placement {placement_id!r}", pointer="/id"
    )


@require(Role.ADMIN)
async def list_placements(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    return json_response({"placements": [p.describe() for p in engine.placements]})


@require(Role.ADMIN)
async def get_placement(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    placement_id = request.path_params["id"]
    placement = engine.placements.get(placement_id)
    return _missing(placement_id) if placement is None else json_response(placement.describe())


@require(Role.ADMIN)
async def put_placement(request: Request) -> Response:
    """Create or replace a placement; decisions use it from the next request."""
    engine: Engine = request.app.state.engine
    placement_id = request.path_params["id"]
    spec = await read_json(request, _spec, 64 * 1024, "a placement definition")
    if isinstance(spec, Response):
        return spec
    async with defining(request):
        existed = engine.placements.get(placement_id) is not None
        try:
            # (a running experiment's variants must still be valid definitions of it)
            engine.experiments.registry.check_placement(
                prepare(placement_id, spec, "api", engine.placements.catalog)
            )
        except ExperimentConflict as exc:
            return problem(409, "experiment-conflict", str(exc))
        except ConfigError as exc:
            return problem(400, "invalid-placement", str(exc))
        refused = await share(request, PLACEMENT, placement_id, spec)
        if refused is not None:
            return refused
        placement = engine.placements.define(placement_id, spec)
    return json_response(placement.describe(), 200 if existed else 201)


_policy_spec = msgspec.json.Decoder(PolicySpec)


@require(Role.ADMIN)
async def promote_policy(request: Request) -> Response:
    """The promotion gate: judge a candidate policy on the placement's decision log
    (off-policy) and make it live only when its lower bound beats the live policy."""
    engine: Engine = request.app.state.engine
    placement_id = request.path_params["id"]
    placement = engine.placements.get(placement_id)
    if placement is None:
        return _missing(placement_id)
    if placement.spec.kind != "offers":
        return problem(
            400, "not-a-bandit", "the gate judges bandit policies of offer placements",
            pointer="/id",
        )  # fmt: skip
    spec = await read_json(request, _policy_spec, 16 * 1024, "a policy")
    if isinstance(spec, Response):
        return spec
    if spec.name == "slate":
        return problem(400, "invalid-policy", "offers take a bandit policy", pointer="/name")
    estimator = request.query_params.get("estimator", "snips")
    if estimator not in ESTIMATORS:
        return problem(400, "invalid-estimator", f"estimator is one of {', '.join(ESTIMATORS)}")
    await asyncio.to_thread(engine.decisions.flush)
    try:
        judgement = await asyncio.to_thread(_judge, engine, placement_id, spec, estimator)
    except NotEnoughEvidence as error:
        return problem(409, "not-enough-evidence", str(error))
    report = judgement.report
    if not judgement.promote:
        return problem(409, "not-promoted", report["verdict"], report=report)
    async with defining(request):
        current = engine.placements.get(placement_id)
        if current is None or current.version != placement.version:
            return problem(
                409, "placement-changed",
                f"placement {placement_id!r} changed while the candidate was judged; "
                "judge again",
            )  # fmt: skip
        # The other workers serve the promoted policy too (each from what it learned).
        promoted_spec = msgspec.structs.replace(current.spec, policy=spec)
        refused = await share(request, PLACEMENT, placement_id, promoted_spec)
        if refused is not None:
            return refused
        promoted = engine.decider.adopt(
            placement_id, spec, judgement.policy, judged_version=placement.version
        )
    return json_response({**report, "placement_version": promoted.version})


def _judge(engine: Engine, placement_id: str, spec: PolicySpec, estimator: str) -> Judgement:
    reader = DecisionLogReader(engine.settings.decision_log_path)
    try:
        closed_by = engine.now_ms() - engine.settings.attribution_window_ms
        return judge(reader, placement_id, spec, closed_by_ms=closed_by, estimator=estimator)
    finally:
        reader.close()


@require(Role.ADMIN)
async def delete_placement(request: Request) -> Response:
    """Remove a placement defined by the API (a starter or configured placement it
    replaced answers again)."""
    engine: Engine = request.app.state.engine
    placement_id = request.path_params["id"]
    async with defining(request):
        existing = engine.placements.get(placement_id)
        if existing is None:
            return _missing(placement_id)
        if existing.source != "api":
            return problem(
                409, "read-only",
                f"placement {placement_id!r} comes from the {existing.source} configuration; "
                "replace it with PUT",
            )  # fmt: skip
        refused = await share(request, PLACEMENT, placement_id, None)
        if refused is not None:
            return refused
        engine.placements.delete(placement_id)
    return Response(status_code=204)
