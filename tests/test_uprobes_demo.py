"""Acceptance against the demo LiDAR server: over a 30 s window, per-op call
counts and mean durations from uprobes equal the demo's in-process ground
truth (its timer around every Open3D call), with bcc and with tracefs.

Until DAG attribution is wired in (the sampler's thread -> node-call map),
perfd reports the demo's calls under the unattributed pseudo node, so the
comparison is per op, summed over the nodes that run it.

Durations: a uprobe times the C++ function; the demo's timer is around the
Python call, so it also holds the pybind argument/result conversion and — the
big one — the GIL hand-off when the event loop asked for the GIL while the op
ran (the worker drops it right after the call returns and waits for it before
reading its clock). Both only ever make the truth longer. Within ±5% / ±0.2 ms
is the acceptance bar and is checked when perfd reads *above* the truth; a
reading below it may be up to 10% lower (the hand-off measured on a loaded
2-core host was 0.1-0.7 ms, 1-7%).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import psutil
import pytest

from conftest import require
from demo_helpers import demo_factory  # noqa: F401 — fixture
from perfd.registry import Registry
from perfd.uprobes import UNATTRIBUTED, UprobeSource, check_backends
from perfd.uprobes.aggregate import ROLLING_CALLS

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

WINDOW_S = 30.0
QUIET_S = 1.5  # > a frame's trip through the DAG + attribution settle (0.25 s) + drain (0.1 s) + publish (0.2 s)
_WORKS = {c.backend: c for c in check_backends()}


def truth_totals(metrics: dict) -> tuple[dict[str, tuple[int, float]], dict[str, int]]:
    """Ground truth per op: (calls, total ms) summed over nodes; and how many nodes run each op."""
    totals: dict[str, tuple[int, float]] = {}
    nodes: dict[str, int] = {}
    for node in metrics["dag"]["nodes"]:
        for op, m in (node.get("open3d_ops") or {}).items():
            calls, total = totals.get(op, (0, 0.0))
            totals[op] = (calls + m["calls"], total + m["avg_ms"] * m["calls"])
            nodes[op] = nodes.get(op, 0) + 1
    return totals, nodes


def perfd_totals(source: UprobeSource) -> dict[str, tuple[int, float]]:
    source.flush()
    out: dict[str, tuple[int, float]] = {}
    for node_ops in source.aggregator.totals().values():
        for op, t in node_ops.items():
            calls, total = out.get(op, (0, 0.0))
            out[op] = (calls + t.calls, total + t.total_ns / 1e6)
    return out


def read_both(demo, source) -> tuple[dict, dict, dict]:
    """Ground truth and perfd as close together in time as two reads allow."""
    mine = perfd_totals(source)
    truth, nodes = truth_totals(demo.get_json("/api/metrics"))
    return truth, nodes, mine


@pytest.mark.parametrize("backend", ["bcc", "tracefs"])
def test_demo_ops_match_ground_truth_over_30s(demo_factory, backend):  # noqa: F811
    check = _WORKS[backend]
    require(f"uprobes backend {backend}", check.works, check.detail)
    demo = demo_factory(hz=10, points=65_536, clients=1, wait_for_frames=5)
    with UprobeSource(demo.pid, Registry(), backend=backend) as source:
        assert source.backend is not None and source.backend.name == backend
        time.sleep(1.0)  # calls in flight at attach have settled
        truth0, _, mine0 = read_both(demo, source)
        status0 = source.status()
        time.sleep(WINDOW_S)
        truth1, nodes, mine1 = read_both(demo, source)
        status1 = source.status()
        by_node = source.ops_by_node()
    assert set(by_node) == {UNATTRIBUTED}
    # Returns are attached before entries, so a call entering between the two
    # returns unmatched; that may happen at attach, never in the window.
    assert status1.unmatched_returns == status0.unmatched_returns
    assert status1.abandoned_entries == status0.abandoned_entries
    ops = set(truth1)
    assert ops >= {"voxel_down_sample", "remove_statistical_outlier", "segment_plane", "select_by_index",
                   "cluster_dbscan"}
    assert set(mine1) == ops  # nested SelectByIndex inside remove_statistical_outlier is not an op of its own
    rows = []
    for op in sorted(ops):
        t_calls = truth1[op][0] - truth0.get(op, (0, 0.0))[0]
        t_ms = truth1[op][1] - truth0.get(op, (0, 0.0))[1]
        p_calls = mine1[op][0] - mine0.get(op, (0, 0.0))[0]
        p_ms = mine1[op][1] - mine0.get(op, (0, 0.0))[1]
        rows.append((op, p_calls, t_calls, p_ms / max(1, p_calls), t_ms / max(1, t_calls)))
    report = "\n".join(f"{op}: calls {pc} vs truth {tc}, avg {pa:.3f} vs truth {ta:.3f} ms" for op, pc, tc, pa, ta in rows)
    print(f"\n[{backend}]\n{report}")
    for op, p_calls, t_calls, p_avg, t_avg in rows:
        assert t_calls >= WINDOW_S, report  # the demo really processed frames all along
        assert abs(p_calls - t_calls) <= nodes[op], report  # ±1 per node at each read
        assert p_avg - t_avg <= max(0.05 * t_avg, 0.2), report  # never longer than the call around it
        assert t_avg - p_avg <= max(0.10 * t_avg, 0.2), report  # shorter only by the hand-off


def _node_ops(snap: dict) -> dict[tuple[str, str], tuple[int, float]]:
    """(node id, op) -> (calls, avg_ms)."""
    return {(n["node_id"], op): (m["calls"], m["avg_ms"])
            for n in snap["dag"]["nodes"] for op, m in (n.get("open3d_ops") or {}).items()}


@contextmanager
def sensor_paused(demo):  # noqa: ANN001 - demo_helpers.Demo
    """No new frames for a moment: the demo's sensor *process* (not the server
    perfd watches) is stopped until the pipeline has drained and perfd has
    placed and published every op call, so both sides can be read at rest."""
    sensor = next(p for p in psutil.Process(demo.pid).children() if "spawn_main" in " ".join(p.cmdline()))
    sensor.suspend()
    try:
        time.sleep(QUIET_S)
        yield
    finally:
        sensor.resume()


def _unattributed(snap: dict) -> dict[str, int]:
    """op -> calls counted under the unattributed pseudo node."""
    return {op: m["calls"] for op, m in (snap["perfd"].get("open3d_unattributed") or {}).items()}


def _truth_mean_of_last(reads: list[dict], key: tuple[str, str], n: int) -> float | None:
    """Ground truth's mean over (about) its last ``n`` calls of ``key`` — what
    perfd's rolling ``avg_ms`` covers — from its since-start means read once a second."""
    calls1, avg1 = reads[-1][key]
    for read in reversed(reads[:-1]):
        calls0, avg0 = read.get(key, (0, 0.0))
        if calls1 - calls0 >= n:
            return (avg1 * calls1 - avg0 * calls0) / (calls1 - calls0)
    return None


