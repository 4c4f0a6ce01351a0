"""NodeManager: the node registry, the sensor queue and the throttle state.

perfd's app profile reads these attributes out of the live process, so their
names and types are part of the demo's shape: ``nodes`` (id -> node),
``downstream_map`` (id -> [ids]), ``data_queue`` (a
``multiprocessing.Queue(maxsize=500)``), ``_throttle_config`` (id -> max Hz)
and ``_throttled_count`` (id -> frames dropped).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import queue
from typing import TYPE_CHECKING

from perfd.demo.sensor import sensor_worker

if TYPE_CHECKING:
    from perfd.demo.nodes import BaseNode

log = logging.getLogger(__name__)

QUEUE_MAXSIZE = 500
# Spawned, not forked: the app process has threads by the time the sensor starts.
_MP = multiprocessing.get_context("spawn")


class NodeManager:
    def __init__(self) -> None:
        self.nodes: dict[str, "BaseNode"] = {}
        self.downstream_map: dict[str, list[str]] = {}
        self.data_queue = _MP.Queue(maxsize=QUEUE_MAXSIZE)
        self._throttle_config: dict[str, float] = {}
        self._throttled_count: dict[str, int] = {}
        self._throttle_last: dict[str, float] = {}
        self._throttle_slack_s = 0.0
        self.sensor_id: str | None = None
        self.frames_received = 0
        self._sensor: multiprocessing.process.BaseProcess | None = None
        self._listener: asyncio.Task | None = None
        self._running = False

    # --- registry -----------------------------------------------------------

    def register(self, node: "BaseNode", downstream: list[str] | None = None) -> None:
        self.nodes[node.id] = node
        self.downstream_map[node.id] = list(downstream or [])

    def set_throttle(self, node_id: str, max_hz: float, frame_hz: float) -> None:
        """Let at most ``max_hz`` frames a second into ``node_id``.

        Frames arrive with jitter, so the check allows half a frame period of
        slack: at ``max_hz = frame_hz / 2`` exactly every other frame passes.
        """
        self._throttle_config[node_id] = max_hz
        self._throttled_count.setdefault(node_id, 0)
        self._throttle_slack_s = 0.5 / frame_hz

    def should_throttle(self, node_id: str, now: float) -> bool:
        max_hz = self._throttle_config.get(node_id)
        if max_hz is None:
            return False
        last = self._throttle_last.get(node_id)
        if last is not None and now - last < 1.0 / max_hz - self._throttle_slack_s:
            return True
        self._throttle_last[node_id] = now
        return False

    def queue_depth(self) -> int:
        try:
            return self.data_queue.qsize()
        except NotImplementedError:  # macOS; the demo targets Linux
            return 0

    # --- sensor + listener ----------------------------------------------------

    def start(self, hz: float, points: int, seed: int = 0) -> None:
        """Start the sensor worker process and the queue listener task."""
        self._running = True
        self._sensor = _MP.Process(target=sensor_worker, args=(self.data_queue, hz, points, seed),
                                   name="lidar-sensor", daemon=True)
        self._sensor.start()
        self._listener = asyncio.get_running_loop().create_task(self._listen(), name="queue-listener")

    @property
    def sensor_pid(self) -> int | None:
        return self._sensor.pid if self._sensor is not None else None

    async def _listen(self) -> None:
        """One frame at a time: the next is taken only when the DAG has
        finished with this one, so a slow pipeline shows up as queue depth."""
        sensor = self.nodes[self.sensor_id]
        while self._running:
            try:
                payload = await asyncio.to_thread(self.data_queue.get, True, 0.2)
            except queue.Empty:
                continue
            if payload is None:  # stop()'s wake-up call
                break
            self.frames_received += 1
            try:
                await sensor.publish(payload)
            except Exception:
                log.exception("frame %s failed", payload.get("frame_id"))

    async def stop(self) -> None:
        self._running = False
        if self._listener is not None:
            await asyncio.wait([self._listener], timeout=2.0)
            self._listener.cancel()
        if self._sensor is not None and self._sensor.is_alive():
            self._sensor.terminate()
            await asyncio.to_thread(self._sensor.join, 2.0)
            if self._sensor.is_alive():
                self._sensor.kill()
        # A queue read still in flight in the default executor would block the
        # interpreter's exit (our own process keeps the pipe's write end open,
        # so it never sees EOF): hand it something to return.
        try:
            self.data_queue.put_nowait(None)
        except queue.Full:
            pass
        self.data_queue.cancel_join_thread()
