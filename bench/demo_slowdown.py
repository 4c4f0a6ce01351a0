#!/usr/bin/env python3
"""Does attaching perfd slow the LiDAR server? The demo's own frame time, with and without.

The product's case, beside bench/sampler.py's synthetic target: one default
demo (10 Hz x 65,536 points, one viewer) runs throughout; windows alternate
B P B P … where P has a perfd engine attached in this process (a fresh
attach per window, the configuration named by --config) and B has nothing
attached. The target's work is read from its own ground truth: the root
node's mean call time over its last 60 calls (the first processing node;
its call holds every node downstream of it, so this is the whole pipeline
per frame) and the mean of every node's. Each window waits SETTLE_S after the attach or detach,
then runs long enough for those 60 calls to lie inside it; each P is
compared with the mean of the B windows around it, and the slowdown is the
mean of those paired ratios with its 95% confidence interval. "Within
noise" means the interval holds 0. Also printed: perfd's own CPU in the P
windows, % of one core per thread (the stack sampler, the call tracker, the
rest), and which stack walker sampled.

    .venv/bin/python bench/demo_slowdown.py [--rates 250,1000] [--repeats 6] [--config stacks|all]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sampler import close, slowdown  # noqa: E402 - the window pairing and its CI, shared with bench/sampler.py

from perfd.demo.launcher import Demo, DemoSpec, free_port  # noqa: E402
from perfd.engine import AttachOptions, Engine  # noqa: E402
from perfd.registry import Registry  # noqa: E402

SETTLE_S = 2.0  # after an attach or a detach, before the window's calls count
CALLS = 60  # the ground truth's rolling window


def frame_times(demo: Demo) -> tuple[float, float]:
    """(the root node's mean call ms, the mean over every node), over each node's last 60 calls.
    The root is the longest: nested calls hold their downstream (the sensor node itself has no calls)."""
    times = [n["avg_exec_ms"] for n in demo.get_json("/api/metrics")["dag"]["nodes"] if n["calls_total"]]
    return max(times), statistics.mean(times)


def cpu_by_thread() -> dict[str, float]:
    """CPU seconds (user+sys) of this process's threads, summed by thread name: Python's
    names by native id (the OS does not know them), else the OS name (perfd's C
    sampling loop calls itself perfd-sampler, so it counts with the sampler)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            name = names.get(int(tid)) or open(f"/proc/self/task/{tid}/comm").read().strip()
        except OSError:
            continue  # ended meanwhile
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def window(demo: Demo, seconds: float, options: AttachOptions | None) -> dict:
    engine = None
    if options is not None:
        engine = Engine(Registry(), options)
        engine.attach(demo.pid)
    try:
        time.sleep(SETTLE_S)
        cpu0, t0 = cpu_by_thread(), time.monotonic()
        time.sleep(seconds)
        cpu1, elapsed = cpu_by_thread(), time.monotonic() - t0
        root, nodes = frame_times(demo)
        out = {"work": 1.0 / root, "nodes_work": 1.0 / nodes}
        if engine is not None:
            status = engine.registry.perfd_status().model_dump()
            out["achieved"] = (status.get("sampler") or {}).get("achieved_hz") or 0.0
            out["walker"] = (status.get("sampler") or {}).get("walker")
            # % of one core per perfd thread (the sampler, the call tracker, the rest)
            pct = {k: 100 * (v - cpu0.get(k, 0.0)) / elapsed for k, v in cpu1.items() if k.startswith("perfd-")}
            out["sampler_cpu"] = pct.pop("perfd-sampler", 0.0)
            out["tracker_cpu"] = pct.pop("perfd-calls", 0.0)
            out["other_cpu"] = sum(pct.values())
    finally:
        if engine is not None:
            engine.detach("window over")
    return out


def paired(demo: Demo, seconds: float, base: list[dict], row: dict, into: list[dict]) -> None:
    """Follow a P window with a B one; the row keeps the B windows on either side."""
    close(row, base, window(demo, seconds, None), into)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="250,1000")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--config", choices=("stacks", "all"), default="stacks",
                    help="stacks: the sampler and call tracker only; all: every source")
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--points", type=int, default=65536)
    args = ap.parse_args()
    seconds = CALLS / args.hz + 0.5
    demo = Demo(DemoSpec(app_port=free_port(), hz=args.hz, points=args.points, clients=1)).start()
    try:
        time.sleep(5.0)  # the pipeline warm
        print(f"demo {args.hz:g} Hz x {args.points:,} points, one viewer; perfd: {args.config}; "
              f"windows of {SETTLE_S + seconds:.1f} s, {args.repeats} pairs per rate\n")
        header = (f"{'rate':>6} | {'perfd Hz':>9} | {'frame slowdown % (95% CI)':>26} | "
                  f"{'node-mean slowdown % (95% CI)':>30} | {'B frame ms (min-max)':>21} | "
                  f"{'CPU % sampler':>13} {'tracker':>7} {'other':>5}")
        print(header)
        print("-" * len(header))
        for rate in (float(r) for r in args.rates.split(",")):
            options = AttachOptions(rate_hz=rate, uprobes=args.config == "all", capture=args.config == "all")
            base, rows = [window(demo, seconds, None)], []
            for _ in range(args.repeats):
                paired(demo, seconds, base, window(demo, seconds, options), rows)
            frames_ms = [1.0 / b["work"] for b in base]
            print(f"{rate:>6.0f} | {statistics.mean(r['achieved'] for r in rows):>9.1f} | "
                  f"{slowdown(rows, 'work'):>26} | {slowdown(rows, 'nodes_work'):>30} | "
                  f"{min(frames_ms):>9.1f}-{max(frames_ms):<11.1f} | "
                  f"{statistics.mean(r['sampler_cpu'] for r in rows):>13.1f} "
                  f"{statistics.mean(r['tracker_cpu'] for r in rows):>7.1f} "
                  f"{statistics.mean(r['other_cpu'] for r in rows):>5.1f}")
        print(f"\nstack walker: {rows[-1]['walker']}")
    finally:
        demo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
