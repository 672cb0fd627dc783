"""Open-time rendering: a placement's decision as HTML, for one named person.

`GET /v1/render/{placement}?user_id=ID` (or `anonymous_id=ID`) decides the placement
for that person now, as `POST /v1/decide` does (the decision is logged, with its
propensities and reasons, and rewards attribute to it when the person later clicks
through to the site), and answers the placement's template rendered with the decision
(act/templates.py: values escaped, unsafe addresses dropped). It is made for email:
the sender puts the URL in the message, and the content is decided when the message is
opened, not when it was sent. `Cache-Control: no-store`: every fetch is a new decision.

Authentication. A mail client cannot send headers, so a URL may carry its own proof:
`sig`, an HMAC-SHA256 over the placement, the person and the optional expiry `exp`
(Unix seconds), with a key derived from the secret key (so rotating the secret key
voids every signed URL, and the secret key itself never leaves the server). A URL is
minted by `POST /v1/render/sign` (secret key) or `intently render-url`. Servers that can
send headers may instead use `Authorization: Bearer KEY` with either key: the write key
already decides for any id through `/v1/decide`, so rendering reveals nothing more.

A person who refused personalization gets the placement's non-personal content; a
failure inside the decision answers the fallback (marked by the `Intently-Degraded`
header), never a 5xx. A decision with nothing to show renders as an empty body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import TYPE_CHECKING, Annotated
from urllib.parse import quote, urlencode

import msgspec
from msgspec import Meta, Struct
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from intently.act.decide import UnknownPlacements
from intently.act.triggers import decision_html
from intently.act.wire import DecideBody, PlacementAsk
from intently.api.auth import bearer_key, require, unauthorized
from intently.api.events import privacy_refusals, read_json
from intently.api.problems import json_response, problem
from intently.events.schema import Id
from intently.keys import Role

if TYPE_CHECKING:
    from intently.engine import Engine

MAX_ID = 256
_KEY_LABEL = b"intently render url v1"


def render_key(secret_key: str) -> bytes:
    """The key that signs render URLs: derived from the secret key, never the key itself
    (a leaked signature reveals nothing usable elsewhere)."""
    return hmac.new(secret_key.encode(), _KEY_LABEL, hashlib.sha256).digest()


def signature(
    secret_key: str, placement: str, user_id: str | None, anonymous_id: str | None,
    expires: int | None,
) -> str:  # fmt: skip
    """`sig` for these parameters: base64url HMAC-SHA256, without padding. Every part is
    named and on its own line, so no two parameter sets sign the same text."""
    message = (
        f"placement={placement}\nuser_id={user_id or ''}\n"
        f"anonymous_id={anonymous_id or ''}\nexp={'' if expires is None else expires}"
    )
    mac = hmac.new(render_key(secret_key), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def signed_path(
    secret_key: str, placement: str, user_id: str | None = None,
    anonymous_id: str | None = None, expires: int | None = None,
) -> str:  # fmt: skip
    """The path and query of a signed render URL (prefix it with the server's address)."""
    query: dict[str, str] = {}
    if user_id is not None:
        query["user_id"] = user_id
    if anonymous_id is not None:
        query["anonymous_id"] = anonymous_id
    if expires is not None:
        query["exp"] = str(expires)
    query["sig"] = signature(secret_key, placement, user_id, anonymous_id, expires)
    return f"/v1/render/{quote(placement, safe='')}?{urlencode(query)}"


class SignBody(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """`POST /v1/render/sign`: the URL to mint."""

    placement: Annotated[str, Meta(min_length=1, max_length=64)]
    user_id: Id | None = None
    anonymous_id: Id | None = None
    # Seconds from now until the URL stops working; none: it works until the secret key
    # changes (an email may be opened months later).
    expires_in: Annotated[int, Meta(ge=1, le=10 * 366 * 86400)] | None = None


class Signed(Struct):
    url: str  # absolute, on the address the request came to
    path: str
    expires: int | None


_sign_decoder = msgspec.json.Decoder(SignBody)


@require(Role.ADMIN)
async def sign(request: Request) -> Response:
    """Mint a signed render URL (secret key)."""
    engine: Engine = request.app.state.engine
    body = await read_json(request, _sign_decoder, 16 * 1024, "a sign request")
    if isinstance(body, Response):
        return body
    if body.user_id is None and body.anonymous_id is None:
        return problem(
            400, "missing-identity", "name the person: user_id or anonymous_id",
            pointer="/user_id",
        )  # fmt: skip
    if engine.placements.get(body.placement) is None:
        return problem(
            404, "unknown-placement", f"placement {body.placement!r} is not defined",
            pointer="/placement",
        )  # fmt: skip
    expires = None if body.expires_in is None else int(time.time()) + body.expires_in
    path = signed_path(
        engine.keys.secret_key, body.placement, body.user_id, body.anonymous_id, expires
    )
    base = str(request.base_url).rstrip("/")
    return json_response(Signed(base + path, path, expires))


def _person(request: Request) -> tuple[str | None, str | None] | Response:
    """(user_id, anonymous_id) from the query, or the problem naming the bad one."""
    found: list[str | None] = []
    for name in ("user_id", "anonymous_id"):
        value = request.query_params.get(name)
        if value is not None and not 1 <= len(value) <= MAX_ID:
            return problem(
                400, "invalid-query", f"{name}: must be 1 to {MAX_ID} characters",
                pointer=f"/{name}",
            )  # fmt: skip
        found.append(value)
    if found[0] is None and found[1] is None:
        return problem(
            400, "missing-identity",
            "name the person: the user_id or anonymous_id query parameter",
            pointer="/user_id",
        )  # fmt: skip
    return found[0], found[1]


def _authorized(
    request: Request, engine: Engine, placement: str, user_id: str | None,
    anonymous_id: str | None,
) -> Response | None:  # fmt: skip
    """None when the request may render: a valid key in the header, or a valid,
    unexpired signature in the query."""
    key = bearer_key(request)
    if key is not None:
        if engine.keys.role_of(key) is None:
            return unauthorized("the key in the Authorization header is not valid")
        return None
    sig = request.query_params.get("sig")
    if not sig:
        return unauthorized(
            "sign the URL (sig, from POST /v1/render/sign or `intently render-url`) "
            "or send 'Authorization: Bearer KEY'"
        )
    raw_exp = request.query_params.get("exp")
    expires: int | None = None
    if raw_exp is not None:
        # (isdigit alone accepts digits such as "²" that int() refuses)
        if not (raw_exp.isascii() and raw_exp.isdigit()) or len(raw_exp) > 12:
            return problem(400, "invalid-query", "exp: must be Unix seconds", pointer="/exp")
        expires = int(raw_exp)
    expected = signature(engine.keys.secret_key, placement, user_id, anonymous_id, expires)
    if not hmac.compare_digest(sig.encode(), expected.encode()):
        return problem(403, "bad-signature", "sig does not match this URL", pointer="/sig")
    if expires is not None and expires < time.time():
        return problem(403, "expired", "this signed URL has expired", pointer="/exp")
    return None


async def render(request: Request) -> Response:
    """A placement's decision for one person, as HTML."""
    engine: Engine = request.app.state.engine
    placement_id: str = request.path_params["placement"]
    person = _person(request)
    if isinstance(person, Response):
        return person
    user_id, anonymous_id = person
    refused = _authorized(request, engine, placement_id, user_id, anonymous_id)
    if refused is not None:
        return refused
    placement = engine.placements.get(placement_id)
    if placement is None:
        return problem(404, "unknown-placement", f"placement {placement_id!r} is not defined")
    if request.method == "HEAD":
        # Mail link scanners and prefetchers ask with HEAD: checked, but nobody opened
        # the email, so no decision is made or logged.
        return Response(b"", 200, {"Cache-Control": "no-store"}, media_type="text/html")
    body = DecideBody([PlacementAsk(placement_id)], anonymous_id=anonymous_id, user_id=user_id)
    client = request.client.host if request.client else None
    try:
        answer = engine.decider.decide(
            body, client, request.headers.get("user-agent"),
            privacy_refusals(request, engine.settings),
        )  # fmt: skip
    except UnknownPlacements:  # deleted between the look-up and the decide
        return problem(404, "unknown-placement", f"placement {placement_id!r} is not defined")
    engine.metrics.count_decisions(answer.decisions)
    decision = answer.decisions[0]
    markup = decision_html(placement.template, msgspec.to_builtins(decision))
    headers = {
        "Cache-Control": "no-store",
        "Intently-Decision": decision.decision_id,
        "X-Content-Type-Options": "nosniff",
    }
    if decision.degraded is not None:
        # (header values are Latin-1: reasons are ASCII text written by the engine)
        headers["Intently-Degraded"] = decision.degraded.encode("ascii", "replace").decode()
    return Response(markup, 200, headers, media_type="text/html; charset=utf-8")


def routes(engine: Engine) -> list[BaseRoute]:
    return [
        Route("/v1/render/sign", sign, methods=["POST"]),
        Route("/v1/render/{placement}", render, methods=["GET"]),
    ]
