"""Gaps between consecutive Open3D op calls on the same worker thread, by op pair.

Why it matters: tracefs probes run no code, so perfd places their calls from
stack samples of the worker around them. If a worker could not take another
node's job right after one op, a single look just before or just after an op
would tell its node. This measures how soon it does: bcc probes on the
default demo, every outermost op call's thread and times, and per pair of
consecutive calls on one thread the gap (ms) between the first's end and the
second's start. Pairs within one node's job and pairs across two nodes' jobs
are both listed.

    .venv/bin/python bench/op_gaps.py [--seconds 15]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from perfd.demo.launcher import Demo, DemoSpec, free_port
from perfd.registry import Registry
from perfd.uprobes.source import UprobeSource


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    args = ap.parse_args()
    calls: list[tuple[int, int, int, str]] = []  # (tid, start ns, end ns, op)
    demo = Demo(DemoSpec(app_port=free_port(), hz=10, points=65536, clients=1)).start()
    try:
        time.sleep(3)
        source = UprobeSource(demo.pid, Registry(), "bcc")
        source.add_listener(lambda ev: ev.depth == 0 and calls.append(
            (ev.tid, ev.start_ns, ev.start_ns + ev.duration_ns, ev.op)))
        if not source.start():
            raise SystemExit("uprobes did not attach")
        time.sleep(args.seconds)
        source.flush()
        source.stop()
    finally:
        demo.stop()
    calls.sort()
    gaps: dict[tuple[str, str], list[float]] = defaultdict(list)
    for a, b in zip(calls, calls[1:]):
        if a[0] == b[0]:
            gaps[(a[3], b[3])].append((b[1] - a[2]) / 1e6)
    print(f"default demo (10 Hz x 65,536 points, one viewer), {args.seconds:g} s, {len(calls)} op calls")
    print(f"{'first op':<28} {'next op on the same thread':<28} {'pairs':>6} {'min ms':>8} {'p10 ms':>8} {'median ms':>10}")
    for (first, second), v in sorted(gaps.items()):
        v.sort()
        print(f"{first:<28} {second:<28} {len(v):>6} {v[0]:>8.3f} {v[len(v) // 10]:>8.3f} {v[len(v) // 2]:>10.3f}")


if __name__ == "__main__":
    main()
