"""Definitions changed through the API reach every worker (stores/definitions.py): each
change is checked here, written to PostgreSQL, and only then installed on this worker,
all under one lock, which the once-a-second install of other workers' changes also
takes, so a check still holds when its definition is installed."""

from __future__ import annotations

import asyncio
import logging

import psycopg
from starlette.requests import Request
from starlette.responses import Response

from intently.api.problems import problem
from intently.engine import Engine
from intently.stores.definitions import Definition

log = logging.getLogger(__name__)


def defining(request: Request) -> asyncio.Lock:
    lock: asyncio.Lock = request.app.state.defining
    return lock


async def share(
    request: Request, kind: str, key: str, definition: Definition | None
) -> Response | None:
    """Write the change for the other workers: None when it is written (or there are no
    others), else the 503 to answer, nothing having changed anywhere."""
    engine: Engine = request.app.state.engine
    if engine.definitions is None:
        return None
    try:
        await asyncio.to_thread(engine.share_definition, kind, key, definition)
    except (psycopg.Error, OSError) as error:
        log.warning("the shared definitions refused a %s change: %s", kind, error)
        return problem(
            503, "definitions-unavailable",
            f"the shared definitions (PostgreSQL) cannot be reached; the {kind} was not "
            "changed on any worker, send it again", headers={"Retry-After": "5"},
        )  # fmt: skip
    return None
