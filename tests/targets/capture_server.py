"""A small aiohttp server with its own ground truth, for capture tests.

argv: PORT [compress] [any]. Listens on 127.0.0.1:PORT and [::1]:PORT (``any``:
0.0.0.0 and ::); ``compress`` lets WebSocket clients negotiate permessage-deflate.

- ``WS /ws/{topic}`` and ``/api/v1/ws/{topic}``: the client sends text
  commands ``send N SIZE [SPLIT]``; the server answers with N binary messages
  of SIZE bytes (SPLIT: as a fragmented message of that many frames, written
  with raw frames) followed by a text ``done N``. ``pace RATE SECONDS SIZE`` streams SIZE-byte messages at RATE bytes/s. ``ping`` makes the server
  send a ping frame (control frames are not messages), then ``done``.
- ``GET /api/items/{id}``, ``POST /api/echo``, ``GET /api/slow?ms=N``,
  ``GET /api/missing`` (404), ``GET /static/app.js`` (not under /api/).
- ``GET /listen?port=N``: start listening on one more port.
- ``GET /truth``: what the server itself sent and served (not under /api/, so
  it does not count itself): per topic messages/bytes/active connections, per
  endpoint calls/last status/mean handler latency.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import defaultdict

from aiohttp import WSMsgType, web

PORT = int(sys.argv[1])
COMPRESS = "compress" in sys.argv[2:]
HOSTS = ("0.0.0.0", "::") if "any" in sys.argv[2:] else ("127.0.0.1", "::1")

ws_truth: dict[str, dict[str, int]] = defaultdict(lambda: {"messages": 0, "bytes": 0, "active": 0})
api_truth: dict[str, dict] = {}


@web.middleware
async def measure(request: web.Request, handler):
    t0 = time.perf_counter()
    resp = await handler(request)
    if request.path.startswith("/api/") and "/ws/" not in request.path:
        e = api_truth.setdefault(f"{request.method} {request.path}", {"calls": 0, "status": 0, "lat": []})
        e["calls"] += 1
        e["status"] = resp.status
        e["lat"] = (e["lat"] + [time.perf_counter() - t0])[-60:]
    return resp


async def websocket(request: web.Request) -> web.WebSocketResponse:
    topic = request.match_info["topic"]
    ws = web.WebSocketResponse(compress=COMPRESS, autoping=True)
    await ws.prepare(request)
    truth = ws_truth[topic]
    truth["active"] += 1
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            words = msg.data.split()
            if words[0] == "send":
                n, size = int(words[1]), int(words[2])
                split = int(words[3]) if len(words) > 3 else 1
                payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
                for _ in range(n):
                    if split > 1:
                        await send_fragmented(ws, payload, split)
                    else:
                        await ws.send_bytes(payload)
                    truth["messages"] += 1
                    truth["bytes"] += size
                done = f"done {n}"
                await ws.send_str(done)
                truth["messages"] += 1
                truth["bytes"] += len(done)
            elif words[0] == "pace":  # pace BYTES_PER_SEC SECONDS SIZE: sustained load
                rate, seconds, size = float(words[1]), float(words[2]), int(words[3])
                payload = bytes(size)
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                sent = 0
                while (elapsed := loop.time() - t0) < seconds:
                    if sent >= rate * elapsed:
                        await asyncio.sleep(0.002)
                        continue
                    await ws.send_bytes(payload)  # waits for the socket when its buffer is full
                    truth["messages"] += 1
                    truth["bytes"] += size
                    sent += size
                await ws.send_str("done")
                truth["messages"] += 1
                truth["bytes"] += 4
            elif words[0] == "ping":
                await ws.ping(b"p")
                await ws.send_str("done")
                truth["messages"] += 1
                truth["bytes"] += 4
    finally:
        truth["active"] -= 1
    return ws


async def send_fragmented(ws: web.WebSocketResponse, payload: bytes, parts: int) -> None:
    """One binary message as ``parts`` frames, written raw (aiohttp never fragments)."""
    transport = ws._writer.transport  # noqa: SLF001 - the test needs frames aiohttp cannot make
    step = max(1, len(payload) // parts)
    chunks = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
    for i, chunk in enumerate(chunks):
        b0 = (0x80 if i == len(chunks) - 1 else 0) | (0x2 if i == 0 else 0x0)
        n = len(chunk)
        if n < 126:
            head = bytes([b0, n])
        elif n < 65536:
            head = bytes([b0, 126]) + n.to_bytes(2, "big")
        else:
            head = bytes([b0, 127]) + n.to_bytes(8, "big")
        transport.write(head + chunk)
    await asyncio.sleep(0)


async def item(request: web.Request) -> web.Response:
    return web.json_response({"id": request.match_info["id"], "q": request.query.get("q")})


async def echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read())


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(int(request.query.get("ms", "10")) / 1000)
    return web.json_response({"slept": True})


async def missing(request: web.Request) -> web.Response:
    return web.json_response({"detail": "no"}, status=404)


async def static(request: web.Request) -> web.Response:
    return web.Response(text="console.log(1)")


async def listen(request: web.Request) -> web.Response:
    """Open one more listening port at run time (port discovery must follow)."""
    site = web.TCPSite(request.app["runner"], "127.0.0.1", int(request.query["port"]), reuse_address=True)
    await site.start()
    return web.Response(text="ok")


async def truth(request: web.Request) -> web.Response:
    api = {k: {"calls": v["calls"], "status": v["status"], "avg_ms": sum(v["lat"]) / len(v["lat"]) * 1000}
           for k, v in api_truth.items()}
    return web.json_response({"ws": ws_truth, "api": api})


async def main() -> None:
    app = web.Application(middlewares=[measure])
    app.router.add_get("/ws/{topic}", websocket)
    app.router.add_get("/api/v1/ws/{topic}", websocket)
    app.router.add_get("/api/items/{id}", item)
    app.router.add_post("/api/echo", echo)
    app.router.add_get("/api/slow", slow)
    app.router.add_get("/api/missing", missing)
    app.router.add_get("/static/app.js", static)
    app.router.add_get("/truth", truth)
    app.router.add_get("/listen", listen)
    runner = web.AppRunner(app, access_log=None)
    app["runner"] = runner
    await runner.setup()
    for host in HOSTS:
        await web.TCPSite(runner, host, PORT, reuse_address=True).start()
    print("READY", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
