"""App state read from outside: queue depth via the semaphore, a second app layout."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from conftest import TARGET_VERSIONS, TARGETS, python_for, wait_for
from perfd.cpython.discovery import locate_interpreter
from perfd.cpython.paths import locate
from perfd.cpython.stacks import StackReader
from perfd.profile import load_profile
from perfd.reconstruction.app_state import AppStateReader
from perfd_process import PerfdServer


@pytest.mark.parametrize("version", TARGET_VERSIONS)
def test_multiprocessing_queue_depth_matches_qsize(version):
    proc = subprocess.Popen([python_for(version), str(TARGETS / "mp_queue.py")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        reader = StackReader(locate_interpreter(proc.pid))
        app = AppStateReader(load_profile(), reader)
        queue = locate(reader, "__main__:holder[queue]")
        assert isinstance(queue, int)
        assert app.queue_depth(queue, None) == 0
        for op, n in (("put", 7), ("put", 120), ("get", 50), ("get", 77), ("put", 500)):  # the last fills it
            proc.stdin.write(f"{op} {n}\n")
            proc.stdin.flush()
            expected = int(proc.stdout.readline())
            assert app.queue_depth(queue, None) == expected, (op, n)
        reader.close()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("version", TARGET_VERSIONS)
def test_second_app_layout_is_recognised_by_the_same_profile(tmp_path, version):
    truth_file = tmp_path / "truth.json"
    proc = subprocess.Popen([python_for(version), str(TARGETS / "lidar_app" / "run.py"), "10", "2000"],
                            stdout=subprocess.PIPE, text=True, env={"TRUTH_FILE": str(truth_file)})
    try:
        assert proc.stdout.readline().strip() == "READY"
        wait_for(truth_file.exists, timeout=10)
        with PerfdServer(proc.pid, "--no-capture", "--no-uprobes") as server:
            def nodes() -> dict:
                return {n["node_id"]: n for n in server.get_json("/api/metrics")[1]["dag"]["nodes"]}

            wait_for(lambda: nodes().get("snk-0005", {}).get("calls_total", 0) > 3, timeout=20, interval=0.3)
            first, truth0 = nodes(), json.loads(truth_file.read_text())["nodes"]
            time.sleep(10)
            last, truth1 = nodes(), json.loads(truth_file.read_text())["nodes"]
        expected = {"dec-0002": ("Decimate", "decimate"), "smo-0003": ("Smooth", "smooth"),
                    "snk-0004": ("Sink A", "sink"), "snk-0005": ("Sink B", "sink")}
        for node_id, (name, kind) in expected.items():
            n = last[node_id]
            assert (n["node_name"], n["node_type"]) == (name, kind)
            ours = n["calls_total"] - first[node_id]["calls_total"]
            theirs = truth1[node_id]["calls"] - truth0[node_id]["calls"]
            # truth is written every 5 frames: compare within that granularity
            assert abs(ours - theirs) <= max(6, 0.1 * theirs), (node_id, ours, theirs)
            assert n["last_point_count"] == truth1[node_id]["points"]
        assert last["dec-0002"]["last_point_count"] == 2000  # the payload handed to Decimate
        assert last["smo-0003"]["last_point_count"] == 1000
        # Decimate's call is its 12 ms synchronous body (seen on the loop thread's
        # stack) plus the threaded Smooth and the sinks it forwards to
        assert last["dec-0002"]["avg_exec_ms"] > last["smo-0003"]["avg_exec_ms"] + 6
        assert last["smo-0003"]["avg_exec_ms"] > 20
    finally:
        proc.kill()
        proc.wait()
