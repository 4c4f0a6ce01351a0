"""The built-in live dashboard: static HTML/JS/CSS shipped in the package, served at ``/``.

No build step and nothing fetched from elsewhere: the page talks to the same
server it came from (``/ws/system_metrics``, ``/api/health/performance``,
``/api/profile``). When the server wants a token, the page is opened as
``/?token=SECRET``; the index carries that query onto its own assets, and the
script sends it as a bearer header (REST) and as ``?token=`` (WebSocket,
where browsers cannot set headers).
"""

from __future__ import annotations

import html
from functools import cache
from importlib import resources
from urllib.parse import quote

from aiohttp import web

ASSETS = {
    "app.js": "text/javascript",
    "flame.js": "text/javascript",
    "style.css": "text/css",
}
_QUERY_PLACEHOLDER = "{{query}}"


@cache
def _read(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text()


async def index(request: web.Request) -> web.Response:
    token = request.query.get("token")
    query = f"?token={quote(token, safe='')}" if token else ""
    body = _read("index.html").replace(_QUERY_PLACEHOLDER, html.escape(query))
    return web.Response(text=body, content_type="text/html", headers={"Cache-Control": "no-cache"})


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    return web.Response(text=_read(name), content_type=ASSETS[name], headers={"Cache-Control": "no-cache"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/dashboard/{name}", asset)
