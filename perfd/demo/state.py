"""Everything the routes need, gathered once at app creation."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from perfd.demo.config import DemoConfig
from perfd.demo.metrics.collector import GroundTruthCollector
from perfd.demo.metrics.system import SystemProbe
from perfd.demo.services.nodes.manager import NodeManager
from perfd.demo.services.websocket.manager import ConnectionManager

SYSTEM_STATUS_TOPIC = "system_status"


@dataclass
class DemoState:
    config: DemoConfig
    manager: NodeManager
    connections: ConnectionManager
    collector: GroundTruthCollector
    system: SystemProbe
    started_at: float = field(default_factory=time.time)
    status_task: asyncio.Task | None = None

    @property
    def broadcaster_running(self) -> bool:
        return self.status_task is not None and not self.status_task.done()

    def topics(self) -> dict[str, str | None]:
        """topic -> node id (None for the JSON status topic)."""
        out: dict[str, str | None] = {node.topic: node.id for node in self.manager.nodes.values()}
        out[SYSTEM_STATUS_TOPIC] = None
        return out

    def status(self) -> dict:
        return {
            "uptime_s": time.time() - self.started_at,
            "frames_received": self.manager.frames_received,
            "queue_depth": self.manager.queue_depth(),
            "node_count": len(self.manager.nodes),
            "connections": self.connections.connection_count(),
            "sensor_pid": self.manager.sensor_pid,
            "hz": self.config.hz,
            "points": self.config.points,
            "metrics_enabled": self.collector.enabled,
        }
