"""Ground-truth routes, in the MetricsSnapshot v1.0.0 shape perfd serves.

Also under ``/api/v1`` like perfd, so the same client code reads both.
While ``LIDAR_ENABLE_METRICS`` is off the data routes answer 503 and health
says ``metrics_enabled: false``.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException

from perfd.demo.metrics import report
from perfd.demo.state import DemoState

CONTRACT_VERSION = "1.0.0"


def router(state: DemoState) -> APIRouter:
    api = APIRouter()

    def enabled() -> None:
        if not state.collector.enabled:
            raise HTTPException(status_code=503, detail="ground truth is off (LIDAR_ENABLE_METRICS=0)")

    async def metrics() -> dict:
        enabled()
        return report.snapshot(state.collector, state.manager, state.connections, state.system)

    async def dag() -> dict:
        enabled()
        return {**report.dag(state.collector, state.manager), "timestamp": time.time()}

    async def websocket() -> dict:
        enabled()
        return {**report.websocket(state.collector, state.connections), "timestamp": time.time()}

    async def health() -> dict:
        return {
            "metrics_enabled": state.collector.enabled,
            "broadcaster_running": state.broadcaster_running,
            "system_probe_running": state.system.running,
            "node_count": len(state.manager.nodes),
            "version": CONTRACT_VERSION,
        }

    for prefix in ("/api", "/api/v1"):
        api.add_api_route(f"{prefix}/metrics", metrics, methods=["GET"])
        api.add_api_route(f"{prefix}/metrics/dag", dag, methods=["GET"])
        api.add_api_route(f"{prefix}/metrics/websocket", websocket, methods=["GET"])
        api.add_api_route(f"{prefix}/health/performance", health, methods=["GET"])
    return api
