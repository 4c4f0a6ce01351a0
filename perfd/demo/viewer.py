"""A dashboard stand-in: subscribes to every processing node's topic and to
``system_status``, reads and discards the frames, and polls a few REST routes.

``python -m perfd.demo.viewer --url http://127.0.0.1:8005`` prints ``READY``
once every subscription is open. On SIGTERM/SIGINT it prints one line
``VIEWER {json}`` with what it received and requested (and writes the same
JSON to ``--stats``), so tests can compare the demo's — and perfd's —
numbers against what a client actually saw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from perfd.demo import frames

POLLED_ROUTES = ("/api/status", "/api/nodes")


@dataclass
class ViewerStats:
    messages: Counter = field(default_factory=Counter)  # topic -> frames received
    bytes: Counter = field(default_factory=Counter)  # topic -> payload bytes received
    bad_frames: int = 0
    requests: Counter = field(default_factory=Counter)  # "GET /path status" -> completed requests

    def as_dict(self) -> dict:
        return {"messages": dict(self.messages), "bytes": dict(self.bytes), "bad_frames": self.bad_frames,
                "requests": dict(self.requests)}


class Viewer:
    def __init__(self, url: str, poll_interval: float, include_sensor: bool = False) -> None:
        self.url = url.rstrip("/")
        self.poll_interval = poll_interval
        self.include_sensor = include_sensor
        self.stats = ViewerStats()
        self.topics: list[str] = []

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            topics = await self._get(session, "/api/topics")
            self.topics = [t["topic"] for t in topics if self.include_sensor or t["node_type"] != "sensor"]
            sockets = [await session.ws_connect(f"{self.url.replace('http', 'ws', 1)}/ws/{topic}")
                       for topic in self.topics]
            readers = [asyncio.create_task(self._read(topic, ws)) for topic, ws in zip(self.topics, sockets)]
            poller = asyncio.create_task(self._poll(session))
            print("READY", " ".join(self.topics), flush=True)
            # Until told to stop, or until the server goes away (a topic closes).
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait([stopped, *readers], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            poller.cancel()
            for ws in sockets:
                await ws.close()
            await asyncio.gather(stopped, poller, *readers, return_exceptions=True)

    async def _get(self, session: aiohttp.ClientSession, path: str) -> object:
        async with session.get(self.url + path) as response:
            body = await response.json()
            self.stats.requests[f"GET {path} {response.status}"] += 1
            return body

    async def _poll(self, session: aiohttp.ClientSession) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            for path in POLLED_ROUTES:
                try:
                    await self._get(session, path)
                except aiohttp.ClientError:
                    pass

    async def _read(self, topic: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type == aiohttp.WSMsgType.BINARY:
                try:
                    frames.decode_header(message.data)
                except frames.FrameError:
                    self.stats.bad_frames += 1
                self.stats.bytes[topic] += len(message.data)
            elif message.type == aiohttp.WSMsgType.TEXT:
                self.stats.bytes[topic] += len(message.data.encode())
            else:
                break
            self.stats.messages[topic] += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perfd.demo.viewer", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the demo app's base URL")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between REST polls")
    parser.add_argument("--include-sensor", action="store_true", help="also subscribe to the raw sensor topic")
    parser.add_argument("--stats", help="write the final counters here as JSON")
    args = parser.parse_args(argv)
    viewer = Viewer(args.url, args.poll_interval, args.include_sensor)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await viewer.run(stop)

    try:
        asyncio.run(run())
    except (aiohttp.ClientError, OSError) as e:
        print(f"viewer: {e}", file=sys.stderr)
        return 1
    finally:
        result = json.dumps(viewer.stats.as_dict())
        if args.stats:
            with open(args.stats, "w") as f:
                f.write(result)
        print("VIEWER", result, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
