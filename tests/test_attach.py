"""``perfd attach`` end to end: a real target, a real perfd process, real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
from collections import Counter

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import TARGET_VERSIONS, python_for, wait_for
from perfd.engine import Engine
from perfd.errors import NoSuchProcess
from perfd.registry import Registry
from perfd_process import PerfdServer, run_perfd, text_frames, validate, vm_rss_mb


@pytest.fixture(params=TARGET_VERSIONS)
def attached(request, spawn):
    target = spawn("idle.py", version=request.param)
    with PerfdServer(target.pid) as server:
        server.target = target
        yield server


def test_every_route_validates_against_the_contract(attached, snapshot_schema):
    status, snap = attached.get_json("/api/metrics")
    assert status == 200
    validate(snap, snapshot_schema)
    assert snap["perfd"]["target"]["pid"] == attached.target.pid

    for prefix in ("/api", "/api/v1"):
        status, dag = attached.get_json(f"{prefix}/metrics/dag")
        assert status == 200
        validate(dag, snapshot_schema, "DagMetricsResponse")
        status, ws = attached.get_json(f"{prefix}/metrics/websocket")
        assert status == 200
        validate(ws, snapshot_schema, "WebSocketMetricsResponse")
        status, health = attached.get_json(f"{prefix}/health/performance")
        assert status == 200
        validate(health, snapshot_schema, "PerformanceHealth")
        assert health["version"] == "1.0.0"
        assert health["metrics_enabled"] is True
        assert health["system_probe_running"] is True

    status, v1 = attached.get_json("/api/v1/metrics/")
    assert status == 200
    validate(v1, snapshot_schema)
    assert set(v1) == set(snap)


def test_system_section_is_real(attached):
    _, snap = attached.get_json("/api/metrics")
    system = snap["system"]
    rss = vm_rss_mb(attached.target.pid)
    assert abs(system["memory_used_mb"] - rss) <= 0.10 * rss
    assert system["memory_total_mb"] == pytest.approx(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20, rel=0.01)
    assert system["memory_percent"] == pytest.approx(system["memory_used_mb"] / system["memory_total_mb"] * 100, rel=0.2)
    # idle.py runs the main thread and two workers
    assert system["thread_count"] >= 3
    reason = snap["perfd"]["sources"]["system"]["reason"]
    if system["thread_count"] != 3:
        assert reason and "OS threads" in reason


def test_prometheus_exposition_parses(attached):
    status, body, headers = attached.get("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["perfd_up"].samples[0].value == 1
    rss = families["perfd_system_memory_used_mb"].samples[0].value
    assert rss == pytest.approx(vm_rss_mb(attached.target.pid), rel=0.10)


async def _count_frames(url: str, seconds: float, schema: dict) -> list[dict]:
    frames = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as ws:
            async for data in text_frames(ws, seconds):
                frame = json.loads(data)
                validate(frame, schema)
                frames.append(frame)
    return frames


@pytest.mark.parametrize("hz,minimum", [(1, 2), (4, 9)])
def test_websocket_push_rate(spawn, snapshot_schema, hz, minimum):
    target = spawn("idle.py", version="3.12")
    with PerfdServer(target.pid, "--broadcast-hz", str(hz)) as server:
        for path in ("/ws/system_metrics", "/api/v1/ws/system_metrics"):
            frames = asyncio.run(_count_frames(server.ws_url + path, 2.5, snapshot_schema))
            assert len(frames) >= minimum, (path, len(frames))
            stamps = [f["timestamp"] for f in frames]
            assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def test_broadcast_rate_from_environment(spawn, snapshot_schema):
    target = spawn("idle.py", version="3.12")
    with PerfdServer(target.pid, env={"METRICS_BROADCAST_HZ": "4"}) as server:
        frames = asyncio.run(_count_frames(server.ws_url + "/ws/system_metrics", 2.5, snapshot_schema))
        assert len(frames) >= 9


def test_target_exit_turns_metrics_into_503(spawn, snapshot_schema):
    target = spawn("idle.py", version="3.13")
    with PerfdServer(target.pid) as server:
        assert server.get_json("/api/metrics")[0] == 200
        target.proc.kill()
        t0 = time.monotonic()
        wait_for(lambda: server.get("/api/metrics")[0] == 503, timeout=2.0)
        assert time.monotonic() - t0 < 2.0
        status, body = server.get_json("/api/metrics")
        assert "exited" in body["detail"]
        for route in ("/api/metrics/dag", "/api/metrics/websocket", "/api/v1/metrics/"):
            assert server.get(route)[0] == 503
        status, health = server.get_json("/api/health/performance")
        assert status == 200
        validate(health, snapshot_schema, "PerformanceHealth")
        assert health["metrics_enabled"] is False
        assert str(target.pid) in health["detail"]
        assert server.get("/metrics")[0] == 200  # Prometheus still scrapes: perfd_up 0
        assert server.proc.poll() is None


def test_a_target_killed_while_perfd_attaches_is_reported_as_exited(spawn):
    """Killed at any point of attach, the target is "exited" — never "not Python"
    or a raw OSError from whichever /proc read or ELF read it broke — and a
    failed attach leaves nothing of perfd running."""
    probe = spawn("idle.py", version="3.11")
    engine = Engine(Registry())
    t0 = time.monotonic()
    engine.attach(probe.pid)
    took = time.monotonic() - t0
    engine.detach("measured")
    before = set(threading.enumerate())
    outcomes: Counter[str] = Counter()
    for k in range(12):
        target = spawn("idle.py", version="3.11")
        engine = Engine(Registry())
        killer = threading.Timer(took * 1.2 * k / 11, os.kill, (target.pid, signal.SIGKILL))
        killer.start()
        try:
            engine.attach(target.pid)
        except NoSuchProcess as e:
            outcomes["exited"] += 1
            assert str(target.pid) in str(e) and ("exited" in str(e) or "no process" in str(e)), e
            assert not engine.registry.attached
        else:  # killed after attach finished: the watcher notices
            outcomes["attached"] += 1
            wait_for(lambda: not engine.registry.attached, timeout=2)
            assert "exited" in (engine.registry.detached_reason or "")
        finally:
            killer.join()
            target.proc.wait()
        wait_for(lambda: not [t for t in threading.enumerate() if t not in before and t.is_alive()], timeout=3)
        engine.detach("test done")
    assert outcomes["exited"] >= 3 and outcomes["attached"] >= 1, outcomes  # the kills spanned the attach


def test_sigterm_exits_zero_quickly_and_leaves_target_untouched(spawn):
    target = spawn("idle.py", version="3.11")
    server = PerfdServer(target.pid)
    with server:
        rc, took = server.terminate()
    assert rc == 0
    assert took < 2.0
    assert target.proc.poll() is None  # the target runs on
    state = open(f"/proc/{target.pid}/status").read()
    assert "TracerPid:\t0" in state
    assert "State:\tS" in state or "State:\tR" in state


def _one_line_exit_2(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("perfd: error: ")
    return lines[0]


def test_missing_pid_is_exit_2():
    line = _one_line_exit_2(run_perfd("attach", "999999999"))
    assert "no process" in line


def test_non_python_pid_is_exit_2(spawn):
    import subprocess

    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.1)
        line = _one_line_exit_2(run_perfd("attach", str(sleeper.pid)))
        assert "not a CPython process" in line
    finally:
        sleeper.kill()
        sleeper.wait()


def test_unsupported_python_is_exit_2(tmp_path):
    import subprocess

    exe = python_for("3.9")
    target = subprocess.Popen([exe, "-c", "import time; print('READY', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        target.stdout.readline()
        line = _one_line_exit_2(run_perfd("attach", str(target.pid)))
        assert "3.9" in line and "supports" in line
    finally:
        target.kill()
        target.wait()


def test_malformed_profile_is_exit_2(spawn, tmp_path):
    target = spawn("idle.py", version="3.12")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\n[state]\nnode_registry = 'm:a'\n")
    line = _one_line_exit_2(run_perfd("attach", str(target.pid), "--profile", str(bad)))
    assert "node_entry" in line


def test_port_in_use_is_exit_2(spawn):
    target = spawn("idle.py", version="3.12")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_line_exit_2(run_perfd("attach", str(target.pid), "--port", str(port)))
        assert str(port) in line


def test_non_loopback_bind_needs_a_token(spawn):
    target = spawn("idle.py", version="3.12")
    line = _one_line_exit_2(run_perfd("attach", str(target.pid), "--host", "0.0.0.0", "--port", "0"))
    assert "--token" in line
    with PerfdServer(target.pid, "--host", "0.0.0.0", "--token", "s3cret") as server:
        server.url = server.url.replace("0.0.0.0", "127.0.0.1")
        assert server.get("/api/metrics")[0] == 401
        assert server.get("/api/metrics", {"Authorization": "Bearer wrong"})[0] == 401
        assert server.get("/api/metrics", {"Authorization": "Bearer s3cret"})[0] == 200


def test_hostile_clients_do_not_disturb_others(spawn, snapshot_schema):
    target = spawn("idle.py", version="3.12")
    with PerfdServer(target.pid, "--broadcast-hz", "4") as server:
        host, port = server.url.removeprefix("http://").split(":")
        # malformed HTTP
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"\x00\xffGARBAGE / HTTP/9.9\r\n\r\n\r\n")
            s.settimeout(2)
            assert s.recv(100).startswith(b"HTTP/1.")
        # unknown routes
        status, body = server.get_json("/api/nope")
        assert status == 404 and "detail" in body

        async def scenario() -> list[dict]:
            async with aiohttp.ClientSession() as session:
                # a client that sends garbage and one that never reads
                noisy = await session.ws_connect(server.ws_url + "/ws/system_metrics")
                await noisy.send_str("{not json" * 100)
                await noisy.send_bytes(os.urandom(4096))
                mute = socket.create_connection((host, int(port)))
                mute.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                mute.sendall(
                    b"GET /ws/system_metrics HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n"
                )
                try:
                    return await _count_frames(server.ws_url + "/ws/system_metrics", 2.5, snapshot_schema)
                finally:
                    mute.close()
                    await noisy.close()

        frames = asyncio.run(scenario())
        assert len(frames) >= 9
        assert server.get("/api/health/performance")[0] == 200
