"""Does the Open3D op probe see the node calls the call tracker misses?

An in-process engine (stack sampler at 250 Hz, uprobes with bcc) attached to
the default demo; over --seconds, per node: exact calls (app-state
counters), calls the 1 kHz tracker saw, and Open3D calls of the node's own
op (the Open3D call it makes once per call; the crop node makes none) the
uprobes placed on that node. Also how all op calls were placed
(by the in-kernel frame walk, "probe_frames", or from samples). If a node's
op count equals its exact calls where the tracker's does not, every call
left a probe event that named its node — evidence a probe could carry what
the tracker misses.

The op probe also counts each call's points (the node method's ``points``
local, read as the op begins): for the op calls inside a call the tracker
saw, how often that count equals the tracker's own read of the payload; and
how long the op took inside the calls the tracker saw and the ones it missed
(if the missed calls' ops are no shorter, what makes them short to the
tracker is the rest of the call).

    .venv/bin/python bench/op_coverage.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

from perfd.demo.launcher import Demo, DemoSpec, free_port
from perfd.engine import AttachOptions, Engine
from perfd.reconstruction.dag import DagSource
from perfd.registry import Registry
from perfd.uprobes import UprobeSource

# one op per call for each demo node type (the node's main Open3D call)
OWN_OP = {"voxel_downsample": "voxel_down_sample", "outlier_removal": "remove_statistical_outlier",
          "plane_segmentation": "segment_plane", "dbscan_clustering": "cluster_dbscan"}


def reading(engine: Engine) -> tuple[dict, dict, dict]:
    status = engine.registry.perfd_status().model_dump()
    snap = engine.registry.snapshot()
    ops = {n.node_id: (n.node_name, n.node_type, {op: m.calls for op, m in (n.open3d_ops or {}).items()})
           for n in snap.dag.nodes}
    return status.get("dag_calls") or {}, ops, status.get("open3d_attribution") or {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    demo = Demo(DemoSpec(app_port=free_port(), hz=10, points=65536, clients=1)).start()
    try:
        time.sleep(3)
        engine = Engine(Registry(), AttachOptions(rate_hz=250, uprobes=True, uprobes_backend="bcc", capture=False))
        engine.attach(demo.pid)
        dag = next(s for s in engine._sources if isinstance(s, DagSource))  # noqa: SLF001 - a bench looks inside
        uprobes = next(s for s in engine._sources if isinstance(s, UprobeSource))  # noqa: SLF001
        own_ops: list = []
        try:
            time.sleep(5)
            uprobes.add_listener(lambda ev: own_ops.append(ev) if ev.depth == 0 and ev.op in OWN_OP.values() else None)
            calls0, ops0, placed0 = reading(engine)
            time.sleep(args.seconds)
            calls1, ops1, placed1 = reading(engine)
            uprobes.flush()
            spans = dag.recent_calls()
            own_ops = [(dag.node_of(ev.owner), ev) for ev in own_ops]
        finally:
            engine.detach("bench over")
    finally:
        demo.stop()
    print(f"default demo (10 Hz x 65,536 points, one viewer), {args.seconds:g} s, uprobes via bcc")
    print(f"{'node':<27}{'op':>28}{'exact calls':>13}{'tracker saw':>13}{'op calls on node':>18}")
    for nid, (name, kind, ops) in ops1.items():
        op = OWN_OP.get(kind)
        if op is None or nid not in calls1:
            continue
        delta = lambda d0, d1, k: d1.get(k, 0) - d0.get(k, 0)  # noqa: E731
        exact = delta(calls0.get(nid, {}), calls1[nid], "exact_calls")
        seen = delta(calls0.get(nid, {}), calls1[nid], "observed_calls")
        on_node = ops.get(op, 0) - ops0.get(nid, ("", "", {}))[2].get(op, 0)
        print(f"{name:<27}{op:>28}{exact:>13}{seen:>13}{on_node:>18}")
    print("op calls placed, by evidence: " + ", ".join(
        f"{k} {placed1.get(k, 0) - placed0.get(k, 0)}" for k in sorted(placed1)))
    print_points_and_misses(ops1, own_ops, spans)


def print_points_and_misses(nodes: dict, own_ops: list, spans: list) -> None:
    """Per node: the op probe's point counts against the tracker's, and op
    durations inside seen and missed calls (calls older than the tracker's
    kept history are left out)."""
    since = min((c.start_mono for c in spans), default=float("inf")) + 1.0
    print(f"\n{'node':<27}{'ops in seen calls':>19}{'points equal':>14}{'op ms, seen':>13}"
          f"{'ops in missed':>15}{'op ms, missed':>15}")
    for nid, (name, _, _) in nodes.items():
        seen_ms, missed_ms, same = [], [], []
        for node, ev in own_ops:
            t = ev.start_ns / 1e9
            if node != nid or t < since:
                continue
            call = next((c for c in spans if c.node_id == nid and c.start_mono - c.uncertainty <= t
                         <= c.end_mono + c.uncertainty), None)
            (seen_ms if call else missed_ms).append(ev.duration_ns / 1e6)
            if call is not None and call.points is not None:
                same.append(ev.points == call.points)
        if not seen_ms and not missed_ms:
            continue
        mean = lambda xs: f"{statistics.mean(xs):.2f}" if xs else "-"  # noqa: E731
        share = f"{100 * sum(same) / len(same):.0f}%" if same else "-"
        print(f"{name:<27}{len(seen_ms):>19}{share:>14}{mean(seen_ms):>13}{len(missed_ms):>15}{mean(missed_ms):>15}")


if __name__ == "__main__":
    main()
