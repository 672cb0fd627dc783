"""`/v1/profiles/{id}`: read, export, erase a person, and set their consent (admin key).

`{id}` may be the canonical profile id, a userId or an anonymousId.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import psycopg
from msgspec import Struct
from starlette.requests import Request
from starlette.responses import Response

from intently.api.auth import require
from intently.api.events import read_json
from intently.api.problems import experiments_unavailable, json_response, problem
from intently.context.identity import derived_profile_id
from intently.context.profile import Profile
from intently.context.stage import ProfileChanged
from intently.engine import Engine
from intently.events.record import record_as_json
from intently.events.schema import Consent, Context, TrackEvent
from intently.experiments.tracking import ExperimentsUnavailable
from intently.keys import Role
from intently.stores.erasures import Erasure
from intently.stores.protocol import StoreUnavailable
from intently.stores.redisstate import REDIS_ERRORS, RedisStore
from intently.stores.stream import EventStream

log = logging.getLogger(__name__)


class ConsentUpdate(Struct, forbid_unknown_fields=True):
    """`PUT /v1/profiles/{id}/consent`: the purposes to grant (true) or refuse (false);
    purposes left out keep what they were."""

    analytics: bool | None = None
    personalization: bool | None = None
    marketing: bool | None = None


class Erased(Struct):
    profile: str
    events: int
    identities: int
    decisions: int = 0


_consent_decoder = msgspec.json.Decoder(ConsentUpdate)


def _not_found(any_id: str) -> Response:
    return problem(
        404, "profile-not-found",
        f"no profile has the id, userId or anonymousId {any_id!r}",
        pointer="/id",
    )  # fmt: skip


def _profile(request: Request) -> tuple[Engine, str, Profile | None]:
    engine: Engine = request.app.state.engine
    any_id = request.path_params["id"]
    return engine, any_id, engine.context.lookup(any_id)


def describe(engine: Engine, profile: Profile) -> dict[str, Any]:
    """The profile as the API shows it: features, scores, and segments with their entry
    times and the latest entries and exits."""
    body = engine.context.describe(profile, engine.now_ms())
    history = engine.store.segment_history(profile.id, 20)
    entered: dict[str, int] = {}
    for change in history:
        if change.entered:
            entered[change.segment] = change.at_ms
    body["segments"] = {
        "current": {name: entered.get(name) for name in profile.segments},
        "history": [{"segment": c.segment, "entered": c.entered, "at": c.at_ms} for c in history],
    }
    return body


@require(Role.ADMIN)
async def get_profile(request: Request) -> Response:
    """The profile, its live session's features, its segments and its consent."""
    engine, any_id, profile = _profile(request)
    if profile is None:
        return _not_found(any_id)
    return json_response(describe(engine, profile))


@require(Role.ADMIN)
async def export_profile(request: Request) -> Response:
    """Everything held about the person: the profile as stored, its identity links,
    the experiment arms they were exposed to and every event of theirs in the log."""
    engine, any_id, profile = _profile(request)
    if profile is None:
        return _not_found(any_id)
    rows = await asyncio.to_thread(
        engine.log.rows_of, list(profile.anonymous_ids), list(profile.user_ids)
    )
    events = [(row.received_ms, record_as_json(row.body)) for row in rows]
    if engine.archive is not None:  # what other workers applied, from PostgreSQL
        try:
            events += await asyncio.to_thread(
                engine.archive.others_events_of,
                list(profile.anonymous_ids), list(profile.user_ids),
            )  # fmt: skip
        except (psycopg.Error, OSError) as error:
            log.warning("reading archived events for an export failed: %s", error)
            return problem(
                503, "archive-unavailable",
                "PostgreSQL cannot be reached, so other workers' events of the person "
                "cannot be read; an export must be whole: ask again",
                headers={"Retry-After": "5"},
            )  # fmt: skip
        events.sort(key=lambda found: found[0])
    try:
        arms = await asyncio.to_thread(engine.experiments.arms_of, profile.id)
    except (ExperimentsUnavailable, psycopg.Error, OSError) as error:
        return experiments_unavailable(error)  # an export must be whole
    body = {
        "profile": describe(engine, profile),
        "stored": msgspec.to_builtins(profile),
        "identities": {
            "user_ids": list(profile.user_ids),
            "anonymous_ids": list(profile.anonymous_ids),
        },
        "experiments": arms,
        "events": [msgspec.Raw(body) for _, body in events],
    }
    return json_response(body)


