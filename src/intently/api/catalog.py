"""`/v1/catalog`: upsert items and offers in bulk, read one (admin key)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import psycopg
from starlette.requests import Request
from starlette.responses import Response

from intently.api.auth import require
from intently.api.events import BodyTooLarge, read_body
from intently.api.problems import json_response, problem
from intently.catalog.items import UploadError, decode_upload
from intently.catalog.offers import decode_offers
from intently.engine import Engine
from intently.events.validate import FieldError
from intently.keys import Role

MAX_UPLOAD_BYTES = 16 * 1024 * 1024
log = logging.getLogger(__name__)
_UPLOADS = asyncio.Lock()
T = TypeVar("T")


async def _upsert(
    request: Request,
    what: str,
    decode: Callable[[bytes], tuple[list[T], list[FieldError]]],
    write: Callable[[list[T]], list[T]],
    apply: Callable[[list[T]], None],
) -> Response:
    """Read an upload, keep what is valid, make it durable (off the event loop), then
    show it to decisions (on the event loop, where they read); answer with the count and
    what was refused."""
    try:
        body = await read_body(request, MAX_UPLOAD_BYTES)
    except BodyTooLarge:
        return problem(413, "body-too-large", f"an upload is at most {MAX_UPLOAD_BYTES} bytes")
    try:
        valid, errors = decode(body)
    except UploadError as error:
        return problem(400, "invalid-body", error.detail, pointer=error.pointer or None)
    if not valid:
        detail = f"no {what} was usable; see errors" if errors else f"send at least one {what}"
        return problem(400, f"no-usable-{what}", detail, errors=errors or None)
    # Uploads one after another, each written then shown: what memory shows is what the
    # disk holds, in the same order (two uploads of one item cannot cross).
    async with _UPLOADS:
        try:
            written = await asyncio.to_thread(write, valid)
        except (psycopg.Error, OSError) as error:  # the shared catalog (PostgreSQL)
            log.warning("the shared catalog refused an upload: %s", error)
            return problem(
                503, "catalog-unavailable",
                "the shared catalog (PostgreSQL) cannot be reached; nothing was changed, "
                "upload again", headers={"Retry-After": "5"},
            )  # fmt: skip
        apply(written)
    answer: dict[str, Any] = {"upserted": len(written)}
    if errors:
        answer["rejected"] = errors
    return json_response(answer)


@require(Role.ADMIN)
async def post_items(request: Request) -> Response:
    """Insert or replace items; each is checked on its own. Once answered, decisions see
    the new items (an item with stock 0 is no longer recommended)."""
    catalog = request.app.state.engine.catalog
    return await _upsert(
        request, "item", decode_upload, catalog.write,
        catalog.apply,
    )  # fmt: skip


@require(Role.ADMIN)
async def post_offers(request: Request) -> Response:
    """Insert or replace offers; each is checked on its own (its eligibility rule parsed
    and type-checked). Once answered, decisions choose among them."""
    catalog = request.app.state.engine.catalog
    return await _upsert(
        request, "offer", lambda body: decode_offers(body, catalog.fields), catalog.write_offers,
        catalog.apply_offers,
    )  # fmt: skip


@require(Role.ADMIN)
async def get_item(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    item_id = request.path_params["item_id"]
    item = engine.catalog.get(item_id)
    if item is None:
        return problem(404, "item-not-found", f"there is no item {item_id!r} in the catalog")
    return json_response(
        {**msgspec.to_builtins(item), "active": item.active, "available": item.available}
    )


@require(Role.ADMIN)
async def get_offer(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    offer_id = request.path_params["offer_id"]
    live = engine.catalog.get_offer(offer_id)
    if live is None:
        return problem(404, "offer-not-found", f"there is no offer {offer_id!r}")
    return json_response(
        {**msgspec.to_builtins(live.offer), "active": live.offer.active,
         "openNow": live.open_at(engine.now_ms())}
    )  # fmt: skip
