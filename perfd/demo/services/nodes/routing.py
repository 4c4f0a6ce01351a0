"""DataRouter: moves payloads along the DAG.

``_send_to_target_node`` is the node-entry function perfd's app profile
points at (qualname ``DataRouter._send_to_target_node``, file ``routing.py``):
its locals are exactly ``self, source_id, target_id, payload, target_node``,
and its wall time is the node's exec time. Keep that shape — no extra locals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from perfd.demo.metrics.collector import GroundTruthCollector
    from perfd.demo.services.nodes.manager import NodeManager

log = logging.getLogger(__name__)


class DataRouter:
    def __init__(self, node_manager: "NodeManager", collector: "GroundTruthCollector") -> None:
        self._node_manager = node_manager
        self._collector = collector

    async def forward_data(self, source_id: str, payload: dict) -> None:
        """Hand ``payload`` produced by ``source_id`` to every downstream node."""
        if self._node_manager.downstream_map.get(source_id):
            await self._forward_to_downstream_nodes(source_id, payload)

    async def _forward_to_downstream_nodes(self, source_id: str, payload: dict) -> None:
        manager = self._node_manager
        targets = []
        now = time.monotonic()
        for target_id in manager.downstream_map.get(source_id, ()):
            if manager.should_throttle(target_id, now):
                manager._throttled_count[target_id] = manager._throttled_count.get(target_id, 0) + 1
                continue
            targets.append(target_id)
        if len(targets) == 1:
            await self._send_to_target_node(source_id, targets[0], payload)
        elif targets:
            await asyncio.gather(*(self._send_to_target_node(source_id, t, payload) for t in targets))

    async def _send_to_target_node(self, source_id: str, target_id: str, payload: dict) -> None:
        target_node = self._node_manager.nodes.get(target_id)
        if target_node is None:
            log.warning("route %s -> %s: no such node", source_id, target_id)
            return
        self._collector.node_started(target_id, payload)
        try:
            await target_node.on_input(payload)
        except Exception:  # one bad frame must not stop the pipeline
            log.exception("node %s (%s) failed on input from %s", target_id, target_node.name, source_id)
        finally:
            self._collector.node_finished(target_id)
