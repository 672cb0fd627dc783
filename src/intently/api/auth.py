"""Keys on requests: `Authorization: Bearer KEY`, or `writeKey` in the body (sendBeacon)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from intently.api.problems import problem
from intently.keys import Role


def bearer_key(request: Request) -> str | None:
    """The key in the Authorization header, or None when there is no header."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, key = header.partition(" ")
    # A malformed header is a wrong key, not a missing one: answer 401, do not fall back.
    return key.strip() if scheme.lower() == "bearer" else ""


def unauthorized(detail: str) -> Response:
    return problem(
        401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="intently"'}
    )


def require(
    role: Role,
) -> Callable[[Callable[[Request], Awaitable[Response]]], Callable[[Request], Awaitable[Response]]]:
    """Wrap an endpoint so that it runs only for a key with `role` (admin covers write)."""

    def wrap(
        endpoint: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            key = bearer_key(request)
            granted = request.app.state.engine.keys.role_of(key)
            if granted is None:
                return unauthorized("missing or invalid key in the Authorization header")
            if role is Role.ADMIN and granted is not Role.ADMIN:
                return problem(403, "forbidden", "this route needs the secret (admin) key")
            return await endpoint(request)

        guarded.__name__ = endpoint.__name__
        guarded.__doc__ = endpoint.__doc__
        return guarded

    return wrap
