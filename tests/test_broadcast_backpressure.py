"""The WebSocket push under hostile conditions: stuck readers and many readers.

perfd's server runs in its own process over real sockets. For the stuck
readers its DAG section is inflated so that a client that never reads fills
its socket buffers within seconds.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import threading
import time

import aiohttp
import psutil
import pytest

from conftest import TARGETS
from perfd_process import PerfdServer, text_frames

BIG_NODES = 1500  # ~0.4 MB per frame: a reader that stops fills its socket buffers in ~2 s


def _mute_client(url: str) -> socket.socket:
    host, port = url.removeprefix("ws://").split("/")[0].split(":")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(port)))
    s.sendall(
        b"GET /ws/system_metrics HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    return s


def test_a_stuck_client_never_delays_the_others():
    """perfd's server in its own process; three readers that never read, one that does."""
    hz, seconds, stall_limit = 5.0, 10.0, 1.5
    server = subprocess.Popen([sys.executable, str(TARGETS / "big_snapshot_server.py"), str(hz), str(BIG_NODES),
                               str(stall_limit)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().split()[1])
        counts: list[str] = []  # the server's client count, every 0.2 s
        threading.Thread(target=lambda: counts.extend(line.strip() for line in server.stdout), daemon=True).start()
        url = f"ws://127.0.0.1:{port}/ws/system_metrics"
        mutes = [_mute_client(url) for _ in range(3)]
        rss_before = psutil.Process(server.pid).memory_info().rss
        arrivals = asyncio.run(_read_frames(url, seconds))
        rss_after = psutil.Process(server.pid).memory_info().rss
        while_reading = list(counts)
        for s in mutes:
            s.close()
    finally:
        server.kill()
        server.wait()
    gaps = [b - a for a, b in zip(arrivals[5:], arrivals[6:])]
    period = 1 / hz
    assert len(arrivals) >= 0.8 * seconds * hz, len(arrivals)
    # frames keep their pace, and no gap exceeds two periods plus scheduling noise
    # on a shared host; a broadcaster waiting on a stuck reader would stall for
    # the whole stall limit (1.5 s) instead
    assert statistics.median(gaps) == pytest.approx(period, abs=0.05)
    assert max(gaps) < 2 * period + 0.25, max(gaps)
    # the stuck readers were dropped once stuck for the stall limit; the reading one kept
    assert "CLIENTS 4" in while_reading and while_reading[-1] == "CLIENTS 1", while_reading
    # frames for the stuck readers were replaced, not queued: memory stays bounded
    assert rss_after - rss_before < 50 * 2**20


async def _read_frames(url: str, seconds: float) -> list[float]:
    arrivals: list[float] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, max_msg_size=0) as ws:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                msg = await ws.receive(timeout=2.0)
                assert msg.type == aiohttp.WSMsgType.TEXT
                arrivals.append(time.monotonic())
    return arrivals


@pytest.mark.slow
def test_hundred_clients_at_4hz(spawn):
    """100 real clients against a real ``perfd attach`` process: all fed, RSS bounded."""
    target = spawn("idle.py", version="3.12")
    hz, seconds, clients = 4.0, 10.0, 100
    counts = [0] * clients

    async def client(i: int, session: aiohttp.ClientSession, url: str) -> None:
        async with session.ws_connect(url) as ws:
            async for _ in text_frames(ws, seconds):
                counts[i] += 1

    async def run(url: str) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await asyncio.gather(*(client(i, session, url) for i in range(clients)))

    with PerfdServer(target.pid, "--broadcast-hz", str(hz)) as server:
        perfd = psutil.Process(server.proc.pid)
        rss_before = perfd.memory_info().rss
        asyncio.run(run(server.ws_url + "/ws/system_metrics"))
        grown = perfd.memory_info().rss - rss_before
    assert min(counts) >= int(hz * seconds * 0.9), sorted(counts)[:5]
    assert grown < 50 * 2**20, grown
