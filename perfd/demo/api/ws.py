"""WebSocket routes: ``/ws/{topic}`` and ``/api/v1/ws/{topic}`` (push-only)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from perfd.demo.state import DemoState

UNKNOWN_TOPIC = 4404


def router(state: DemoState) -> APIRouter:
    ws = APIRouter()

    async def subscribe(websocket: WebSocket, topic: str) -> None:
        if topic not in state.topics():  # accepted first so the client sees why, not a bare 403
            await websocket.accept()
            await websocket.close(code=UNKNOWN_TOPIC, reason=f"unknown topic {topic}")
            return
        await state.connections.connect(topic, websocket)
        try:
            while True:  # clients send nothing useful; wait for the close
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
        finally:
            state.connections.disconnect(topic, websocket)

    ws.add_api_websocket_route("/ws/{topic}", subscribe)
    ws.add_api_websocket_route("/api/v1/ws/{topic}", subscribe)
    return ws
