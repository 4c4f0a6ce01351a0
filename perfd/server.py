"""The aiohttp server: SPEC §2 routes over the registry.

Handlers only read the registry; all measurement happens on source threads.
Every route also lives under ``/api/v1`` so an existing dashboard can point
at perfd unchanged.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
from dataclasses import dataclass

from aiohttp import web

from perfd.broadcaster import Broadcaster
from perfd.dashboard import add_routes as add_dashboard_routes
from perfd.errors import BindError, NotAttached, UsageError
from perfd.flamegraph import FORMATS as PROFILE_FORMATS
from perfd.flamegraph import speedscope
from perfd.prometheus import CONTENT_TYPE as PROM_CONTENT_TYPE
from perfd.prometheus import render as render_prometheus
from perfd.registry import Registry
from perfd.snapshot import dump

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9105
MAX_CLIENT_MESSAGE = 64 * 1024  # clients are push-only; anything big is hostile

REGISTRY_KEY = web.AppKey("registry", Registry)
BROADCASTER_KEY = web.AppKey("broadcaster", Broadcaster)


@dataclass(frozen=True)
class ServerOptions:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    insecure: bool = False
    broadcast_hz: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.broadcast_hz <= 100:
            raise UsageError(f"--broadcast-hz must be in (0, 100], got {self.broadcast_hz:g}")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be 0-65535, got {self.port}")
        if not is_loopback(self.host) and not self.token and not self.insecure:
            raise UsageError(
                f"binding to non-loopback host {self.host} exposes the target's internals: "
                "give --token SECRET (clients send 'Authorization: Bearer SECRET') or --insecure"
            )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, separators=(",", ":")), status=status, content_type="application/json"
    )


def _not_attached(reason: str) -> web.Response:
    return _json({"detail": f"not attached: {reason}"}, status=503)


async def metrics(request: web.Request) -> web.Response:
    try:
        snap = request.app[REGISTRY_KEY].snapshot()
    except NotAttached as e:
        return _not_attached(str(e))
    return _json(dump(snap))


async def metrics_dag(request: web.Request) -> web.Response:
    return _section(request, "dag")


async def metrics_websocket(request: web.Request) -> web.Response:
    return _section(request, "websocket")


def _section(request: web.Request, name: str) -> web.Response:
    try:
        snap = request.app[REGISTRY_KEY].snapshot()
    except NotAttached as e:
        return _not_attached(str(e))
    data = dump(getattr(snap, name))
    data["timestamp"] = snap.timestamp
    return _json(data)


def _health(app: web.Application):
    return app[REGISTRY_KEY].health(broadcaster_running=app[BROADCASTER_KEY].running)


async def health(request: web.Request) -> web.Response:
    return _json(dump(_health(request.app)))


async def profile(request: web.Request) -> web.Response:
    """Sampled stacks of one node's calls (worker threads included), for flame graphs."""
    node_id = request.query.get("node_id", "")
    fmt = request.query.get("format", "collapsed")
    if not node_id or fmt not in PROFILE_FORMATS:
        return _json({"detail": f"give node_id and format={'|'.join(PROFILE_FORMATS)}"}, status=400)
    try:
        stacks = request.app[REGISTRY_KEY].profile(node_id)
    except NotAttached as e:
        return _not_attached(str(e))
    if stacks is None:
        return _json({"detail": f"no node {node_id!r}"}, status=404)
    if fmt == "speedscope":
        return _json(speedscope(node_id, stacks))
    text = "".join(f"{stack} {count}\n" for stack, count in sorted(stacks.items()))
    return web.Response(text=text, content_type="text/plain")


async def prometheus(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY_KEY]
    try:
        snap = registry.snapshot()
    except NotAttached:
        snap = None
    body = render_prometheus(snap, _health(request.app))
    return web.Response(body=body.encode(), headers={"Content-Type": PROM_CONTENT_TYPE})


async def system_metrics_ws(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_CLIENT_MESSAGE)
    await ws.prepare(request)
    await request.app[BROADCASTER_KEY].serve(ws, request.transport)
    return ws


@web.middleware
async def _errors_as_json(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status >= 400 and e.content_type != "application/json":
            return _json({"detail": e.reason}, status=e.status)
        raise


def _auth(token: str):
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler):
        given = request.headers.get("Authorization", "")
        if not given and "token" in request.query:  # browsers cannot set headers on a WebSocket
            given = f"Bearer {request.query['token']}"
        if not hmac.compare_digest(given.encode(), expected):
            return _json({"detail": "missing or wrong bearer token"}, status=401)
        return await handler(request)

    return check


def make_app(registry: Registry, options: ServerOptions) -> web.Application:
    middlewares = [_errors_as_json]
    if options.token:
        middlewares.insert(0, _auth(options.token))
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024)
    app[REGISTRY_KEY] = registry

    def assemble() -> dict | None:
        try:
            return dump(registry.snapshot())
        except NotAttached:
            return None

    app[BROADCASTER_KEY] = Broadcaster(assemble, options.broadcast_hz)
    for prefix in ("/api", "/api/v1"):
        app.router.add_get(f"{prefix}/metrics", metrics)
        app.router.add_get(f"{prefix}/metrics/", metrics)
        app.router.add_get(f"{prefix}/metrics/dag", metrics_dag)
        app.router.add_get(f"{prefix}/metrics/websocket", metrics_websocket)
        app.router.add_get(f"{prefix}/health/performance", health)
        app.router.add_get(f"{prefix}/profile", profile)
    app.router.add_get("/ws/system_metrics", system_metrics_ws)
    app.router.add_get("/api/v1/ws/system_metrics", system_metrics_ws)
    app.router.add_get("/metrics", prometheus)
    add_dashboard_routes(app)  # the live page at /

    async def on_startup(app: web.Application) -> None:
        app[BROADCASTER_KEY].start()

    async def on_shutdown(app: web.Application) -> None:
        await app[BROADCASTER_KEY].stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app


async def start_server(app: web.Application, options: ServerOptions) -> web.AppRunner:
    """Bind and serve; a taken or forbidden address is a ``BindError`` (exit 2)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, options.host, options.port, reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise BindError(f"cannot listen on {options.host}:{options.port}: {e.strerror or e}") from None
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port actually bound (useful with --port 0)."""
    for site in runner.sites:
        server = getattr(site, "_server", None)
        for sock in getattr(server, "sockets", None) or ():
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                return sock.getsockname()[1]
    raise RuntimeError("server is not bound")
