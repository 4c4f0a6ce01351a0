"""Ground truth as MetricsSnapshot v1.0.0 dicts: collector + app state.

Measured numbers come from the collector; identity, throttle counts, queue
depth and connection counts are read from app state, exactly the places
perfd's app profile reads them from outside.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from perfd.demo.metrics.collector import GroundTruthCollector
    from perfd.demo.metrics.system import SystemProbe
    from perfd.demo.services.nodes.manager import NodeManager
    from perfd.demo.services.websocket.manager import ConnectionManager


def dag(collector: "GroundTruthCollector", manager: "NodeManager") -> dict:
    depth = manager.queue_depth()
    nodes = []
    running = 0
    for node_id, node in list(manager.nodes.items()):
        view = collector.node_view(node_id)
        running += view.pop("running")
        nodes.append({
            "node_id": node_id,
            "node_name": getattr(node, "name", node_id),
            "node_type": getattr(node, "type", "unknown"),
            **view,
            "throttled_count": manager._throttled_count.get(node_id, 0),
            "queue_depth": depth,
        })
    return {"nodes": nodes, "total_nodes": len(manager.nodes), "running_nodes": running}


def websocket(collector: "GroundTruthCollector", connections: "ConnectionManager") -> dict:
    topics = set(collector.topics) | {t for t, sockets in connections.active_connections.items() if sockets}
    return {
        "topics": {t: collector.topic_view(t, connections.connection_count(t)) for t in sorted(topics)},
        "total_connections": connections.connection_count(),
    }


def snapshot(collector: "GroundTruthCollector", manager: "NodeManager", connections: "ConnectionManager",
             system: "SystemProbe") -> dict:
    return {
        "timestamp": time.time(),
        "dag": dag(collector, manager),
        "websocket": websocket(collector, connections),
        "system": system.view(manager.queue_depth()),
        "endpoints": collector.endpoint_views(),
    }
