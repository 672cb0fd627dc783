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
from intently.stores.polled import ChangedElsewhere

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
    except ChangedElsewhere:
        return problem(
            409, "changed-elsewhere",
            f"the {kind} {key!r} was changed on another worker since this one installed "
            "it (within a second it installs the newer one here): read it again and send "
            "the change made on it", headers={"Retry-After": "1"},
        )  # fmt: skip
    except (psycopg.Error, OSError) as error:
        log.warning("the shared definitions refused a %s change: %s", kind, error)
        return problem(
            503, "definitions-unavailable",
            f"the shared definitions (PostgreSQL) cannot be reached; the {kind} is not "
            "changed here (if PostgreSQL took it before the answer was lost, every worker "
            "installs it within a second): read it, and send it again",
            headers={"Retry-After": "5"},
        )  # fmt: skip
    return None
