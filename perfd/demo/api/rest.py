"""REST routes under ``/api/``: what a LiDAR dashboard polls, plus two
misbehaving routes (slow, failing) for endpoint-metrics tests."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse

from perfd.demo.state import DemoState


def router(state: DemoState) -> APIRouter:
    api = APIRouter(prefix="/api")

    @api.get("/nodes")
    async def list_nodes() -> list[dict]:
        return [{**node.describe(), "downstream": state.manager.downstream_map.get(node.id, [])}
                for node in state.manager.nodes.values()]

    @api.get("/nodes/{node_id}")
    async def node_detail(node_id: str) -> dict:
        node = state.manager.nodes.get(node_id)
        if node is None:
            raise HTTPException(status_code=404, detail=f"no node {node_id}")
        return {
            **node.describe(),
            "downstream": state.manager.downstream_map.get(node_id, []),
            "throttle_max_hz": state.manager._throttle_config.get(node_id),
            "throttled_count": state.manager._throttled_count.get(node_id, 0),
            "subscribers": state.connections.connection_count(node.topic),
        }

    @api.get("/topics")
    async def topics() -> list[dict]:
        nodes = state.manager.nodes
        return [{"topic": topic, "node_id": node_id,
                 "node_type": nodes[node_id].type if node_id in nodes else "status",
                 "subscribers": state.connections.connection_count(topic)}
                for topic, node_id in state.topics().items()]

    @api.get("/status")
    async def status() -> dict:
        return state.status()

    @api.get("/slow")
    async def slow(ms: float = Query(250.0, ge=0, le=10_000)) -> dict:
        """Deliberately slow: awaits ``ms`` before answering."""
        await asyncio.sleep(ms / 1000.0)
        return {"slept_ms": ms}

    @api.get("/fail")
    async def fail(code: int = Query(500, ge=400, le=599)) -> JSONResponse:
        """Answers with the status asked for (404, 500, …)."""
        return JSONResponse({"detail": f"failed on request with {code}"}, status_code=code)

    return api
