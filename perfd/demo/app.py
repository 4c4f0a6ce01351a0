"""The FastAPI app: wires app state, the DAG, routes and background tasks."""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from perfd.demo import dag
from perfd.demo.api import metrics as metrics_routes
from perfd.demo.api import rest, ws
from perfd.demo.config import DemoConfig
from perfd.demo.metrics import instance as metrics
from perfd.demo.metrics.middleware import EndpointTimingMiddleware
from perfd.demo.metrics.system import SystemProbe
from perfd.demo.services.nodes.instance import data_router, node_manager
from perfd.demo.services.websocket.instance import connection_manager
from perfd.demo.state import SYSTEM_STATUS_TOPIC, DemoState

log = logging.getLogger(__name__)
STATUS_HZ = 2.0


def create_app(config: DemoConfig) -> FastAPI:
    """One app per process: the app state lives in module-level singletons
    (that is the shape perfd reads), so this is called once."""
    state = DemoState(config, node_manager, connection_manager, metrics.collector, SystemProbe())
    dag.build(config, node_manager, data_router, connection_manager, metrics.collector)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202 - FastAPI's lifespan protocol
        state.system.start()
        state.status_task = asyncio.get_running_loop().create_task(_status_loop(state), name="system-status")
        node_manager.start(config.hz, config.points, config.seed)
        log.info("demo: %d nodes, sensor pid %s, %g Hz x %d points", len(node_manager.nodes),
                 node_manager.sensor_pid, config.hz, config.points)
        try:
            yield
        finally:
            state.status_task.cancel()
            await asyncio.gather(state.status_task, return_exceptions=True)
            await node_manager.stop()
            await state.system.stop()

    app = FastAPI(title="perfd demo LiDAR server", lifespan=lifespan)
    app.include_router(rest.router(state))
    app.include_router(ws.router(state))
    app.include_router(metrics_routes.router(state))
    app.add_middleware(EndpointTimingMiddleware, collector=metrics.collector)
    return app


async def _status_loop(state: DemoState) -> None:
    """The JSON ``system_status`` topic, pushed at 2 Hz to whoever subscribed."""
    while True:
        await asyncio.sleep(1.0 / STATUS_HZ)
        if state.connections.has_subscribers(SYSTEM_STATUS_TOPIC):
            await state.connections.broadcast(SYSTEM_STATUS_TOPIC, json.dumps(
                {**state.status(), "system": state.system.view(state.manager.queue_depth())}))
