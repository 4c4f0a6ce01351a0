"""Acceptance against the demo LiDAR server's own in-process ground truth (SPEC §5).

The demo (FastAPI + uvicorn, permessage-deflate negotiated with its aiohttp
viewers) counts every WebSocket send and times every ``/api/`` request in
process; perfd sees only packets. Capture starts first, then two viewers
subscribe; over a 60 s window (≥ 40 s) the deltas of both must agree.

Endpoint latency. perfd measures it on the wire (request's last byte in →
response's first byte out, SPEC §1), which includes the time a request waits
in the socket before the server reads it. The demo's ground truth starts its
clock when the server has read the request's bytes (``perfd.demo.metrics.arrival``),
so per request the two differ by the kernel's wakeup of the event loop
plus whatever kept the loop from reading: an Open3D op holding the GIL, a
frame being sent — a few requests in sixty wait milliseconds that only the
wire sees. Inside the issue's bound (±20% or ±1 ms), asserted per endpoint.
This test's own ground-truth reads go over one keep-alive connection, as a
dashboard's polls do: a new connection per read would add an accept to each
read's unseen wait. perfd's number is also held to what it claims to be: an
independent client process that times its own requests (wall clock before
``send`` → kernel receive timestamp of the first response byte) must agree
with it within the same bound.
"""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import sys
import time

import pytest

from conftest import TARGETS, require
from demo_helpers import demo_factory  # noqa: F401 - fixture
from perfd.capture.source import CaptureSource
from perfd.doctor import check_af_packet, check_setns
from perfd.registry import Registry
from perfd.snapshot import TargetStatus

pytestmark = [pytest.mark.privileged, pytest.mark.slow]
WINDOW_S = 60.0  # ≥ 40 s; 60 s keeps ±0.5% above the ±1-message quantisation at each end of the window
PUBLISH_LAG_S = 0.07  # perfd's numbers trail the wire by ~half its publish period plus the ring's block timeout


