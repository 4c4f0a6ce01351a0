"""ConnectionManager: ``active_connections`` (topic -> sockets) and ``broadcast()``.

Every successful send is one ground-truth WebSocket message; a socket whose
send fails is dropped so one dead viewer never stalls the pipeline.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket

if TYPE_CHECKING:
    from perfd.demo.metrics.collector import GroundTruthCollector

log = logging.getLogger(__name__)


class ConnectionManager:
    def __init__(self, collector: "GroundTruthCollector") -> None:
        self.active_connections: dict[str, list[WebSocket]] = {}
        self._collector = collector

    async def connect(self, topic: str, websocket: WebSocket) -> None:
        await websocket.accept()
        self.active_connections.setdefault(topic, []).append(websocket)

    def disconnect(self, topic: str, websocket: WebSocket) -> None:
        sockets = self.active_connections.get(topic)
        if sockets and websocket in sockets:
            sockets.remove(websocket)

    def has_subscribers(self, topic: str) -> bool:
        return bool(self.active_connections.get(topic))

    def connection_count(self, topic: str | None = None) -> int:
        if topic is not None:
            return len(self.active_connections.get(topic, ()))
        return sum(len(sockets) for sockets in self.active_connections.values())

    async def broadcast(self, topic: str, message: bytes | str) -> int:
        """Send ``message`` to every subscriber of ``topic``; returns how many got it."""
        sockets = self.active_connections.get(topic)
        if not sockets:
            return 0
        nbytes = len(message) if isinstance(message, bytes) else len(message.encode())
        sent = 0
        for websocket in list(sockets):
            try:
                if isinstance(message, bytes):
                    await websocket.send_bytes(message)
                else:
                    await websocket.send_text(message)
            except Exception:  # closed mid-send: any transport error means the viewer is gone
                self.disconnect(topic, websocket)
                continue
            self._collector.ws_sent(topic, nbytes)
            sent += 1
        return sent
