"""Per-node accuracy of perfd's ``dag`` against the demo's ground truth.

For each stack rate (250 and 1000 Hz by default) a fresh demo is started, a
real ``perfd attach`` process attached to it, and after a warm-up both are
read side by side for ``--seconds``; the table shows calls, mean exec time
and throughput errors, how often last_point_count agreed, and the share of
calls the sampler saw itself (the rest are counted exactly from app state).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dag_compare import record, table  # noqa: E402
from perfd_process import PerfdServer  # noqa: E402

from perfd.demo.launcher import Demo, DemoSpec, free_port  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rates", default="250,1000")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--points", type=int, default=65536)
    args = ap.parse_args()
    for rate in args.rates.split(","):
        demo = Demo(DemoSpec(app_port=free_port(), hz=args.hz, points=args.points, clients=1)).start()
        try:
            time.sleep(3)
            with PerfdServer(demo.pid, "--rate", rate, "--no-capture") as server:
                time.sleep(5)
                window = record(lambda: demo.get_json("/api/metrics"),
                                lambda: server.get_json("/api/metrics")[1], args.seconds)
                tracking = window.pairs[-1][1]["perfd"].get("call_tracking", {})
                sampler = window.pairs[-1][1]["perfd"]["sampler"]
        finally:
            demo.stop()
        rows = [r for r in window.compare() if r.gt_calls > 0]
        print(f"\n--rate {rate} Hz, {args.seconds:g} s window, demo {args.hz:g} Hz x {args.points} points "
              f"(sampler {sampler['achieved_hz']} Hz, {sampler['cpu_percent']}% CPU; call tracking "
              f"{tracking.get('achieved_hz')} Hz, worst gap {tracking.get('max_gap_ms')} ms)")
        print(table(rows))


if __name__ == "__main__":
    main()
