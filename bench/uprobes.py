"""Cost of Open3D uprobes to the target: frame time with vs without probes.

One target process (tests/targets/open3d_ops.py --loop) runs a frame — the
op sequence on a fresh-but-identical cloud — over and over and reports each
frame's start/end. The bench switches probes off / bcc / tracefs in rounds
(interleaved, so drift and the neighbours' load hit every mode alike) and
prints per-mode frame time side by side with the ratio
``frame time without probes / frame time with probes`` (1.0 = no cost;
the acceptance bar is >= 0.99).

    .venv/bin/python bench/uprobes.py [--rounds 4] [--phase-s 5] [--api legacy]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from perfd.cpython.discovery import locate_interpreter
from perfd.cpython.layouts import frame_walk
from perfd.cpython.stacks import StackReader
from perfd.registry import Registry
from perfd.uprobes import UprobeSource, check_backends
from perfd.uprobes.events import FrameWatch

TARGET = Path(__file__).resolve().parent.parent / "tests" / "targets" / "open3d_ops.py"


class FrameLog:
    """Collects (start_ns, end_ns) frames from the target's stdout."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.frames: list[tuple[int, int, int]] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            if line.startswith("FRAME "):
                _, start, end, cpu = line.split()
                self.frames.append((int(start), int(end), int(cpu)))

    def join(self) -> None:
        self._thread.join(timeout=10)

    def between(self, lo_ns: int, hi_ns: int) -> list[tuple[float, float]]:
        """(wall ms, CPU ms) of the frames entirely inside [lo, hi]."""
        return [((e - s) / 1e6, c / 1e6) for s, e, c in list(self.frames) if s >= lo_ns and e <= hi_ns]


def start_source(pid: int, mode: str) -> UprobeSource:
    """``<backend>+frames``: as perfd attaches, with the entry probe reading the
    calling thread's Python frames — watching every thread and an owner that
    is never found, so every entry walks the whole frame budget (worst case)."""
    backend, _, frames = mode.partition("+")
    stacks = StackReader(locate_interpreter(pid)) if frames else None
    walk = frame_walk(stacks.layout, stacks.interp.runtime_addr) if stacks else None
    source = UprobeSource(pid, Registry(), backend=backend, walk=walk)
    if not source.start():
        raise SystemExit(f"{mode}: could not attach")
    if stacks is not None:
        source.watch(FrameWatch({t.native_thread_id: t.tstate_addr for t in stacks.sample().threads}, frozenset({1})))
        stacks.close()
    return source


def measure(target_args: list[str], modes: list[str], rounds: int, phase_s: float, env: dict):
    """Per mode: [(wall ms, CPU ms)] of whole frames, and probe events seen."""
    proc = subprocess.Popen([sys.executable, str(TARGET), "--loop", *target_args], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, **env})
    log: FrameLog | None = None
    windows: list[tuple[str, int, int]] = []
    events: dict[str, int] = {m: 0 for m in modes}
    lost: dict[str, int] = {m: 0 for m in modes}
    try:
        assert "READY" in proc.stdout.readline()
        log = FrameLog(proc)
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(1.0)  # warm-up frames are not measured
        for r in range(rounds):
            for mode in modes[r % len(modes):] + modes[: r % len(modes)]:  # rotate: no mode always first
                source = None
                if mode != "off":
                    source = start_source(proc.pid, mode)
                lo = time.monotonic_ns()
                time.sleep(phase_s)
                hi = time.monotonic_ns()
                if source is not None:
                    source.flush()
                    events[mode] += source.aggregator.events_total
                    lost[mode] += source.status().lost_events
                    source.stop()
                windows.append((mode, lo, hi))
    finally:
        proc.kill()
        proc.wait()
    if log is not None:
        log.join()  # every frame read before any window is counted
    per_mode: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for mode, lo, hi in windows:
        per_mode[mode].extend(log.between(lo, hi))
    for mode, n in lost.items():
        if n:
            print(f"warning: {mode} lost {n} events (kernel buffer full)")
    return per_mode, events


def table(title: str, per_mode: dict, events: dict) -> None:
    def stats(mode: str) -> tuple[float, float, float]:
        wall = [w for w, _ in per_mode[mode]]
        cpu = [c for _, c in per_mode[mode]]
        return statistics.fmean(wall), statistics.median(wall), statistics.fmean(cpu)

    base = stats("off")
    print(title)
    print(f"{'mode':10} {'frames':>7} {'wall mean':>10} {'wall median':>12} {'CPU mean':>9} {'events/frame':>13} "
          f"{'ratio wall mean':>16} {'ratio wall median':>18} {'ratio CPU':>10} {'us/event (median)':>18}")
    for mode, frames in per_mode.items():
        mean, med, cpu = stats(mode)
        n = len(frames)
        per_frame = events[mode] / max(1, n)
        cost = (med - base[1]) * 1000 / per_frame if per_frame else 0.0
        print(f"{mode:10} {n:7d} {mean:10.3f} {med:12.3f} {cpu:9.3f} {per_frame:13.1f} "
              f"{base[0] / mean:16.4f} {base[1] / med:18.4f} {base[2] / cpu:10.4f} {cost:18.2f}")
    print()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--phase-s", type=float, default=3.0)
    ap.add_argument("--api", default="legacy", choices=("legacy", "tensor", "both"))
    ap.add_argument("--points", type=int, default=20000)
    ap.add_argument("--omp-threads", default="1",
                    help="OMP_NUM_THREADS for the target; 1 + SCHED_FIFO keeps the neighbours' load out of the numbers")
    ap.add_argument("--no-realtime", action="store_true", help="run the target's frame thread SCHED_OTHER")
    args = ap.parse_args()

    works = {c.backend: c.works for c in check_backends()}
    modes = ["off"] + [b for b in ("bcc", "bcc+frames", "tracefs", "tracefs+frames") if works[b.partition("+")[0]]]
    rt = [] if args.no_realtime else ["--realtime"]
    env = {"OMP_NUM_THREADS": args.omp_threads}
    print("ratio = without probes / with probes (1.0 = no cost); CPU = the target's process CPU time per frame;")
    print("us/event = added wall time per probed call (median frame difference / calls per frame)")
    print(f"{args.rounds} rounds x {args.phase_s:g} s per mode, interleaved and rotated; OMP_NUM_THREADS={args.omp_threads}"
          f"{'' if args.no_realtime else ', frame thread SCHED_FIFO'}; load average {os.getloadavg()[0]:.2f}\n")
    frame = measure(["--api", args.api, "--points", str(args.points), *rt], modes, args.rounds, args.phase_s, env)
    table(f"frame = every op of open3d.toml once ({args.api} API, {args.points} points)", *frame)
    tiny = measure(["--api", "legacy", "--points", "64", "--ops", "select_by_index", "--batch", "1000", *rt], modes,
                   args.rounds, args.phase_s, env)
    table("frame = 1000 x select_by_index on 64 points (worst case: the probe cost alone)", *tiny)
    return 0


if __name__ == "__main__":
    sys.exit(main())
