"""Node classes unlike the demo's: a synchronous body, a thread-pool body, and a sink."""

import asyncio
import time


class Node:
    def __init__(self, node_id, name, kind, router, manager):
        self.id = node_id
        self.name = name
        self.type = kind
        self._router = router
        self._manager = manager

    async def emit(self, payload):
        await self._router.forward_data(self.id, payload)


class Decimate(Node):
    """Synchronous body: runs on the event loop thread, no await before forwarding."""

    async def on_input(self, payload):
        points = payload["points"][::2]
        deadline = time.perf_counter() + 0.012  # 12 ms on the loop thread
        while time.perf_counter() < deadline:
            pass
        await self.emit({"points": points})


class Smooth(Node):
    """Blocking work in a worker thread, as LiDAR nodes do with asyncio.to_thread."""

    async def on_input(self, payload):
        points = await asyncio.to_thread(self._smooth, payload["points"])
        await self.emit({"points": points})

    @staticmethod
    def _smooth(points):
        time.sleep(0.02)
        return [(x, y, z * 0.5) for x, y, z in points]


class Sink(Node):
    async def on_input(self, payload):
        await asyncio.sleep(0.01)
