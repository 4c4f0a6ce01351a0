"""HTTP ground truth: a pure ASGI middleware timing every ``/api/`` request.

Latency runs from the request reaching the app to the response start (the
first response byte), which is what perfd's capture measures from the wire.
Pure ASGI rather than ``BaseHTTPMiddleware`` to keep its cost at two clock
reads and a dict update.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

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
        start = time.monotonic_ns()
        recorded = False

        async def timed_send(message: dict) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                recorded = True
                self.collector.http_done(scope["method"], scope["path"], message["status"], start)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except Exception:
            if not recorded:
                self.collector.http_done(scope["method"], scope["path"], 500, start)
            raise
