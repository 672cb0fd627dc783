"""`/v1/experiments`: define, read, stop and delete experiments, and read their results
(admin key). The global holdout's results are at `/v1/experiments/holdout/results`, a
placement's holdout's at `/v1/experiments/holdout:<placement>/results`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

import msgspec
import psycopg
from starlette.requests import Request
from starlette.responses import Response

from intently.api.auth import require
from intently.api.events import read_json
from intently.api.problems import experiments_unavailable, json_response, problem
from intently.api.sharing import defining, share
from intently.configfile import ConfigError
from intently.engine import Engine
from intently.experiments.registry import ExperimentConflict, Stored
from intently.experiments.spec import ExperimentSpec
from intently.experiments.tracking import ExperimentsUnavailable
from intently.keys import Role
from intently.stores.definitions import EXPERIMENT

_spec = msgspec.json.Decoder(ExperimentSpec)
# "/field/0: why" -> the pointer and the message
_POINTED = re.compile(r"^(/[^\s:]*): (.*)$", re.DOTALL)


def _missing(experiment_id: str) -> Response:
    return problem(
        404, "experiment-not-found", f"there is no experiment {experiment_id!r}", pointer="/id"
    )


def _invalid(error: ConfigError, status: int = 400) -> Response:
    code = "invalid-experiment" if status == 400 else "experiment-conflict"
    found = _POINTED.match(str(error))
    if found is None:
        return problem(status, code, str(error))
    return problem(status, code, found.group(2), pointer=found.group(1))


@require(Role.ADMIN)
async def list_experiments(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    registry = engine.experiments.registry
    return json_response({"experiments": [e.describe() for e in registry]})


@require(Role.ADMIN)
async def get_experiment(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    experiment_id = request.path_params["id"]
    found = engine.experiments.registry.get(experiment_id)
    return _missing(experiment_id) if found is None else json_response(found.describe())


@require(Role.ADMIN)
async def put_experiment(request: Request) -> Response:
    """Create an experiment, or change one (while it runs, only its status, name,
    description and statistics settings); assignment uses it from the next decide."""
    engine: Engine = request.app.state.engine
    experiment_id = request.path_params["id"]
    spec = await read_json(request, _spec, 64 * 1024, "an experiment definition")
    if isinstance(spec, Response):
        return spec
    registry = engine.experiments.registry
    async with defining(request):
        existed = registry.get(experiment_id) is not None
        try:
            experiment = registry.prepare_definition(experiment_id, spec, engine.now_ms())
        except ExperimentConflict as error:
            return _invalid(error, 409)
        except ConfigError as error:
            return _invalid(error)
        shared = Stored(experiment.spec, experiment.started_ms, experiment.stopped_ms)
        refused = await share(request, EXPERIMENT, experiment_id, shared)
        if refused is not None:
            return refused
        registry.install(experiment)
    return json_response(experiment.describe(), 200 if existed else 201)


@require(Role.ADMIN)
async def delete_experiment(request: Request) -> Response:
    """Delete an experiment defined by the API (stop it first), and its results."""
    engine: Engine = request.app.state.engine
    experiment_id = request.path_params["id"]
    registry = engine.experiments.registry
    async with defining(request):
        if registry.get(experiment_id) is None:
            return _missing(experiment_id)
        try:
            deletable = registry.deletable(experiment_id)
        except ExperimentConflict as error:
            return problem(409, "experiment-running", str(error), pointer="/status")
        if not deletable:
            return problem(
                409, "read-only",
                f"experiment {experiment_id!r} comes from the configuration file; change it "
                "there",
            )  # fmt: skip
        refused = await share(request, EXPERIMENT, experiment_id, None)
        if refused is not None:
            return refused
        registry.delete(experiment_id)
    # What it logged goes with it: an experiment defined later under this id starts empty.
    # (PostgreSQL away: the purge is held with the log's other records, written when it
    # returns)
    with contextlib.suppress(ExperimentsUnavailable, TimeoutError):
        await asyncio.to_thread(engine.experiments.purge, experiment_id)
    return Response(status_code=204)


@require(Role.ADMIN)
async def experiment_results(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    experiment_id = request.path_params["id"]
    try:
        found = await asyncio.to_thread(engine.experiments.results, experiment_id)
    except (ExperimentsUnavailable, psycopg.Error, OSError) as error:
        return experiments_unavailable(error)
    return _missing(experiment_id) if found is None else json_response(found)
