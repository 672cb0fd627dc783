"""`/v1/catalog/items`: upsert items in bulk, read one (admin key)."""

from __future__ import annotations

import asyncio

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from intently.api.auth import require
from intently.api.events import BodyTooLarge, read_body
from intently.api.problems import json_response, problem
from intently.catalog.items import UploadError, decode_upload
from intently.engine import Engine
from intently.keys import Role

MAX_UPLOAD_BYTES = 16 * 1024 * 1024


@require(Role.ADMIN)
async def post_items(request: Request) -> Response:
    """Insert or replace items; each is checked on its own. Once answered, decisions see
    the new items (an item with stock 0 is no longer recommended)."""
    engine: Engine = request.app.state.engine
    try:
        body = await read_body(request, MAX_UPLOAD_BYTES)
    except BodyTooLarge:
        return problem(413, "body-too-large", f"an upload is at most {MAX_UPLOAD_BYTES} bytes")
    try:
        items, errors = decode_upload(body)
    except UploadError as error:
        return problem(400, "invalid-body", error.detail, pointer=error.pointer or None)
    if not items:
        detail = "no item was usable; see errors" if errors else "send at least one item"
        return problem(400, "no-usable-item", detail, errors=errors or None)
    written = await asyncio.to_thread(engine.catalog.write, [item for _, item in items])
    engine.catalog.apply(written)  # on the event loop, where decisions read
    return json_response({"upserted": len(written), "rejected": errors} if errors else
                 {"upserted": len(written)})  # fmt: skip


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
