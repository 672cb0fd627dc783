"""`/admin`: the live dashboard, a page of its own and its assets.

The page holds no data: it asks for the secret key (kept in the tab's sessionStorage),
then polls the JSON API (api/admin.py, /v1/experiments) with it in the Authorization
header. So the page and its assets are public; every figure needs the key.

Charts are drawn by Plotly, served from the installed `plotly` package
(plotly/package_data/plotly.min.js), never from a CDN; its URL carries the package's
version, so browsers may keep it for a year. It is gzipped once, on first request.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import importlib.metadata
import importlib.resources
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from intently.api import admin as admin_api

if TYPE_CHECKING:
    from intently.engine import Engine

_HERE = Path(__file__).parent
PAGE = _HERE / "templates" / "admin" / "index.html"
ASSETS = _HERE / "static" / "admin"
PLOTLY_VERSION = importlib.metadata.version("plotly")
PLOTLY_URL = f"/admin/static/plotly.min.js?v={PLOTLY_VERSION}"
# Assets change with the code: a short cache, revalidated by ETag.
ASSET_CACHE = "public, max-age=300"
PLOTLY_CACHE = "public, max-age=31536000, immutable"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


class _Asset:
    """A file's bytes, its gzipped bytes and ETag, read and compressed once."""

    def __init__(self, read: bytes) -> None:
        self.body = read
        self.etag = '"' + hashlib.sha256(read).hexdigest()[:20] + '"'
        self._gzipped: bytes | None = None
        self._lock = threading.Lock()

    def gzipped(self) -> bytes:
        with self._lock:
            if self._gzipped is None:
                self._gzipped = gzip.compress(self.body, 6, mtime=0)
            return self._gzipped


async def _serve(request: Request, asset: _Asset, media_type: str, cache: str) -> Response:
    headers = {"Cache-Control": cache, "ETag": asset.etag, "Vary": "Accept-Encoding"}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        # (plotly takes a few hundred ms to compress, once: not on the event loop)
        body = await asyncio.to_thread(asset.gzipped)
        return Response(
            body, headers={**headers, "Content-Encoding": "gzip"}, media_type=media_type
        )
    return Response(asset.body, headers=headers, media_type=media_type)


def plotly_source() -> bytes:
    """plotly.min.js from the installed package."""
    return (importlib.resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()


def routes(engine: Engine) -> list[BaseRoute]:
    page = PAGE.read_text(encoding="utf-8").replace("{{PLOTLY_URL}}", PLOTLY_URL)
    assets = {path.name: _Asset(path.read_bytes()) for path in ASSETS.iterdir() if path.is_file()}
    plotly: list[_Asset] = []  # read on first request: 4.8 MB the API alone never needs

    async def dashboard(request: Request) -> Response:
        # No framing by other sites: the page holds an admin key once signed in.
        headers = {
            "Cache-Control": "no-cache",
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": "frame-ancestors 'none'",
            "Referrer-Policy": "no-referrer",
        }
        return Response(page, headers=headers, media_type="text/html; charset=utf-8")

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "plotly.min.js":
            if not plotly:
                plotly.append(_Asset(await asyncio.to_thread(plotly_source)))
            return await _serve(request, plotly[0], _TYPES[".js"], PLOTLY_CACHE)
        found = assets.get(name)
        if found is None:
            return Response("not found", status_code=404, media_type="text/plain")
        return await _serve(
            request, found, _TYPES.get(Path(name).suffix, "text/plain"), ASSET_CACHE
        )

    return [
        Route("/admin", dashboard, methods=["GET"], include_in_schema=False),
        Route("/admin/", dashboard, methods=["GET"], include_in_schema=False),
        Route("/admin/static/{name}", asset, methods=["GET"], include_in_schema=False),
        *admin_api.routes(),
    ]
