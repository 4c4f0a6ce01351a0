"""A standard-library-only HTTP/1.1 + WebSocket server, runnable on every target CPython.

argv: PORT. Listens on 127.0.0.1:PORT. Writes every frame header and its
payload as separate TCP segments (TCP_NODELAY, drain in between), so frames
arrive split across segments on the wire.

- ``GET /ws/{topic}`` (Upgrade: websocket): on a text ``send N SIZE`` the
  server sends N binary messages of SIZE bytes, then a text ``done``.
- ``GET /api/...`` any path: ``200`` with a small JSON body (keep-alive).
- ``GET /truth``: messages/bytes sent per topic, calls per API path.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import sys

PORT = int(sys.argv[1])
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ws_truth: dict[str, dict[str, int]] = {}
api_truth: dict[str, int] = {}


async def send_frame(writer: asyncio.StreamWriter, opcode: int, payload: bytes) -> None:
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
    writer.write(head)
    await writer.drain()
    await asyncio.sleep(0.0005)  # let the header leave alone
    writer.write(payload)
    await writer.drain()


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(n)))
    return b0 & 0x0F, data


async def websocket(topic: str, headers: dict, reader, writer) -> None:
    accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest()).decode()
    writer.write(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode())
    truth = ws_truth.setdefault(topic, {"messages": 0, "bytes": 0})
    while True:
        opcode, data = await read_frame(reader)
        if opcode == 0x8:
            await send_frame(writer, 0x8, data[:2])
            return
        if opcode == 0x1 and data.startswith(b"send"):
            _, n, size = data.split()
            payload = bytes(int(size))
            for _ in range(int(n)):
                await send_frame(writer, 0x2, payload)
                truth["messages"] += 1
                truth["bytes"] += len(payload)
            await send_frame(writer, 0x1, b"done")
            truth["messages"] += 1
            truth["bytes"] += 4


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            path = target.split("?", 1)[0]
            if headers.get("upgrade", "").lower() == "websocket":
                await websocket(path.rsplit("/", 1)[-1], headers, reader, writer)
                return
            if path == "/truth":
                body = json.dumps({"ws": ws_truth, "api": api_truth}).encode()
            else:
                api_truth[f"{method} {path}"] = api_truth.get(f"{method} {path}", 0) + 1
                body = b'{"ok": true}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", PORT)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
