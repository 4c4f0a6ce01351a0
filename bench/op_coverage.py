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

    .venv/bin/python bench/op_coverage.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import time

from perfd.demo.launcher import Demo, DemoSpec, free_port
from perfd.engine import AttachOptions, Engine
from perfd.registry import Registry

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
        try:
            time.sleep(5)
            calls0, ops0, placed0 = reading(engine)
            time.sleep(args.seconds)
            calls1, ops1, placed1 = reading(engine)
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


if __name__ == "__main__":
    main()
