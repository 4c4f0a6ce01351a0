"""Where perfd's CPU goes: per-thread CPU of an in-process engine attached to the demo.

For each configuration a fresh demo (default 10 Hz x 65,536 points, one
viewer) is started, the engine attached in this process, and after a warm-up
each perfd thread's CPU (from /proc/self/task) is measured over --seconds.

    .venv/bin/python bench/perfd_cpu.py [--seconds 15] [--rate 250]
"""

from __future__ import annotations

import argparse
import os
import threading
import time

from perfd.demo.launcher import Demo, DemoSpec, free_port
from perfd.engine import AttachOptions, Engine
from perfd.registry import Registry

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu() -> dict[int, float]:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def os_thread_name(tid: int) -> str:
    """A thread Python did not start (perfd's C sampling loop names itself): its OS name."""
    try:
        with open(f"/proc/self/task/{tid}/comm") as f:
            name = f.read().strip()
    except OSError:
        return "other"
    return name if name.startswith("perfd-") else "other"


def measure(options: AttachOptions, seconds: float, hz: float, points: int) -> tuple[dict[str, float], dict]:
    demo = Demo(DemoSpec(app_port=free_port(), hz=hz, points=points, clients=1)).start()
    engine = Engine(Registry(), options)
    try:
        time.sleep(3)
        engine.attach(demo.pid)
        time.sleep(3)
        before, t0 = thread_cpu(), time.monotonic()
        time.sleep(seconds)
        after, elapsed = thread_cpu(), time.monotonic() - t0
        names = {t.native_id: t.name for t in threading.enumerate()}
        per: dict[str, float] = {}
        for tid, cpu in after.items():
            name = names.get(tid) or os_thread_name(tid)
            per[name] = per.get(name, 0.0) + 100 * (cpu - before.get(tid, cpu)) / elapsed
        extras = engine.registry.perfd_status().model_dump()
        return per, extras
    finally:
        engine.detach("bench over")
        demo.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rate", type=float, default=250.0)
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--points", type=int, default=65536)
    args = ap.parse_args()
    configs = {
        "stacks only": AttachOptions(rate_hz=args.rate, uprobes=False, capture=False),
        "+ uprobes": AttachOptions(rate_hz=args.rate, capture=False),
        "all sources": AttachOptions(rate_hz=args.rate),
    }
    print(f"{'configuration':<14} {'thread':<22} {'CPU % of a core':>16}")
    for label, options in configs.items():
        per, extras = measure(options, args.seconds, args.hz, args.points)
        for name, pct in sorted(per.items(), key=lambda kv: -kv[1]):
            if pct >= 0.5:
                print(f"{label:<14} {name:<22} {pct:>16.1f}")
        tracking = extras.get("call_tracking") or {}
        print(f"{label:<14} {'TOTAL':<22} {sum(per.values()):>16.1f}   "
              f"(call tracking {tracking.get('achieved_hz')} Hz, worst gap {tracking.get('max_gap_ms')} ms)")


if __name__ == "__main__":
    main()
