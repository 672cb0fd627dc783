"""`/v1/segments`: define, read and delete segments (admin key)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from intently.api.auth import require
from intently.api.events import read_json
from intently.api.problems import json_response, problem
from intently.api.sharing import defining, share
from intently.configfile import ConfigError
from intently.engine import Engine
from intently.keys import Role
from intently.segments.lang import ExpressionError
from intently.segments.registry import Segment, SegmentSpec, valid_name
from intently.stores.definitions import SEGMENT

_spec = msgspec.json.Decoder(SegmentSpec)


def _view(engine: Engine, segment: Segment) -> dict[str, Any]:
    return {**msgspec.to_builtins(segment), "members": engine.membership.members[segment.name]}


def _missing(name: str) -> Response:
    return problem(404, "segment-not-found", f"there is no segment {name!r}", pointer="/name")


@require(Role.ADMIN)
async def list_segments(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    return json_response(
        {
            "segments": [_view(engine, segment) for segment, _ in engine.segments],
            "fields": engine.segments.catalog.describe(),
        }
    )


@require(Role.ADMIN)
async def get_segment(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    name = request.path_params["name"]
    segment = engine.segments.get(name)
    return _missing(name) if segment is None else json_response(_view(engine, segment))


@require(Role.ADMIN)
async def put_segment(request: Request) -> Response:
    """Create or replace a segment; its membership is evaluated over every profile."""
    engine: Engine = request.app.state.engine
    name = request.path_params["name"]
    if not valid_name(name):
        return problem(
            400, "invalid-name",
            "a segment name is 1-64 of a-z, 0-9, '_' and '-', starting with a letter or digit",
            pointer="/name",
        )  # fmt: skip
    spec = await read_json(request, _spec, 16 * 1024, "a segment definition")
    if isinstance(spec, Response):
        return spec
    async with defining(request):
        existing = engine.segments.get(name)
        if existing is not None and existing.source == "config":
            return problem(
                409, "read-only", f"segment {name!r} comes from the segments file; change it there"
            )
        try:
            engine.check_segment(spec)
        except ExpressionError as exc:
            return problem(
                400, "invalid-expression", str(exc), pointer="/expression", position=exc.position
            )
        except ConfigError as exc:
            return problem(400, "webhook-secret-missing", str(exc), pointer="/webhook")
        refused = await share(request, SEGMENT, name, spec)
        if refused is not None:
            return refused
        segment, pages = engine.define_segment_paged(name, spec)
    # Every profile, a page at a time, outside the lock (installing other workers'
    # definitions need not wait for it); decisions and events go on between pages.
    changed = 0
    for moved in pages:
        changed += moved
        await asyncio.sleep(0)
    return json_response(
        {**_view(engine, segment), "changed": changed}, 201 if existing is None else 200
    )


@require(Role.ADMIN)
async def delete_segment(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    name = request.path_params["name"]
    async with defining(request):
        existing = engine.segments.get(name)
        if existing is None:
            return _missing(name)
        if existing.source == "config":
            return problem(
                409, "read-only", f"segment {name!r} comes from the segments file; change it there"
            )
        refused = await share(request, SEGMENT, name, None)
        if refused is not None:
            return refused
        pages = engine.delete_segment_paged(name)
    for _ in pages or ():  # its members leave it, a page at a time, outside the lock
        await asyncio.sleep(0)
    return Response(status_code=204)
