"""Per-call timing error of perfd's call tracking against the demo's ground truth.

The ground truth's ``/api/metrics/dag`` is polled every few ms; each new
``last_seen_ts`` (call start) with its ``last_exec_ms`` is one ground-truth
call. perfd's tracker runs in this process on the same demo; each completed
call is matched to the ground-truth call with the nearest start. Prints, per
node, how many calls matched, the median start and end offsets, the 90th
percentile of the start offset (a start placed late) and the median / mean
duration error in ms — what the rolling means in the snapshot are built from.

    .venv/bin/python bench/call_timing.py [--seconds 12] [--clients 0] [--chain 12 --points 16384]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import urllib.request

from perfd.cpython.discovery import locate_interpreter
from perfd.demo.launcher import Demo, DemoSpec, free_port
from perfd.profile import load_profile
from perfd.reconstruction.dag import DagSource
from perfd.registry import Registry
from perfd.snapshot import TargetStatus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--points", type=int, default=None, help="points per frame (demo default if unset)")
    ap.add_argument("--chain", type=int, default=None, help="a linear chain of N nodes instead of the default DAG")
    ap.add_argument("--clients", type=int, default=0, help="WebSocket viewers (the accuracy test has one)")
    args = ap.parse_args()
    shape = {k: v for k, v in (("points", args.points), ("chain", args.chain)) if v is not None}
    demo = Demo(DemoSpec(app_port=free_port(), hz=args.hz, clients=args.clients, **shape)).start()
    try:
        time.sleep(3)
        registry = Registry()
        registry.attach(TargetStatus(pid=demo.pid, python="-", exe="-", attached_at=time.time()))
        source = DagSource(locate_interpreter(demo.pid), registry, load_profile(), 250)
        ours: list[tuple[str, float, float]] = []
        observe = source.tracker.observe

        def recording(*a, **kw):  # noqa: ANN002, ANN003
            born, done = observe(*a, **kw)
            ours.extend((c.node_id, c.start_wall, c.duration_s * 1000) for c in done)
            return born, done

        source.tracker.observe = recording
        truth: dict[str, dict[float, float]] = {}
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                with urllib.request.urlopen(demo.url + "/api/metrics/dag", timeout=5) as r:
                    for n in json.load(r)["nodes"]:
                        truth.setdefault(n["node_id"], {})[n["last_seen_ts"]] = n["last_exec_ms"]
                time.sleep(0.003)

        source.start()
        poller = threading.Thread(target=poll)
        poller.start()
        time.sleep(args.seconds)
        stop.set()
        poller.join()
        source.stop()
        names = {n["node_id"]: n["node_name"] for n in demo.get_json("/api/metrics")["dag"]["nodes"]}
    finally:
        demo.stop()
    print(f"{'node':<26} {'matched':>7} {'start med':>9} {'start p90':>9} {'end med':>8} {'dur med':>8} {'dur mean':>9}"
          "   (ms; perfd - ground truth)")
    for node_id, calls in truth.items():
        pairs = []
        for n, start, ms in ours:
            if n != node_id or not calls:
                continue
            nearest = min(calls, key=lambda t: abs(t - start))
            if abs(nearest - start) < 0.05 and calls[nearest] > 0:
                pairs.append(((start - nearest) * 1000, ms - calls[nearest]))
        if pairs:
            starts = sorted(p[0] for p in pairs)
            print(f"{names.get(node_id, node_id)[:26]:<26} {len(pairs):>7} {statistics.median(starts):>9.2f} "
                  f"{starts[int(0.9 * (len(starts) - 1))]:>9.2f} {statistics.median(p[0] + p[1] for p in pairs):>8.2f} "
                  f"{statistics.median(p[1] for p in pairs):>8.2f} {statistics.fmean(p[1] for p in pairs):>9.2f}")


if __name__ == "__main__":
    main()
