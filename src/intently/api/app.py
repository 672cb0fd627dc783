"""The ASGI application: Starlette routing, msgspec bodies, no per-request framework magic."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import psycopg
import redis
from redis.exceptions import RedisClusterException
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from intently._version import __version__
from intently.api.catalog import get_item, get_offer, post_items, post_offers
from intently.api.decide import decide_batcher, post_context, post_decide
from intently.api.events import post_events
from intently.api.experiments import (
    delete_experiment,
    experiment_results,
    get_experiment,
    list_experiments,
    put_experiment,
)
from intently.api.live import live_sessions
from intently.api.metrics import LatencyMiddleware
from intently.api.openapi import Health, build_openapi
from intently.api.placements import (
    delete_placement,
    get_placement,
    list_placements,
    promote_policy,
    put_placement,
)
from intently.api.problems import problem
from intently.api.profiles import delete_profile, export_profile, get_profile, put_consent
from intently.api.render import routes as render_routes
from intently.api.segments import delete_segment, get_segment, list_segments, put_segment
from intently.api.shedding import SheddingMiddleware
from intently.engine import Engine
from intently.experiments.tracking import ExperimentsUnavailable
from intently.stores.protocol import StoreUnavailable
from intently.stores.redisstate import REDIS_ERRORS
from intently.web import web_routes

_encode = msgspec.json.Encoder().encode
log = logging.getLogger(__name__)


class _AnyPath(Convertor[str]):
    """Catalog ids are any text: slashes and even line breaks (which Starlette's `path`
    convertor does not match, answering a bare 404)."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", _AnyPath())


