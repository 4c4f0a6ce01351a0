"""Push the snapshot to every WebSocket client at a fixed rate.

Each client owns a one-slot mailbox and a sender task: the ticker assembles
the frame once and drops it into every mailbox, replacing a frame the client
has not taken yet. A client that stops reading therefore costs one frame of
memory (plus the transport's bounded write buffer), never delays the others,
and is dropped once it has been stuck for ``stall_limit`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from aiohttp import web

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Client:
    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport | None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    frame: str | None = None
    sending_since: float | None = None
    frames_sent: int = 0
    frames_skipped: int = 0


class Broadcaster:
    def __init__(self, assemble: Callable[[], dict | None], hz: float, stall_limit: float | None = None) -> None:
        if not 0 < hz <= 100:
            raise ValueError("broadcast rate must be in (0, 100] Hz")
        self.assemble = assemble  # returns a JSON-ready dict, or None while not attached
        self.period = 1.0 / hz
        self.stall_limit = stall_limit if stall_limit is not None else max(5.0, 5 * self.period)
        self._clients: set[_Client] = set()
        self._task: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._tick(), name="perfd-broadcast")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for client in list(self._clients):
            await client.ws.close()

    async def serve(self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None) -> None:
        """Run one client until it leaves or is dropped. Push-only: what it sends is ignored."""
        client = _Client(ws, transport)
        self._clients.add(client)
        sender = asyncio.get_running_loop().create_task(self._send_loop(client))
        try:
            async for _ in ws:  # drain control frames and ignore anything else
                pass
        finally:
            self._clients.discard(client)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    async def _send_loop(self, client: _Client) -> None:
        while not client.ws.closed:
            await client.wake.wait()
            client.wake.clear()
            frame, client.frame = client.frame, None
            if frame is None:
                continue
            client.sending_since = time.monotonic()
            try:
                await client.ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                break
            finally:
                client.sending_since = None
            client.frames_sent += 1
        await client.ws.close()

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self.period
            self._push_once()
            delay = next_at - loop.time()
            if delay < 0:  # fell behind (suspended host): do not burst to catch up
                next_at = loop.time()
                delay = 0
            await asyncio.sleep(delay)

    def _push_once(self) -> None:
        if not self._clients:
            return
        try:
            data = self.assemble()
        except Exception:  # a broken assembly must not kill the broadcaster
            log.exception("assembling snapshot for broadcast")
            return
        if data is None:
            return
        frame = json.dumps(data, separators=(",", ":"))
        now = time.monotonic()
        for client in list(self._clients):
            if client.sending_since is not None and now - client.sending_since > self.stall_limit:
                log.info("dropping WebSocket client stuck for %.1fs", now - client.sending_since)
                self._clients.discard(client)
                if client.transport is not None:
                    client.transport.abort()  # close() would wait on the very buffer that is stuck
                continue
            if client.frame is not None:
                client.frames_skipped += 1
            client.frame = frame
            client.wake.set()
