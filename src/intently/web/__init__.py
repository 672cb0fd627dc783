"""The web side of intently: what a browser loads.

- `/sdk/intently.js`: the browser tag (web/sdk.py serves web/static/intently.js).
- `/demo`: the demo shop that `intently demo` (and `make run`) starts (web/demo/).
- `/admin`: the live dashboard, behind the secret key (web/admin.py).

Assets are served from this package (web/static), never from a CDN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from intently.engine import Engine


def web_routes(engine: Engine) -> list[BaseRoute]:
    from intently.web import admin, demo, sdk

    return [*sdk.routes(engine), *demo.routes(engine), *admin.routes(engine)]