async def health(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    body = Health(status="ok", version=__version__, last_seq=engine.log.last_seq)
    return Response(_encode(body), media_type="application/json")


async def metrics(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    return Response(engine.metrics.render(), media_type=engine.metrics.content_type)


async def openapi(request: Request) -> Response:
    return Response(request.app.state.openapi, media_type="application/json")


async def _state_unavailable(request: Request, error: Exception) -> Response:
    """Any request the shared state store failed under, where the handler has no answer
    of its own: a 503 to ask again, never a 500 (Redis away is not a bug)."""
    log.warning(
        "%s %s: the state store is unavailable: %s", request.method, request.url.path, error
    )
    return problem(
        503, "state-unavailable", "the shared state store cannot be reached; ask again",
        headers={"Retry-After": "1"},
    )  # fmt: skip


async def bench_hello(request: Request) -> Response:
    """The ceiling for bench/ingest.py: same server, same middleware, no work."""
    await request.body()
    return Response(b'{"hello":"world"}', media_type="application/json")


async def _tick(engine: Engine, defining: asyncio.Lock, seconds: float = 1.0) -> None:
    """The store's background work, on the event loop (where commits run), each second."""
    while True:
        await asyncio.sleep(seconds)
        try:
            engine.store.tick()
        except Exception:  # logged; the next tick tries again
            log.exception("the state store's periodic work failed")
        # Other workers' erasures before catching up: a catch-up would otherwise re-apply
        # an erased person's events from this worker's log, and bring them back.
        if engine.erasures is not None:
            await _carry_out_erasures(engine)
        try:  # after an outage of the shared store: apply what waited in the log
            engine.context.recover(engine.log)
        except Exception:
            log.exception("catching up with the state store failed")
        if engine.catalog.shared is not None:  # what other workers wrote to PostgreSQL
            await _sync_catalog(engine)
        if engine.definitions is not None:  # placements, segments and experiments
            await _adopt_definitions(engine, defining)
        if engine.experiments.log.shared:  # visitors other workers merged keep their arms
            try:
                aliases = await asyncio.to_thread(engine.experiments.log.new_aliases)
                engine.experiments.adopt_aliases(aliases)
            except (psycopg.Error, OSError):
                pass  # PostgreSQL is away: the next tick asks again
            except Exception:
                log.exception("reading the experiment aliases failed")
        try:
            engine.decider.tick(engine.now_ms())
        except Exception:
            log.exception("the decision engine's periodic work failed")
        try:  # the dashboard's live sessions gauge (api/live.py)
            engine.live.sample_sessions(live_sessions(engine))
        except StoreUnavailable:
            pass  # the gauge keeps its last value while the store is away
        except Exception:
            log.exception("sampling the live sessions failed")
        _collect()


async def _sync_catalog(engine: Engine) -> None:
    """Catalog rows other workers wrote: read off the event loop (PostgreSQL may be slow
    or away), installed on it."""
    shared = engine.catalog.shared
    assert shared is not None
    try:
        rows = await asyncio.to_thread(shared.read)  # (every page since the last read)
        if rows:
            engine.apply_catalog_changes(*shared.take(rows))
    except (psycopg.Error, OSError):
        pass  # PostgreSQL is away: the next tick asks again (the archiver logs it)
    except Exception:
        log.exception("reading the shared catalog failed")


async def _carry_out_erasures(engine: Engine) -> None:
    """Other workers' erasures on this worker's own files, scanned off the event loop;
    each marked done in Redis only once carried out (else the next tick tries again)."""
    broadcast = engine.erasures
    assert broadcast is not None
    try:
        pending = await asyncio.to_thread(broadcast.pending)
        for entry_id, erasure in pending:
            if erasure is not None:
                engine.forget_in_memory(erasure)
                await asyncio.to_thread(engine.erase_files, erasure)
            await asyncio.to_thread(broadcast.done, entry_id)
    except (StoreUnavailable, *REDIS_ERRORS, psycopg.Error, OSError, ExperimentsUnavailable):
        pass  # Redis or PostgreSQL is away: the next tick tries again
    except Exception:
        log.exception("carrying out other workers' erasures failed")


async def _adopt_definitions(engine: Engine, defining: asyncio.Lock) -> None:
    """Install the definitions other workers wrote (read off the loop, installed on it,
    between two API changes of definitions)."""
    shared = engine.definitions
    assert shared is not None
    try:
        rows = await asyncio.to_thread(shared.read)
    except (psycopg.Error, OSError):
        return  # PostgreSQL is away: the next tick asks again
    except Exception:
        log.exception("reading the shared definitions failed")
        return
    if rows or engine.definitions_refused:
        # Which rows are newer than what is installed is decided under the lock: a PUT
        # on this worker may have installed a newer one since they were read.
        async with defining:
            engine.adopt_definitions(shared.take(rows))


async def _share_learning(engine: Engine) -> None:
    """Workers sharing Redis: decisions and rewards to and from the others (learn/bus.py),
    every 20 ms, on the loop (where policies are used)."""
    bus = engine.bus
    assert bus is not None
    while True:
        await asyncio.sleep(bus.interval)
        outgoing = bus.take_outbox()
        try:
            received = await asyncio.to_thread(bus.exchange, outgoing)
        except REDIS_ERRORS:
            bus.put_back(outgoing)
            await asyncio.sleep(1.0)  # Redis is away: what waits is kept, tried again
            continue
        except Exception:
            bus.put_back(outgoing)
            log.exception("sharing what was learned failed")
            await asyncio.sleep(1.0)
            continue
        bus.put_back(outgoing)  # (empty: all sent)
        bus.apply_received(received)


async def _snapshot_learning(engine: Engine) -> None:
    """Every `learning_snapshot_seconds` (30 by default), the worker whose turn it is
    writes what it learned to Redis for the workers that start later (learn/snapshot.py):
    Redis's part off the loop, the encoding on it (where policies change)."""
    snapshots, erasures, bus = engine.snapshots, engine.erasures, engine.bus
    assert snapshots is not None
    assert erasures is not None
    assert bus is not None
    every = engine.settings.learning_snapshot_seconds
    while True:
        await asyncio.sleep(every * (0.5 + random.random()))
        try:
            if not await asyncio.to_thread(snapshots.take_turn, every, bus.identity):
                continue
            # Read before the state is: every erasure up to it is carried out in the state.
            erased = await asyncio.to_thread(erasures.carried_out_through)
            started = time.perf_counter()
            body = engine.learned_snapshot(erased)
            if body is None:
                continue
            encoded = time.perf_counter() - started
            written = await asyncio.to_thread(snapshots.write, body, erased)
            log.debug("learning snapshot of %d bytes encoded in %.1f ms, %s", len(body),
                      encoded * 1000, "written" if written else "refused (an erasure)")  # fmt: skip
        except REDIS_ERRORS as error:
            log.info("writing the learning snapshot failed (tried again later): %s", error)
        except Exception:
            log.exception("writing the learning snapshot failed")


def _collect() -> None:
    """A collector pass each second: the young generation, or an older one when due.

    The collector starts a pass when allocations outnumber frees by its first threshold;
    under a steady load, long-lived objects are freed as fast as new ones are made, so the
    young generation grew for half a minute and then took one pass of ~200 ms
    (docs/architecture.md, "Young objects"). A pass each second keeps it short. The older
    generations are collected when their count (passes of the younger one) passes their
    threshold, as the collector's own trigger would: otherwise a cycle that lived through
    one pass would never be freed."""
    counts, thresholds = gc.get_count(), gc.get_threshold()
    generation = next((g for g in (2, 1) if counts[g] > thresholds[g]), 0)
    gc.collect(generation)


def create_app(engine: Engine, *, close_engine: bool = False) -> ASGIApp:
    """The HTTP API over `engine`. With `close_engine`, the app closes it on shutdown."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Segment webhooks run while the app serves (not during start-up catch-up).
        engine.webhooks.start()
        engine.membership.listeners.append(engine.webhooks.enqueue)
        engine.membership.listeners.append(engine.triggers.entered)
        ticking = asyncio.create_task(_tick(engine, app.state.defining))
        learning = (
            [asyncio.create_task(_share_learning(engine)),
             asyncio.create_task(_snapshot_learning(engine))]
            if engine.bus else []
        )  # fmt: skip
        try:
            yield
        finally:
            ticking.cancel()
            for task in learning:
                task.cancel()
            engine.membership.listeners.remove(engine.webhooks.enqueue)
            engine.membership.listeners.remove(engine.triggers.entered)
            await engine.webhooks.stop()
            if close_engine:
                engine.close()

    routes: list[BaseRoute] = [
        Route("/v1/events", post_events, methods=["POST"]),
        Route("/v1/profiles/{id}", get_profile, methods=["GET"]),
        Route("/v1/profiles/{id}", delete_profile, methods=["DELETE"]),
        Route("/v1/profiles/{id}/export", export_profile, methods=["GET"]),
        Route("/v1/profiles/{id}/consent", put_consent, methods=["PUT"]),
        Route("/v1/catalog/items", post_items, methods=["POST"]),
        Route("/v1/catalog/items/{item_id:anypath}", get_item, methods=["GET"]),
        Route("/v1/catalog/offers", post_offers, methods=["POST"]),
        Route("/v1/catalog/offers/{offer_id:anypath}", get_offer, methods=["GET"]),
        Route("/v1/decide", post_decide, methods=["POST"]),
        Route("/v1/context", post_context, methods=["POST"]),
        Route("/v1/placements", list_placements, methods=["GET"]),
        Route("/v1/placements/{id}", get_placement, methods=["GET"]),
        Route("/v1/placements/{id}", put_placement, methods=["PUT"]),
        Route("/v1/placements/{id}", delete_placement, methods=["DELETE"]),
        Route("/v1/placements/{id}/promote", promote_policy, methods=["POST"]),
        Route("/v1/experiments", list_experiments, methods=["GET"]),
        Route("/v1/experiments/{id}", get_experiment, methods=["GET"]),
        Route("/v1/experiments/{id}", put_experiment, methods=["PUT"]),
        Route("/v1/experiments/{id}", delete_experiment, methods=["DELETE"]),
        Route("/v1/experiments/{id}/results", experiment_results, methods=["GET"]),
        Route("/v1/segments", list_segments, methods=["GET"]),
        Route("/v1/segments/{name}", get_segment, methods=["GET"]),
        Route("/v1/segments/{name}", put_segment, methods=["PUT"]),
        Route("/v1/segments/{name}", delete_segment, methods=["DELETE"]),
        Route("/healthz", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    routes += render_routes(engine)
    routes += web_routes(engine)
    if engine.settings.bench_endpoints:
        routes.append(Route("/_bench/hello", bench_hello, methods=["POST"]))
    settings = engine.settings
    middleware = [
        Middleware(
            SheddingMiddleware,
            metrics=engine.metrics,
            shed_at=settings.shed_at_in_flight,
            refuse_at=settings.refuse_at_in_flight,
        )
    ]
    if engine.settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(engine.settings.cors_origins),
                allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type"],
                max_age=3600,
            )
        )
    app = Starlette(
        routes=routes, middleware=middleware, lifespan=lifespan,
        # (a Redis error that escaped the store's own guard is an outage all the same)
        exception_handlers={
            StoreUnavailable: _state_unavailable, redis.RedisError: _state_unavailable,
            RedisClusterException: _state_unavailable,
        },
    )  # fmt: skip
    app.state.engine = engine
    app.state.defining = asyncio.Lock()  # api/sharing.py
    app.state.decides = decide_batcher(engine)
    app.state.openapi = msgspec.json.encode(build_openapi())
    return LatencyMiddleware(app, engine.metrics)
