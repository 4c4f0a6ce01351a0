#!/usr/bin/env python3
"""Does the sampler thread's priority bias what it sees on a busy target?

A thread that only runs when a core is otherwise idle (SCHED_IDLE) costs a
GIL-bound target least (bench/sampler_priority.py), but a profiler must not
skip the moments the target keeps every core busy. On the default demo
(Open3D's OpenMP team fills both cores of this VM during each op), phases of
--phase seconds interleave the sampler's policies; per policy: achieved rate,
worst gap between samples, and the share of samples that caught a worker
inside an Open3D op (the demo's ``BaseNode._timed`` innermost) against the
share of wall time the demo's own collector timed its ops for (the ground
truth: its per-op call counts times their all-time means are running sums). An unbiased
sampler reads the ground-truth share; one that is starved while the target
is busy reads less.

Usage: python bench/sampler_bias.py [--rate 250] [--phase 5] [--repeats 3] [--hz 10] [--burn 0]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sampler_priority import label, sampler_for  # noqa: E402

from perfd.demo.launcher import Demo, DemoSpec, free_port  # noqa: E402

MODES = (("SCHED_OTHER", -5), ("SCHED_BATCH", 0), ("SCHED_BATCH", -5), ("SCHED_IDLE", None))
IN_OP = "BaseNode._timed"


def op_ms(snapshot: dict) -> dict[tuple[str, str], tuple[int, float]]:
    """(node, op) -> (calls, mean ms) from the demo's collector."""
    return {(n["node_id"], op): (m["calls"], m["avg_ms"])
            for n in snapshot["dag"]["nodes"] for op, m in (n.get("open3d_ops") or {}).items()}


def phase(demo: Demo, rate: float, mode: tuple[str, int | None], seconds: float) -> dict:
    times: list[int] = []
    in_op = [0]

    def on_sample(sample) -> None:  # noqa: ANN001 - perfd.cpython.sample.Sample
        times.append(sample.monotonic_ns)
        if any(t.frames and t.frames[0].qualname == IN_OP for t in sample.threads):
            in_op[0] += 1

    sampler = sampler_for(demo.pid, rate, mode)
    sampler.on_sample = on_sample
    before = op_ms(demo.get_json("/api/metrics"))
    t0 = time.monotonic()
    sampler.start()
    time.sleep(seconds)
    sampler.stop()
    wall = time.monotonic() - t0
    after = op_ms(demo.get_json("/api/metrics"))
    # the collector's op means are over all calls: calls x mean is its running sum
    truth_ms = sum(calls * mean - before.get(k, (0, 0.0))[0] * before.get(k, (0, 0.0))[1]
                   for k, (calls, mean) in after.items())
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {"achieved": len(times) / wall, "max_gap_ms": max(gaps) / 1e6 if gaps else 0.0,
            "seen": in_op[0] / max(len(times), 1), "truth": truth_ms / 1000.0 / wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=250.0)
    ap.add_argument("--phase", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hz", type=float, default=10.0, help="demo frame rate (higher: busier)")
    ap.add_argument("--burn", type=int, default=0, help="processes spinning beside the demo (a host with no idle core)")
    args = ap.parse_args()
    demo = Demo(DemoSpec(app_port=free_port(), hz=args.hz, clients=1)).start()
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burn)]
    rows: dict[object, list[dict]] = {m: [] for m in MODES}
    try:
        time.sleep(5)
        for _ in range(args.repeats):
            for mode in MODES:
                rows[mode].append(phase(demo, args.rate, mode, args.phase))
    finally:
        for b in burners:
            b.kill()
            b.wait()
        demo.stop()
    print(f"demo at {args.hz:g} Hz x 65,536 points, {args.burn} spinning processes beside it, sampler at {args.rate:g} Hz, {args.repeats} phases of {args.phase:g} s per policy")
    print(f"{'thread priority':>16} | {'achieved Hz':>11} {'worst gap ms':>12} | "
          f"{'in-op share: sampled':>20} {'ground truth':>12} {'ratio':>6}")
    for mode in MODES:
        r = rows[mode]
        seen, truth = statistics.mean(x["seen"] for x in r), statistics.mean(x["truth"] for x in r)
        print(f"{label(mode):>16} | {statistics.mean(x['achieved'] for x in r):>11.1f} "
              f"{max(x['max_gap_ms'] for x in r):>12.1f} | {seen:>20.3f} {truth:>12.3f} "
              f"{seen / truth if truth else float('nan'):>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