@require(Role.ADMIN)
async def delete_profile(request: Request) -> Response:
    """Erase the person: events from the log, then profile and links from the store.

    In that order: if the process dies in between, the profile is still there to find
    and the erasure can be asked again; the other order would lose the ids needed to find
    the events."""
    engine, any_id, profile = _profile(request)
    if profile is None:
        # No profile (never sent an event, or already erased): decisions made for the id
        # as a device may still be logged.
        devices = ["a:" + any_id, "u:" + any_id]
        engine.decider.forget(devices, [])
        decisions = await asyncio.to_thread(engine.decisions.erase, devices, [any_id])
        units = [derived_profile_id(device) for device in devices]
        try:
            exposures = await asyncio.to_thread(engine.experiments.erase, units)
        except (ExperimentsUnavailable, psycopg.Error, OSError) as error:
            return experiments_unavailable(error)  # held, and done when it returns
        archived = await _erase_archived(engine, [any_id], [any_id], devices, [any_id])
        if isinstance(archived, Response):
            return archived
        decisions += archived[1]
        if not decisions and not exposures:
            return _not_found(any_id)
        return json_response(Erased(any_id, 0, 0, decisions))
    anonymous_ids, user_ids = list(profile.anonymous_ids), list(profile.user_ids)
    devices = [*("a:" + a for a in anonymous_ids), *("u:" + u for u in user_ids)]
    events = await asyncio.to_thread(engine.log.erase, anonymous_ids, user_ids)
    engine.decider.forget(devices, [profile.id])
    # The decisions before the profile goes (a failure here leaves the profile, so the
    # erasure can be asked again), and once more after: a decide made meanwhile is gone.
    decisions = await asyncio.to_thread(engine.decisions.erase, devices, [profile.id])
    # Experiments knew the person by their profile id (or, before their first event, the
    # id it would get from each of their identities). Before the profile goes, as the
    # decisions: a failure leaves the profile, to be erased again.
    units = [profile.id, *(derived_profile_id(device) for device in devices)]
    try:
        await asyncio.to_thread(engine.experiments.erase, units)
    except (ExperimentsUnavailable, psycopg.Error, OSError) as error:
        return experiments_unavailable(error)  # held, and done when it returns
    # PostgreSQL's copies (every worker's), also before the profile goes.
    archived = await _erase_archived(engine, anonymous_ids, user_ids, devices, [profile.id])
    if isinstance(archived, Response):
        return archived
    if isinstance(engine.store, RedisStore):  # the event stream's copies of their events
        stream = EventStream(engine.store.client, engine.store.prefix)
        try:
            await asyncio.to_thread(stream.erase, anonymous_ids, user_ids)
        except REDIS_ERRORS as error:
            log.warning("erasing the event stream's entries failed: %s", error)
            return _store_unavailable()
    if engine.erasures is not None:  # every other worker's local files
        erasure = Erasure(anonymous_ids, user_ids, devices, [profile.id], units)
        try:
            engine.erasures.announce(erasure)
        except REDIS_ERRORS as error:
            log.warning("announcing an erasure failed: %s", error)
            return _store_unavailable()
    engine.learner.forget(anonymous_ids, user_ids)
    try:
        engine.context.forget(profile)
    except StoreUnavailable:
        return _store_unavailable()
    except ProfileChanged:
        return problem(
            409, "profile-changed",
            "the profile was merged with another, or linked to a new id, while it was being "
            "erased; what it had is erased: ask again (by any of the person's ids) to erase "
            "the rest", headers={"Retry-After": "0"},
        )  # fmt: skip
    decisions += await asyncio.to_thread(engine.decisions.erase, devices, [profile.id])
    await asyncio.wrap_future(engine.store.compact())
    return json_response(Erased(profile.id, events, len(anonymous_ids) + len(user_ids), decisions))


def _store_unavailable() -> Response:
    return problem(
        503, "state-unavailable",
        "the shared state store cannot be reached, so the erasure is not complete: ask again",
        headers={"Retry-After": "1"},
    )  # fmt: skip


async def _erase_archived(
    engine: Engine, anonymous_ids: list[str], user_ids: list[str], devices: list[str],
    profile_ids: list[str],
) -> tuple[int, int] | Response:  # fmt: skip
    """Delete the person's archived records; a 503 when PostgreSQL cannot be reached (the
    erasure is not done, and is asked again)."""
    if engine.archive is None:
        return 0, 0
    try:
        return await asyncio.to_thread(
            engine.archive.erase, anonymous_ids, user_ids, devices, profile_ids
        )
    except (psycopg.Error, OSError) as error:
        log.warning("erasing archived records failed: %s", error)
        return problem(
            503, "archive-unavailable",
            "PostgreSQL cannot be reached, so the person's archived records remain; the "
            "erasure is not complete: ask again",
            headers={"Retry-After": "5"},
        )  # fmt: skip


@require(Role.ADMIN)
async def put_consent(request: Request) -> Response:
    """Record consent as an event of the person's, so the log (and any replay) holds it."""
    engine, any_id, profile = _profile(request)
    if profile is None:
        return _not_found(any_id)
    update = await read_json(request, _consent_decoder, 4096, "a consent update")
    if isinstance(update, Response):
        return update
    preferences = {
        name: value for name in ConsentUpdate.__struct_fields__
        if (value := getattr(update, name)) is not None
    }  # fmt: skip
    if not preferences:
        return problem(
            400, "invalid-body", "name at least one purpose: analytics, personalization, marketing"
        )
    event = TrackEvent(
        event="Consent Updated",
        user_id=profile.user_ids[0] if profile.user_ids else None,
        anonymous_id=None if profile.user_ids else profile.anonymous_ids[0],
        properties=dict(preferences),
        context=Context(consent=Consent(category_preferences=preferences)),
    )
    await engine.pipeline.ingest([(None, event)])
    refreshed = engine.context.lookup(profile.id) or profile
    return json_response(engine.context.describe(refreshed, engine.now_ms())["consent"])