def start_viewer(url: str) -> subprocess.Popen:
    viewer = subprocess.Popen([sys.executable, "-m", "perfd.demo.viewer", "--url", url, "--poll-interval", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert viewer.stdout.readline().startswith("READY")
    return viewer


def perfd_view(registry: Registry) -> dict:
    snap = registry.snapshot()
    return {
        "ws": {k: v.model_dump() for k, v in snap.websocket.topics.items()},
        "total_connections": snap.websocket.total_connections,
        "endpoints": {(e.method, e.path): e.model_dump() for e in snap.endpoints},
    }


class TruthReader:
    """``GET /api/metrics`` over one keep-alive connection (opened again if the
    server closed it: uvicorn drops a connection idle for 5 s)."""

    def __init__(self, demo) -> None:  # noqa: ANN001 - tests' Demo
        self.conn = http.client.HTTPConnection("127.0.0.1", demo.spec.app_port, timeout=5)

    def get(self) -> dict:
        for attempt in range(2):
            try:
                self.conn.request("GET", "/api/metrics")
                response = self.conn.getresponse()
                break
            except (http.client.RemoteDisconnected, ConnectionError):
                self.conn.close()
                if attempt:
                    raise
        assert response.status == 200
        return json.loads(response.read())


def truth_view(truth: TruthReader) -> dict:
    m = truth.get()
    return {
        "ws": m["websocket"]["topics"],
        "total_connections": m["websocket"]["total_connections"],
        "endpoints": {(e["method"], e["path"]): e for e in m["endpoints"]},
    }


def test_demo_two_viewers_40s_matches_ground_truth(demo_factory) -> None:  # noqa: F811
    require("AF_PACKET", lambda: check_af_packet().ok)
    require("setns", lambda: check_setns(None).ok)
    demo = demo_factory(clients=0)
    registry = Registry()
    registry.attach(TargetStatus(pid=demo.pid, python="3", exe=sys.executable, attached_at=time.time()))
    source = CaptureSource(demo.pid, registry)
    truth = TruthReader(demo)
    t_attach = truth_view(truth)  # no viewer yet: WebSocket totals start together; endpoints count from here
    source.start()
    viewers = [start_viewer(demo.url) for _ in range(2)]
    # viewers ask for /api/topics only at start: its last 60 calls will be the probe's alone
    probe = subprocess.Popen([sys.executable, str(TARGETS / "capture_latency_probe.py"), str(demo.spec.app_port),
                              "/api/topics", "0.4", str(int(WINDOW_S / 0.45))], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(3.0)  # every subscription settled, rate windows filled
        rates_truth: dict[str, list[float]] = {}
        rates_perfd: dict[str, list[float]] = {}
        end = time.monotonic() + WINDOW_S
        while time.monotonic() < end:
            time.sleep(1.0)
            t, p = truth_view(truth), perfd_view(registry)
            for topic, v in t["ws"].items():
                rates_truth.setdefault(topic, []).append(v["messages_per_sec"])
                rates_perfd.setdefault(topic, []).append(p["ws"].get(topic, {}).get("messages_per_sec", 0.0))
        t_live, p_live = truth_view(truth), perfd_view(registry)
        probe_ms = json.loads(probe.communicate(timeout=60)[0])
    finally:
        probe.kill()
        for v in viewers:
            v.terminate()
            v.wait(10)
    try:
        time.sleep(1.5)  # traffic has stopped: both sides settle, totals become comparable exactly
        t_end, p_end = truth_view(truth), perfd_view(registry)
        status = source.status()
    finally:
        source.stop()

    assert status.kernel_drops == 0 and status.lost_bytes == 0, status
    assert status.compressed_at_wire_size == 0, status  # permessage-deflate was inflated
    for topic, v in t_live["ws"].items():
        assert p_live["ws"][topic]["active_connections"] == v["active_connections"] == 2, topic
        rt, rp = statistics.mean(rates_truth[topic]), statistics.mean(rates_perfd[topic])
        print(f"{topic}: messages/s truth {rt:.2f} perfd {rp:.2f}")
        assert abs(rp - rt) <= 0.05 * rt, (topic, rt, rp)
    assert p_live["total_connections"] == t_live["total_connections"] == 2 * len(t_live["ws"])
    for topic, v in t_end["ws"].items():
        dm_t = v["total_messages"] - t_attach["ws"].get(topic, {}).get("total_messages", 0)
        db_t = v["total_bytes"] - t_attach["ws"].get(topic, {}).get("total_bytes", 0)
        got = p_end["ws"].get(topic, {"total_messages": 0, "total_bytes": 0})
        print(f"{topic}: messages truth {dm_t} perfd {got['total_messages']}; "
              f"bytes truth {db_t} perfd {got['total_bytes']}")
        assert dm_t > 0
        assert abs(got["total_messages"] - dm_t) <= 0.005 * dm_t, topic
        assert abs(got["total_bytes"] - db_t) <= 0.005 * db_t, topic
    assert p_end["total_connections"] == 0

    latency_checked: list[tuple[str, str]] = []
    for key, e in t_end["endpoints"].items():
        calls_t = e["calls_total"] - t_attach["endpoints"].get(key, {}).get("calls_total", 0)
        if calls_t == 0:
            continue
        assert key in p_end["endpoints"], key
        e_p = p_end["endpoints"][key]
        print(f"{key}: calls truth {calls_t} perfd {e_p['calls_total']}; avg latency middleware "
              f"{e['avg_latency_ms']:.3f} ms, perfd (wire) {e_p['avg_latency_ms']:.3f} ms")
        assert abs(e_p["calls_total"] - calls_t) <= 2, (key, calls_t, e_p["calls_total"])
        assert e_p["last_status_code"] == e["last_status_code"], key
        if calls_t >= 60:  # both rolling means are over the same 60 requests
            latency_checked.append(key)
            assert abs(e_p["avg_latency_ms"] - e["avg_latency_ms"]) <= max(1.0, 0.2 * e["avg_latency_ms"]), key
    assert ("GET", "/api/topics") in latency_checked
    # the last 60 calls of /api/topics are all the probe's: same population on both sides
    client_ms = statistics.mean(probe_ms[-60:])
    wire_ms = p_end["endpoints"][("GET", "/api/topics")]["avg_latency_ms"]
    print(f"/api/topics: client (kernel rx timestamp) {client_ms:.3f} ms, perfd {wire_ms:.3f} ms, "
          f"middleware {t_end['endpoints'][('GET', '/api/topics')]['avg_latency_ms']:.3f} ms")
    assert len(probe_ms) >= 60
    assert abs(wire_ms - client_ms) <= max(1.0, 0.2 * client_ms)
