"""An Open3D target that times its own calls: the ground truth for uprobes.

Loads Open3D, prints ``READY``, and waits for SIGUSR1 (so probes are attached
before the first call). Then each of ``--threads`` threads runs the op
sequence ``--iterations`` times, timing every call with perf_counter_ns right
around it, and prints one ``RESULT <json>`` line:
``{"threads": {tid: {op: [duration_ms, ...]}}, "preempted": {tid: {op: [bool, ...]}}}``
— ``preempted`` marks calls during which the scheduler took the CPU away from
the calling thread (involuntary context switches, getrusage RUSAGE_THREAD): on
a loaded host those can stretch the Python-side span outside the C++ call.
Then idles until killed.

Op names are the probe spec's (``probes/open3d.toml``), so the tensor API's
``remove_statistical_outliers`` counts as ``remove_statistical_outlier``.
"""

import argparse
import json
import os
import resource
import signal
import threading
import time

import numpy as np
import open3d as o3d

p = argparse.ArgumentParser()
p.add_argument("--iterations", type=int, default=5)
p.add_argument("--points", type=int, default=20000)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--api", choices=("legacy", "tensor", "both"), default="both")
p.add_argument("--batch", type=int, default=1, help="with --loop: passes per printed FRAME")
p.add_argument("--realtime", action="store_true",
               help="run the timed threads SCHED_FIFO, so a loaded host cannot preempt them between a clock"
                    " read and the C++ call (which would stretch only the Python-side span)")
p.add_argument("--ops", default="", help="comma-separated subset of ops (default: all)")
p.add_argument("--loop", action="store_true",
               help="run until killed, printing 'FRAME <start ns> <end ns> <cpu ns>' per --batch passes (bench):"
               " CLOCK_MONOTONIC start/end, and the process CPU time the pass used")
args = p.parse_args()
wanted = set(filter(None, args.ops.split(",")))

rng = np.random.default_rng(7)
xyz = rng.random((args.points, 3))
xyz[: args.points // 3, 2] = 0.0  # a plane for segment_plane to find
shift = np.eye(4)
shift[0, 3] = 0.01


def legacy_ops():
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    down = pcd.voxel_down_sample(0.04)
    moved = o3d.geometry.PointCloud(down).transform(shift)
    idx = list(range(0, len(down.points), 3))
    box = o3d.geometry.AxisAlignedBoundingBox([0, 0, 0], [0.5, 0.5, 0.5])
    param = o3d.geometry.KDTreeSearchParamHybrid(radius=0.1, max_nn=16)
    est = o3d.pipelines.registration.TransformationEstimationPointToPoint()
    crit = o3d.pipelines.registration.ICPConvergenceCriteria(max_iteration=5)
    return [
        ("voxel_down_sample", lambda: pcd.voxel_down_sample(0.04)),
        ("estimate_normals", lambda: down.estimate_normals(param)),
        ("remove_statistical_outlier", lambda: down.remove_statistical_outlier(16, 2.0)),
        ("remove_radius_outlier", lambda: down.remove_radius_outlier(6, 0.08)),
        ("segment_plane", lambda: down.segment_plane(0.01, 3, 200)),
        ("cluster_dbscan", lambda: down.cluster_dbscan(0.08, 8)),
        ("crop", lambda: pcd.crop(box)),
        ("select_by_index", lambda: down.select_by_index(idx)),
        ("registration_icp", lambda: o3d.pipelines.registration.registration_icp(moved, down, 0.05, np.eye(4), est, crit)),
    ]


def tensor_ops():
    t = o3d.t.geometry
    pcd = t.PointCloud(o3d.core.Tensor(xyz.astype(np.float32)))
    down = pcd.voxel_down_sample(0.04)
    moved = down.clone().transform(o3d.core.Tensor(shift.astype(np.float32)))
    idx = o3d.core.Tensor(np.arange(0, len(down.point.positions), 3, dtype=np.int64))
    box = t.AxisAlignedBoundingBox(o3d.core.Tensor([0.0, 0.0, 0.0]), o3d.core.Tensor([0.5, 0.5, 0.5]))
    reg = o3d.t.pipelines.registration
    crit = reg.ICPConvergenceCriteria(max_iteration=5)
    return [
        ("voxel_down_sample", lambda: pcd.voxel_down_sample(0.04)),
        ("estimate_normals", lambda: down.estimate_normals(max_nn=16, radius=0.1)),
        ("remove_statistical_outlier", lambda: down.remove_statistical_outliers(16, 2.0)),
        ("remove_radius_outlier", lambda: down.remove_radius_outliers(6, 0.08)),
        ("segment_plane", lambda: down.segment_plane(0.01, 3, 200)),
        ("cluster_dbscan", lambda: down.cluster_dbscan(0.08, 8)),
        ("crop", lambda: pcd.crop(box)),
        ("select_by_index", lambda: down.select_by_index(idx)),
        ("registration_icp", lambda: reg.icp(moved, down, 0.05, o3d.core.Tensor(np.eye(4)), reg.TransformationEstimationPointToPoint(), crit)),
    ]


def sequence():
    ops = (legacy_ops() if args.api in ("legacy", "both") else []) + (tensor_ops() if args.api in ("tensor", "both") else [])
    return [(name, fn) for name, fn in ops if not wanted or name in wanted]


results: dict[int, dict[str, list[float]]] = {}
preempted: dict[int, dict[str, list[bool]]] = {}


def worker(ops) -> None:
    mine: dict[str, list[float]] = {}
    results[threading.get_native_id()] = mine
    switched: dict[str, list[bool]] = preempted.setdefault(threading.get_native_id(), {})
    if args.realtime:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))  # this thread only
    i = 0
    while args.loop or i < args.iterations:
        frame_start, cpu_start = time.monotonic_ns(), time.process_time_ns()
        for name, fn in ops * (args.batch if args.loop else 1):
            cs0 = resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw
            t0 = time.perf_counter_ns()
            result = fn()  # kept: freeing it is not part of the call
            t1 = time.perf_counter_ns()
            cs1 = resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw
            del result
            if not args.loop:
                mine.setdefault(name, []).append((t1 - t0) / 1e6)
                switched.setdefault(name, []).append(cs1 != cs0)
        if args.loop:
            print(f"FRAME {frame_start} {time.monotonic_ns()} {time.process_time_ns() - cpu_start}", flush=True)
        i += 1


# Inputs are built now, before READY: only the timed calls run after SIGUSR1.
sequences = [sequence() for _ in range(args.threads)]  # nothing shared between threads
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
print("READY", flush=True)
signal.sigwait({signal.SIGUSR1})
threads = [threading.Thread(target=worker, args=(ops,), name=f"ops-{n}") for n, ops in enumerate(sequences)]
for th in threads:
    th.start()
for th in threads:
    th.join()
print("RESULT " + json.dumps({"threads": {str(k): v for k, v in results.items()},
                              "preempted": {str(k): v for k, v in preempted.items()}}), flush=True)
while True:
    time.sleep(1)
