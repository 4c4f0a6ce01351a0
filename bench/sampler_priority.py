#!/usr/bin/env python3
"""Does the sampling threads' scheduling change what the target loses?

Same target and paired windows as bench/sampler.py (B P B P …, each P
against the two B around it), perfd's Sampler at --rate with both its
threads (the C loop's and the Python one handing samples on) under
SCHED_OTHER at nice -5, 0, +10, SCHED_BATCH (a waking thread does not
preempt the one running) at 0 and -5 (the default), and SCHED_IDLE (runs
only when a CPU is otherwise idle). Prints achieved rate, perfd's CPU, the
target's work-rate slowdown, the CPU the target's threads lost and the time
they spent waiting for a CPU, each with its 95% CI.

Usage: python bench/sampler_priority.py [--python 3.12] [--rate 1000] [--repeats 6] [--window 2] [--modes ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sampler import BenchTarget, added, paired, pyenv_python, slowdown, with_perfd  # noqa: E402

from perfd.cpython.discovery import locate_interpreter  # noqa: E402
from perfd.sampling import Sampler  # noqa: E402

# (policy, nice); the thread's nice is left alone for SCHED_IDLE (it has none)
MODES = (("SCHED_OTHER", -5), ("SCHED_OTHER", 0), ("SCHED_OTHER", 10), ("SCHED_BATCH", 0),
         ("SCHED_BATCH", -5), ("SCHED_IDLE", None))


def sampler_for(pid: int, rate: float, mode: tuple[str, int | None]) -> Sampler:
    policy, nice = mode
    return Sampler(locate_interpreter(pid), rate, nice=nice, policy=getattr(os, policy))


def label(mode: tuple[str, int | None]) -> str:
    policy, nice = mode
    return policy if nice is None else f"{policy} {nice:+d}"


def parse_modes(text: str) -> tuple[tuple[str, int | None], ...]:
    """``SCHED_OTHER:-5,SCHED_IDLE`` -> ((SCHED_OTHER, -5), (SCHED_IDLE, None))."""
    out = []
    for item in text.split(","):
        policy, _, nice = item.partition(":")
        out.append((policy, int(nice) if nice else None))
    return tuple(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default="3.12")
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--modes", type=parse_modes, default=MODES, help="e.g. SCHED_OTHER:-5,SCHED_IDLE")
    args = ap.parse_args()
    target = BenchTarget(pyenv_python(args.python))
    try:
        rows: dict[object, list[dict]] = {m: [] for m in args.modes}
        base = [target.measure(args.window)]
        for _ in range(args.repeats):
            for mode in args.modes:
                sampler = sampler_for(target.proc.pid, args.rate, mode)
                paired(target, args.window, base, with_perfd(target, args.rate, args.window, sampler), rows[mode])
        print(f"CPython {args.python}, sampler at {args.rate:g} Hz, {args.repeats} pairs of {args.window:g} s per mode")
        print(f"{'thread priority':>16} | {'achieved Hz':>11} {'CPU %':>6} | {'slowdown % (95% CI)':>21} | "
              f"{'target CPU lost %':>23} | {'run-queue wait added, ms/s':>26}")
        for mode in args.modes:
            r = rows[mode]
            print(f"{label(mode):>16} | {statistics.mean(x['achieved'] for x in r):>11.1f} "
                  f"{statistics.mean(x['cpu'] for x in r):>6.1f} | {slowdown(r):>21} | "
                  f"{slowdown(r, 'target_cpu', 2):>23} | {added(r, 'run_wait'):>26}")
    finally:
        target.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
