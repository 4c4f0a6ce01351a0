"""DAG reconstruction against the demo's in-process ground truth (issue: per-node metrics).

A real demo, a real ``perfd attach`` process, ≥ 30 s windows compared as
deltas. Marked slow: each test takes most of a minute.
"""

from __future__ import annotations

import time

import pytest

from conftest import require, wait_for
from dag_compare import record, table
from demo_helpers import demo_factory  # noqa: F401 - fixture
from perfd.uprobes import check_backends
from perfd_process import PerfdServer, validate

pytestmark = pytest.mark.slow


def _attach(demo, *extra: str) -> PerfdServer:
    server = PerfdServer(demo.pid, "--no-capture", *extra)

    def warmed() -> bool:
        status, snap = server.get_json("/api/metrics")
        return status == 200 and sum(1 for n in snap["dag"]["nodes"] if n["calls_total"] > 0) >= 3

    wait_for(warmed, timeout=30, interval=0.5)
    return server


def _window(demo, server: PerfdServer, seconds: float):
    return record(lambda: demo.get_json("/api/metrics"), lambda: server.get_json("/api/metrics")[1], seconds)


def _counter_drops(server: PerfdServer, seconds: float) -> list[tuple[str, int, int]]:
    """calls_total is a counter (Prometheus takes its rate): polled as fast as
    perfd answers, every time a node's went down — (node, before, after)."""
    last: dict[str, int] = {}
    drops = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for n in server.get_json("/api/metrics")[1]["dag"]["nodes"]:
            if n["calls_total"] < last.get(n["node_id"], 0):
                drops.append((n["node_name"], last[n["node_id"]], n["calls_total"]))
            last[n["node_id"]] = n["calls_total"]
    return drops


def test_default_demo_at_250hz(demo_factory, snapshot_schema):  # noqa: F811
    # the calls too short for the call tracker are timed from, and their
    # last_point_count read by, the Open3D op probe (points: with bcc only)
    check = next(c for c in check_backends() if c.backend == "bcc")
    require("uprobes backend bcc", check.works, check.detail)
    demo = demo_factory(clients=1)
    with _attach(demo) as server:
        window = _window(demo, server, 30)
        validate(window.pairs[-1][1], snapshot_schema)
        drops = _counter_drops(server, 3.0)
    rows = [r for r in window.compare() if r.gt_calls > 0]
    print("\n" + table(rows))
    assert len(rows) >= 5
    for r in rows:
        assert (r.name, r.node_type) == (r.gt_name, r.gt_type)
        assert abs(r.calls_error) <= 0.03 or abs(r.calls - r.gt_calls) <= 1, r
        assert abs(r.pps_error) <= 0.10, r
        assert r.throttled_diff <= 1 and r.queue_diff <= 1, r
        assert r.points_equal_share >= 0.90, r
        # every node, also the plane leaf whose shortest calls the tracker misses
        # (0.88-0.95 of them seen): those are placed from their Open3D ops
        assert abs(r.avg_error) <= 0.10, r
        assert r.coverage is not None, r
    gt, snap = window.pairs[-1]
    assert snap["dag"]["total_nodes"] == gt["dag"]["total_nodes"]
    assert snap["system"]["thread_count"] >= 2  # Python threads, from the interpreter's list
    assert "OS threads" not in (snap["perfd"]["sources"]["system"]["reason"] or "")
    tracking = snap["perfd"]["call_tracking"]
    assert tracking["achieved_hz"] > 0 and tracking["max_gap_ms"] is not None, tracking
    assert isinstance(tracking["unplaced_op_groups"], int) and tracking["unplaced_op_groups"] >= 0, tracking
    assert not drops, drops
    # seen + placed from ops: never more than happened, in any snapshot (the
    # +1: a call already running at attach is seen, but not in the counters' delta)
    for _, snap in window.pairs:
        for node, c in (snap["perfd"].get("dag_calls") or {}).items():
            assert c["observed_calls"] + c["placed_from_ops"] <= c["exact_calls"] + 1, (node, c)
            # coverage is the seen share, published to 3 decimals (173/172 -> 1.006)
            if c["exact_calls"]:
                assert c["coverage"] == round(c["observed_calls"] / c["exact_calls"], 3), (node, c)
            else:
                assert c["coverage"] is None, (node, c)


def test_a_long_node_is_exact_and_a_short_one_is_never_silently_undercounted(demo_factory):  # noqa: F811
    # few points: the plane segmentation leaf takes well under a millisecond;
    # the clustering leaf sleeps 300 ms on top of its work
    demo = demo_factory(points=1024, node_delays=("Object Clustering=300:sleep",), hz=5)
    with _attach(demo, "--rate", "250") as server:
        window = _window(demo, server, 30)
    rows = {r.gt_name: r for r in window.compare()}
    print("\n" + table(list(rows.values())))
    long, short = rows["Object Clustering"], rows["Ground Plane Segmentation"]
    assert long.gt_avg_ms > 250
    assert abs(long.avg_error) <= 0.05, long
    assert short.gt_avg_ms < 5
    # the short one: exact from app state, and its coverage is reported
    assert abs(short.calls - short.gt_calls) <= 1, short
    assert short.coverage is not None


@pytest.mark.parametrize("shape", [{"chain": 12}, {"fanout": 3}], ids=["chain12", "fanout3"])
def test_nesting_semantics(demo_factory, shape):  # noqa: F811
    demo = demo_factory(points=16384, **shape)
    with _attach(demo) as server:
        window = _window(demo, server, 20)
    rows = [r for r in window.compare() if r.gt_calls > 0]
    print("\n" + table(rows))
    for r in rows:
        assert abs(r.calls - r.gt_calls) <= max(1, 0.03 * r.gt_calls), r
        assert r.coverage is not None  # how many calls were timed is always reported
        # nodes whose calls the tracker sees (nearly) all of are timed like the
        # others; deep, short nodes of a long chain are counted exactly and
        # reported with their coverage instead. On this chain perfd's means read
        # 2-7% low even at 0.97-0.99 coverage (cause not found yet), and mid-chain
        # nodes at 0.90-0.94 coverage read -15%/-16% in two full-suite runs.
        if r.coverage >= 0.95:
            assert abs(r.avg_error) <= 0.15 or abs(r.avg_ms - r.gt_avg_ms) < 1.0, r
    # a parent's time includes its children's, on both sides
    gt_order = sorted(rows, key=lambda r: r.gt_avg_ms)
    ours_order = sorted(rows, key=lambda r: r.avg_ms)
    assert [r.node_id for r in gt_order][-1] == [r.node_id for r in ours_order][-1]


def test_queue_depth_and_throttle_follow_the_app(demo_factory):  # noqa: F811
    # more frames than the pipeline can take: the sensor queue fills
    demo = demo_factory(hz=80, points=65536)
    with _attach(demo) as server:
        wait_for(lambda: demo.get_json("/api/metrics")["system"]["queue_depth"] > 300, timeout=30, interval=0.5)
        deadline = time.monotonic() + 15
        agree = total = 0
        while time.monotonic() < deadline:
            gt = demo.get_json("/api/metrics")
            snap = server.get_json("/api/metrics")[1]
            total += 1
            agree += abs(snap["system"]["queue_depth"] - gt["system"]["queue_depth"]) <= 1
            time.sleep(0.5)
        assert gt["system"]["queue_depth"] > 5, "the demo should be backed up at 80 Hz"
    assert agree / total >= 0.9, (agree, total)
