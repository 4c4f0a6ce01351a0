#!/usr/bin/env python3
"""Does the sampling threads' scheduling, or how often Python takes the samples,
change what the target loses?

Same target and paired windows as bench/sampler.py (B P B P …, each P
against the two B around it), perfd's Sampler at --rate with both its
threads (the C loop's and the Python one handing samples on) under
SCHED_OTHER at nice -5, 0, +10, SCHED_BATCH (a waking thread does not
preempt the one running) at 0 and -5 (the default), and SCHED_IDLE (runs
only when a CPU is otherwise idle); each of them with Python taking the
samples in each of --batches (``deliver_within_s``: longer batches wake
Python less often, each wakeup runs longer). Prints achieved rate, perfd's
CPU and µs per sample, the target's work-rate slowdown, the CPU the
target's threads lost and the time they spent waiting for a CPU, each with
its 95% CI.

Usage: python bench/sampler_priority.py [--python 3.12] [--rate 1000] [--repeats 6] [--window 2] [--modes ...]
                                        [--batches 0.02,0.1]
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
from perfd.sampling.sampler import LOOP_BATCH_S  # noqa: E402

# (policy, nice); the thread's nice is left alone for SCHED_IDLE (it has none)
MODES = (("SCHED_OTHER", -5), ("SCHED_OTHER", 0), ("SCHED_OTHER", 10), ("SCHED_BATCH", 0),
         ("SCHED_BATCH", -5), ("SCHED_IDLE", None))


def sampler_for(pid: int, rate: float, mode: tuple[str, int | None], batch_s: float) -> Sampler:
    policy, nice = mode
    return Sampler(locate_interpreter(pid), rate, nice=nice, policy=getattr(os, policy), deliver_within_s=batch_s)


def label(mode: tuple[str, int | None], batch_s: float) -> str:
    policy, nice = mode
    return (policy if nice is None else f"{policy} {nice:+d}") + f", {1000 * batch_s:g} ms"


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
    ap.add_argument("--batches", type=lambda t: [float(b) for b in t.split(",")], default=[LOOP_BATCH_S],
                    help="deliver_within_s values, s (default: the Sampler's)")
    args = ap.parse_args()
    target = BenchTarget(pyenv_python(args.python))
    try:
        settings = [(m, b) for m in args.modes for b in args.batches]
        rows: dict[object, list[dict]] = {s: [] for s in settings}
        base = [target.measure(args.window)]
        for _ in range(args.repeats):
            for mode, batch in settings:
                sampler = sampler_for(target.proc.pid, args.rate, mode, batch)
                paired(target, args.window, base, with_perfd(target, args.rate, args.window, sampler),
                       rows[mode, batch])
        print(f"CPython {args.python}, sampler at {args.rate:g} Hz, {args.repeats} pairs of {args.window:g} s per setting")
        print(f"{'thread priority, batch':>24} | {'achieved Hz':>11} {'CPU %':>6} {'µs/smp':>6} | "
              f"{'slowdown % (95% CI)':>21} | {'target CPU lost %':>23} | {'run-queue wait added, ms/s':>26}")
        for setting in settings:
            r = rows[setting]
            print(f"{label(*setting):>24} | {statistics.mean(x['achieved'] for x in r):>11.1f} "
                  f"{statistics.mean(x['cpu'] for x in r):>6.1f} {statistics.mean(x['us_per_sample'] for x in r):>6.0f} | "
                  f"{slowdown(r):>21} | {slowdown(r, 'target_cpu', 2):>23} | {added(r, 'run_wait'):>26}")
    finally:
        target.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