@pytest.mark.parametrize("backend", ["bcc", "tracefs"])
def test_demo_ops_are_attributed_to_the_nodes_that_ran_them(demo_factory, backend):  # noqa: F811
    """A full ``perfd attach``: each op call goes to the node whose call ran it.

    Both backends read the node off the calling thread's Python frames as the
    op begins (bcc walks them in the probe; tracefs fetches them from the GIL
    holder, the caller): per node and op, calls equal the truth (±1 per read)
    and ``avg_ms`` (the last 60 calls) agrees with the truth's mean over its
    last 60 calls, within the per-op bars above; nothing is misplaced, and
    what is not placed is counted under the unattributed pseudo node, never
    lost (placed + unattributed = truth per op).
    """
    from perfd_process import PerfdServer

    check = _WORKS[backend]
    require(f"uprobes backend {backend}", check.works, check.detail)
    demo = demo_factory(hz=10, points=65_536, clients=1, wait_for_frames=5)
    with PerfdServer(demo.pid, "--no-capture", "--uprobes-backend", backend) as server:
        time.sleep(5.0)
        with sensor_paused(demo):  # both sides read at rest: no call is counted on one side only
            truth_reads = [_node_ops(demo.get_json("/api/metrics"))]
            ours0_snap = server.get_json("/api/metrics")[1]
        ours0 = _node_ops(ours0_snap)
        deadline = time.monotonic() + WINDOW_S
        while time.monotonic() < deadline:
            time.sleep(1.0)
            truth_reads.append(_node_ops(demo.get_json("/api/metrics")))
        with sensor_paused(demo):
            truth_reads.append(_node_ops(demo.get_json("/api/metrics")))
            snap = server.get_json("/api/metrics")[1]
        ours1 = _node_ops(snap)
    truth = {k: v[0] - truth_reads[0].get(k, (0, 0.0))[0] for k, v in truth_reads[-1].items()}
    ours = {k: v[0] - ours0.get(k, (0, 0.0))[0] for k, v in ours1.items()}
    misplaced = {k: v for k, v in ours.items() if k not in truth and v}
    report = "\n".join(f"{k}: {ours.get(k, 0)} vs truth {v}" for k, v in sorted(truth.items()))
    report += "\nmisplaced: " + ", ".join(f"{k}: {v}" for k, v in sorted(misplaced.items()))
    report += f"\nattributed by: {snap['perfd'].get('open3d_attribution')}"
    print(f"\n[{backend}]\n" + report)
    assert not misplaced, report
    for key, want in truth.items():
        assert abs(ours.get(key, 0) - want) <= 1, report
        t_avg, p_avg = _truth_mean_of_last(truth_reads, key, ROLLING_CALLS), ours1[key][1]
        line = f"{key}: avg {p_avg:.3f} vs truth {t_avg:.3f} ms\n{report}"
        assert p_avg - t_avg <= max(0.05 * t_avg, 0.2), line
        assert t_avg - p_avg <= max(0.10 * t_avg, 0.2), line
    unplaced0, unplaced1 = (_unattributed(ours0_snap), _unattributed(snap))
    for op in {op for _, op in truth}:
        total = sum(v for (_, o), v in truth.items() if o == op)
        placed = sum(v for (_, o), v in ours.items() if o == op)
        unplaced = unplaced1.get(op, 0) - unplaced0.get(op, 0)
        assert abs(placed + unplaced - total) <= len({n for n, o in truth if o == op}), (op, placed, unplaced, total)
