"""Capture of a target living in its own network namespace, on loopback and on a real (veth) link.

The target is started under ``unshare --net``; clients run inside namespaces
with ``nsenter``. perfd stays in its own namespace: the packet socket is
opened from a helper thread that enters the target's. Nothing here touches the
host's namespace: the veth pair joins two throwaway namespaces.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import TARGETS, Target, require, wait_for
from perfd.capture.source import CaptureSource
from perfd.doctor import check_af_packet, check_setns
from perfd.registry import Registry
from perfd.snapshot import TargetStatus

pytestmark = pytest.mark.privileged
PORT = 8765


def thread_netns() -> set[int]:
    """Network namespace inode of every thread of this (perfd's) process."""
    return {os.stat(f"/proc/self/task/{t}/ns/net").st_ino for t in os.listdir("/proc/self/task")}


@pytest.fixture
def netns_tools():
    require("AF_PACKET", lambda: check_af_packet().ok)
    require("setns", lambda: check_setns(None).ok)
    for tool in ("unshare", "nsenter", "ip"):
        require(tool, shutil.which(tool) is not None)


def in_netns(pid: int, *argv: str, timeout: float = 60) -> str:
    out = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", *argv], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout


def start_target(*server_args: str, setup: str = "ip link set lo up") -> Target:
    script = f"{setup} && exec {sys.executable} {TARGETS / 'capture_server.py'} {PORT} {' '.join(server_args)}"
    return Target(["unshare", "--net", "sh", "-c", script])


def viewer(ns_pid: int, url: str, rate: float, seconds: float, size: int) -> tuple[int, int]:
    out = in_netns(ns_pid, sys.executable, str(TARGETS / "capture_load_client.py"), url, str(rate), str(seconds),
                   str(size)).split()
    return int(out[1]), int(out[2])


def api_call(ns_pid: int, url: str) -> None:
    in_netns(ns_pid, sys.executable, "-c", f"import urllib.request as u; u.urlopen({url!r}).read()")


def truth(ns_pid: int, host: str) -> dict:
    return json.loads(in_netns(ns_pid, sys.executable, "-c",
                               f"import urllib.request as u; print(u.urlopen('http://{host}:{PORT}/truth').read().decode())"))


def capture(pid: int) -> tuple[Registry, CaptureSource]:
    registry = Registry()
    registry.attach(TargetStatus(pid=pid, python="3", exe=sys.executable, attached_at=time.time()))
    source = CaptureSource(pid, registry, publish_hz=10)
    return registry, source


def settled(registry: Registry, want: dict) -> bool:
    """Every WebSocket total and every ``/api/`` endpoint of the target's truth has been counted.

    Each is awaited: packets sit in the capture ring until their block retires, so the
    API call's block may be handed over after the WebSocket traffic that preceded it.
    """
    snap = registry.snapshot()
    topics = snap.websocket.topics
    counted = {f"{e.method} {e.path}": e.calls_total for e in snap.endpoints}
    return all(
        (t := topics.get(name)) is not None and (t.total_messages, t.total_bytes) == (v["messages"], v["bytes"])
        for name, v in want["ws"].items()
    ) and all(counted.get(key) == v["calls"] for key, v in want["api"].items())


def test_target_in_its_own_namespace_loopback_v4_v6(netns_tools) -> None:
    own = thread_netns()
    with start_target() as target:
        assert os.stat(f"/proc/{target.pid}/ns/net").st_ino not in own
        registry, source = capture(target.pid)
        source.start()
        try:
            assert thread_netns() == own  # the helper thread came back (or is gone)
            viewer(target.pid, f"ws://127.0.0.1:{PORT}/ws/v4", 2e6, 1.0, 10_000)
            viewer(target.pid, f"ws://[::1]:{PORT}/ws/v6", 2e6, 1.0, 10_000)
            api_call(target.pid, f"http://[::1]:{PORT}/api/items/3")
            want = truth(target.pid, "127.0.0.1")
            wait_for(lambda: settled(registry, want), 5)
            eps = {(e.method, e.path): e for e in registry.snapshot().endpoints}
            assert eps[("GET", "/api/items/3")].calls_total == 1
            assert source.status().ports == [PORT]
        finally:
            source.stop()
        assert thread_netns() == own


VETH_SETUP = (
    "ip link set lo up && ip link add va type veth peer name vb netns {peer} && "
    "ip addr add 10.99.0.1/24 dev va && ip addr add fd00:99::1/64 dev va nodad && ip link set va up"
)


def test_real_link_keeps_both_directions_once(netns_tools) -> None:
    """On a veth link the server's packets are 'outgoing' and must be kept (only loopback's copies are dropped)."""
    peer = subprocess.Popen(["unshare", "--net", "sleep", "120"])
    try:
        wait_for(lambda: os.stat(f"/proc/{peer.pid}/ns/net").st_ino not in thread_netns(), 5)
        with start_target("any", setup=VETH_SETUP.format(peer=peer.pid)) as target:
            in_netns(peer.pid, "sh", "-c", "ip link set lo up && ip addr add 10.99.0.2/24 dev vb && "
                                           "ip addr add fd00:99::2/64 dev vb nodad && ip link set vb up")
            registry, source = capture(target.pid)
            source.start()
            try:
                viewer(peer.pid, f"ws://10.99.0.1:{PORT}/ws/veth4", 4e6, 1.0, 30_000)
                viewer(peer.pid, f"ws://[fd00:99::1]:{PORT}/ws/veth6", 4e6, 1.0, 30_000)
                for _ in range(3):
                    api_call(peer.pid, f"http://10.99.0.1:{PORT}/api/slow?ms=5")
                want = truth(peer.pid, "10.99.0.1")
                wait_for(lambda: settled(registry, want), 5)
                eps = {(e.method, e.path): e for e in registry.snapshot().endpoints}
                assert eps[("GET", "/api/slow")].calls_total == 3
                time.sleep(1.1)
                st = source.status()
                assert st.lost_bytes == 0 and st.kernel_drops == 0
                # each packet is taken once: a doubled capture would make every other segment a duplicate;
                # the odd real TCP retransmission is allowed
                assert st.duplicate_segments <= st.packets // 50
            finally:
                source.stop()
    finally:
        peer.kill()
        peer.wait()
