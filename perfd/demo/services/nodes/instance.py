"""The process-wide app state perfd's profile reads by module path:
``perfd.demo.services.nodes.instance:node_manager`` and ``:data_router``."""

from __future__ import annotations

from perfd.demo.metrics import instance as metrics
from perfd.demo.services.nodes.manager import NodeManager
from perfd.demo.services.nodes.routing import DataRouter

node_manager = NodeManager()
data_router = DataRouter(node_manager, metrics.collector)
