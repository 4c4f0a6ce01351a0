"""The process-wide ConnectionManager (``perfd.demo.services.websocket.instance:connection_manager``)."""

from __future__ import annotations

from perfd.demo.metrics import instance as metrics
from perfd.demo.services.websocket.manager import ConnectionManager

connection_manager = ConnectionManager(metrics.collector)
