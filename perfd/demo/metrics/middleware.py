"""HTTP ground truth: a pure ASGI middleware timing every ``/api/`` request.

Latency runs from the request's bytes reaching the server (stamped by
:mod:`perfd.demo.metrics.arrival`; the middleware's own entry when the server
runs without it) to the response head handed to the transport (the first
response byte): as close as in-process code gets to what perfd's capture
measures on the wire. What it cannot see is the time before the server
reads the bytes: the kernel waking the event loop, and the loop busy with
something else (an Open3D op holding the GIL, a frame being sent). Pure ASGI
rather than ``BaseHTTPMiddleware`` to keep its cost at two clock reads and a
dict update.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from perfd.demo.metrics.arrival import arrived_ns

if TYPE_CHECKING:
    from perfd.demo.metrics.collector import GroundTruthCollector

API_PREFIX = "/api/"


class EndpointTimingMiddleware:
    def __init__(self, app, collector: "GroundTruthCollector") -> None:  # noqa: ANN001 - ASGI app
        self.app = app
        self.collector = collector

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 - ASGI
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX) or not self.collector.enabled:
            await self.app(scope, receive, send)
            return
        start = arrived_ns(scope) or time.monotonic_ns()
        recorded = False

        async def timed_send(message: dict) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                recorded = True  # a send that raises sent no response byte: nothing to record
                await send(message)
                self.collector.http_done(scope["method"], scope["path"], message["status"], start)
                return
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except Exception:
            if not recorded:
                self.collector.http_done(scope["method"], scope["path"], 500, start)
            raise
