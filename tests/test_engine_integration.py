"""The sources working together on the demo, as `perfd attach` runs them."""

from __future__ import annotations

import os
import signal
import time

import pytest

from conftest import wait_for
from demo_helpers import demo_factory  # noqa: F401 - fixture
from perfd_process import PerfdServer

pytestmark = pytest.mark.slow


def test_viewers_connected_before_attach_get_their_topics_from_app_state(demo_factory):  # noqa: F811
    demo = demo_factory(clients=1, points=16384)  # the viewer subscribes before perfd exists
    gt_topics = demo.get_json("/api/metrics")["websocket"]["topics"]
    with PerfdServer(demo.pid) as server:
        def topics() -> dict:
            return server.get_json("/api/metrics")[1]["websocket"]["topics"]

        def named() -> bool:
            t = topics()
            return all(t.get(name, {}).get("active_connections") == 1 and t[name]["total_messages"] > 0
                       for name in gt_topics)

        wait_for(named, timeout=20, interval=0.5)
        status, health = server.get_json("/api/health/performance")
        sources = health["perfd"]["sources"]
        assert all(sources[name]["active"] for name in ("stacks", "uprobes", "capture", "system")), sources


def _attached_with_uprobes(demo) -> PerfdServer:  # noqa: ANN001
    server = PerfdServer(demo.pid)
    wait_for(lambda: server.get_json("/api/metrics")[1]["perfd"]["sources"]["uprobes"]["active"], timeout=30)
    return server


def test_every_source_is_stopped_on_sigterm(demo_factory):  # noqa: F811
    demo = demo_factory(clients=1, points=16384)
    with _attached_with_uprobes(demo) as server:
        rc, _ = server.terminate(timeout=60)
    assert rc == 0
    events = open("/sys/kernel/tracing/uprobe_events").read()
    assert f"perfd_{server.proc.pid}_" not in events
    assert not os.path.exists(f"/sys/kernel/tracing/instances/perfd-{server.proc.pid}-{demo.pid}")
    assert demo.get_json("/api/status")["frames_received"] > 0  # the target runs on


def test_sigterm_with_open3d_uprobes_exits_within_2s(demo_factory):  # noqa: F811
    demo = demo_factory(clients=0, points=16384)
    with _attached_with_uprobes(demo) as server:
        rc, took = server.terminate(timeout=60)
    assert rc == 0 and took < 2.0, took


def test_the_targets_exit_is_one_line_in_perfds_log_not_a_traceback(demo_factory):  # noqa: F811
    """A restarted LiDAR server is routine for a daemon: its exit is reported
    once, and nothing reading it at that moment logs a stack trace."""
    demo = demo_factory(clients=1, points=16384)
    with _attached_with_uprobes(demo) as server:
        time.sleep(2)  # app state read a few times: the publisher is mid-cycle when the target dies
        os.kill(demo.pid, signal.SIGKILL)
        wait_for(lambda: server.get("/api/metrics")[0] == 503, timeout=2)
        time.sleep(0.5)
        rc, _ = server.terminate(timeout=60)
        log = server.proc.stderr.read()
    assert rc == 0
    assert "Traceback" not in log, log
    assert f"target {demo.pid} exited" in log, log
