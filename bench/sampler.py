#!/usr/bin/env python3
"""Sampler cost and target slowdown: perfd vs py-spy, side by side, one run.

Target: tests/targets/reader_bench.py (6 threads, ~250 frames) under a pyenv
CPython. For each rate, windows alternate B A B P B G B Y B T B R B C B S B A …
— the target's own work rate with nothing attached (B), with perfd's Sampler
in this process (P: its default walker, native when built, sampling on its C
thread and handing the samples to Python in batches, reading only the threads
that can have run since their last sample: the GIL's holders), with the same
Sampler reading every thread every sample (G: what not reading idle threads
saves), with the same Sampler walking in Python (Y: what the native core saves), with a
thread that only wakes at that rate (T: the floor
for any sampler that sleeps between samples), with one that wakes and
repeats a steady-state sample's ``process_vm_readv`` calls, decoding nothing
(R: the parts the Python walker reads, every thread's; what no decoder
reading every thread could remove), with a control thread that
wakes at that rate and burns the rest of the CPU perfd's last window took
per sample, touching nothing of the target (C), and with ``py-spy record
--nonblocking`` (S). Each window is compared with the mean of the two B
windows around it, so slow drifts of a shared host cancel; the slowdown is
the mean of those paired ratios with its 95% confidence interval (Student's
t). A is an A/A control: a window with nothing attached, paired exactly like
the others — its paired ratios' standard deviation is the noise of one
window, what a user watching the target's throughput window by window sees
with nothing attached. P close to C means the cost is CPU taken, not reads;
T is what is left with no work at all. Every window also reads the CPU the
target's threads got and their run-queue wait (schedstat): a second table
prints, per column, the CPU the target lost against the baselines around it
— the same slowdown, free of the host's speed, fine enough to see 1%.
The same table prints perfd's loss less the bare timer's in the same repeat,
with its CI: what perfd costs the target beyond waking at the rate, which
no sampler that sleeps between samples can avoid. ``--columns`` measures
only some windows (e.g. ``perfd,timer,aa``: more repeats in the same time).
Also prints perfd's CPU per sample and its maximum sustained rate (flat out,
one core), and what a sample's reads cost flat out as perfd plans them (each
thread's datastack chunks whole) against reading only what decoding needs
(each frame's header, one part per frame): whether reading less could lower R.

``--sweep 1000:0,30,60,120`` instead: only the CPU-only control at that rate,
burning each of those µs of work per wakeup (on top of the wakeup's own) —
how cheap a sample must be for the target not to notice.

Usage: python bench/sampler.py [--python 3.12] [--window 2] [--repeats 2] [--rates 100,250,1000]
                               [--columns aa,perfd,every,pywalk,timer,reads,control,pyspy]
                               [--sweep RATE:US,US,...]
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from perfd.cpython.discovery import locate_interpreter  # noqa: E402
from perfd.cpython.memory import ProcessMemory  # noqa: E402
from perfd.cpython.stacks import StackReader  # noqa: E402
from perfd.sampling import Sampler  # noqa: E402

PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))


def pyenv_python(version: str) -> str:
    """The newest pyenv CPython ``3.X``."""
    return str(sorted(PYENV.glob(f"versions/{version}.*/bin/python{version}"))[-1])


class BenchTarget:
    """The target process and its WORK lines, read on a thread."""

    def __init__(self, python: str) -> None:
        self.proc = subprocess.Popen([python, str(ROOT / "tests/targets/reader_bench.py")],
                                     stdout=subprocess.PIPE, text=True)
        assert "READY" in self.proc.stdout.readline()
        self.lines: queue.Queue[tuple[float, int]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            _, t, n = line.split()
            self.lines.put((float(t), int(n)))

    def measure(self, seconds: float) -> dict:
        """The next ``seconds``: work units per second (``work``), the CPU its threads
        got in cores (``target_cpu``) and their time waiting for a CPU in ms per second
        (``run_wait``). The work rate moves with the host's speed (on a shared host, by
        far more than 1% from one window to the next); the CPU the guest's scheduler
        gives the target does not, so a sampler that takes CPU the target wanted shows there."""
        while not self.lines.empty():
            self.lines.get_nowait()
        t0, n0 = self.lines.get(timeout=5)
        s0 = self.schedstat()
        deadline = time.monotonic() + seconds
        t1, n1 = t0, n0
        while time.monotonic() < deadline:
            t1, n1 = self.lines.get(timeout=5)
        s1 = self.schedstat()
        span = t1 - t0
        if span <= 0:
            return {"work": 0.0, "target_cpu": 0.0, "run_wait": 0.0}
        return {"work": (n1 - n0) / span, "target_cpu": (s1[0] - s0[0]) / 1e9 / span,
                "run_wait": (s1[1] - s0[1]) / 1e6 / span}

    def schedstat(self) -> tuple[int, int]:
        """ns on a CPU and ns runnable but waiting for one, summed over the target's threads."""
        run = wait = 0
        task = Path(f"/proc/{self.proc.pid}/task")
        for tid in os.listdir(task):
            try:
                fields = (task / tid / "schedstat").read_text().split()
            except OSError:
                continue  # a thread that ended just now
            run, wait = run + int(fields[0]), wait + int(fields[1])
        return run, wait

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def with_perfd(target: BenchTarget, rate: float, window: float, sampler: Sampler | None = None, *,
               walker: str = "auto", gil_gated: bool = True) -> dict:
    if sampler is None:
        sampler = Sampler(locate_interpreter(target.proc.pid), rate, walker=walker)
        sampler.gil_gated = gil_gated
    sampler.start()
    time.sleep(0.3)  # warm caches
    reader = sampler.reader
    assert reader is not None, "the sampler has not opened its reader after 0.3 s"
    start_total, start_failed = sampler.samples_total, sampler.samples_failed
    start_bytes = reader.bytes_read
    ids = sampler.native_ids()
    c0 = _thread_cpu(sampler)
    t0 = time.monotonic()
    seen = target.measure(window)
    elapsed = time.monotonic() - t0
    c1 = _thread_cpu(sampler)
    total, failed = sampler.samples_total - start_total, sampler.samples_failed - start_failed
    read = reader.bytes_read - start_bytes
    status = sampler.status()  # its achieved rate is from the samples' own times (they come in batches)
    used = status.walker
    assert sampler.native_ids() == ids, "a sampling thread ended mid-window: its CPU would be lost"
    sampler.stop()
    assert walker in ("auto", used), (walker, used)
    assert len(ids) == (2 if sampler.paced_in_c and used == "native" else 1), ids
    return {**seen, "walker": used, "achieved": status.achieved_hz, "cpu": 100 * (c1 - c0) / elapsed,
            "us_per_sample": 1e6 * (c1 - c0) / max(total, 1), "failed": failed / max(total, 1),
            "kb_per_sample": read / 1024 / max(total, 1)}


def _paced(target: BenchTarget, rate: float, window: float, each: Callable[[], object]) -> dict:
    """A control thread that wakes at ``rate`` and calls ``each``; the target's work
    rate meanwhile, and the thread's own CPU per wakeup."""
    stop = threading.Event()

    def loop() -> None:
        period, next_at = 1.0 / rate, time.monotonic()
        while not stop.is_set():
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            each()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(0.3)
    c0, t0 = _thread_cpu(thread), time.monotonic()
    seen = target.measure(window)
    cpu, elapsed = _thread_cpu(thread) - c0, time.monotonic() - t0
    stop.set()
    thread.join()
    return {**seen, "us_per_wake": 1e6 * cpu / (elapsed * rate)}


def with_cpu_only(target: BenchTarget, rate: float, window: float, burn_us: float) -> dict:
    """The control: perfd's wakeups and CPU per sample, without reading the target
    (``burn_us=0``: the wakeups alone)."""
    def burn() -> None:
        t0 = time.thread_time()
        while time.thread_time() - t0 < burn_us / 1e6:
            pass

    return _paced(target, rate, window, burn)


class _RecordingMemory(ProcessMemory):
    """Keeps the parts of every batched read, so a control can repeat a sample's reads."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        self.batches: list[list[tuple[int, int]]] = []

    def read_many(self, parts: list[tuple[int, int]]) -> list[bytes | None]:
        self.batches.append(list(parts))
        return super().read_many(parts)


def sample_reads(target: BenchTarget) -> list[list[tuple[int, int]]]:
    """The batched reads (address, size) of one steady-state sample."""
    mem = _RecordingMemory(target.proc.pid)
    reader = StackReader(locate_interpreter(target.proc.pid), mem)
    for _ in range(50):
        reader.sample()
    mem.batches.clear()
    reader.sample()
    return mem.batches


def with_reads_only(target: BenchTarget, rate: float, window: float) -> dict:
    """The control between the timer and perfd: wakes at the rate and repeats a
    sample's ``process_vm_readv`` calls, decoding nothing."""
    batches = sample_reads(target)
    mem = ProcessMemory(target.proc.pid)
    try:
        row = _paced(target, rate, window, lambda: [mem.read_many(parts) for parts in batches])
    finally:
        mem.close()
    return {**row, "bytes": sum(n for b in batches for _, n in b), "parts": sum(len(b) for b in batches)}


def _thread_cpu(thread: Sampler | threading.Thread) -> float:
    """CPU seconds of a sampler's threads (its own and its C loop's) or a control's
    thread, from /proc (works from any thread; schedstat counts ns, not ticks)."""
    total = 0
    for tid in thread.native_ids() if isinstance(thread, Sampler) else [thread.native_id]:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def with_pyspy(target: BenchTarget, rate: float, window: float) -> dict | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.path.exists(py_spy):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([py_spy, "record", "--pid", str(target.proc.pid), "--rate", str(int(rate)),
                                 "--nonblocking", "--format", "raw", "-o", f"{tmp}/out.txt"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ps = psutil.Process(proc.pid)
        time.sleep(0.5)
        c0 = sum(ps.cpu_times()[:2])
        t0 = time.monotonic()
        seen = target.measure(window)
        elapsed = time.monotonic() - t0
        c1 = sum(ps.cpu_times()[:2])
        proc.terminate()
        proc.wait(timeout=10)
    return {**seen, "cpu": 100 * (c1 - c0) / elapsed}


def max_rate(target: BenchTarget, seconds: float = 2.0, walker: str = "auto") -> tuple[float, float]:
    """Flat-out samples per second of CPU and µs of CPU per sample."""
    reader = StackReader(locate_interpreter(target.proc.pid), walker=walker)
    for _ in range(20):
        reader.sample()
    n = 0
    c0, t0 = time.thread_time(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        reader.sample()
        n += 1
    cpu = time.thread_time() - c0
    reader.close()
    return n / cpu, 1e6 * cpu / n


def read_plans(target: BenchTarget, rounds: int = 4000) -> list[tuple[str, int, int, float]]:
    """µs of CPU for one steady-state sample's reads, flat out, against the
    smallest exact alternative: every thread state and only each frame's header
    (what a sampler needs to decode), one part per frame, in one call."""
    reader = StackReader(locate_interpreter(target.proc.pid))
    frames = [f.frame_addr for t in reader.sample().threads for f in t.frames]
    headers = [(t, reader.layout.tstate_size) for t in reader.thread_states()] + [(a, 72) for a in frames]
    reader.close()
    mem = ProcessMemory(target.proc.pid)
    out = []
    try:
        for name, batches in (("datastack chunks (perfd)", sample_reads(target)), ("frame headers only", [headers])):
            for _ in range(100):
                for parts in batches:
                    mem.read_many(parts)
            c0 = time.thread_time()
            for _ in range(rounds):
                for parts in batches:
                    mem.read_many(parts)
            us = 1e6 * (time.thread_time() - c0) / rounds
            out.append((name, sum(len(b) for b in batches), sum(n for b in batches for _, n in b), us))
    finally:
        mem.close()
    return out


def paired(target: BenchTarget, window: float, base: list[dict], row: dict | None, into: list) -> None:
    """Follow a measured window with a baseline one (``close``)."""
    if row:
        close(row, base, target.measure(window), into)


def close(row: dict, base: list[dict], after: dict, into: list) -> None:
    """The row keeps, for each measured key, the baselines on either side of its
    window (``base[-1]`` before it, ``after`` after it) for ``slowdown`` and ``added``."""
    row["bases"] = {k: (base[-1][k], v) for k, v in after.items() if k in base[-1]}
    base.append(after)
    into.append(row)


# two-sided 95% Student's t quantiles by degrees of freedom (beyond 30: the normal's)
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23,
        12: 2.18, 15: 2.13, 20: 2.09, 25: 2.06, 30: 2.04}


def _paired(rows: list[dict], key: str, relative: bool = True) -> list[float]:
    """Each window against the mean of the baselines around it: % less, or (not
    ``relative``) how much more."""
    out = []
    for r in rows:
        b = statistics.mean(r["bases"][key])
        if not relative:
            out.append(r[key] - b)
        elif b:
            out.append(100 * (1 - r[key] / b))
    return out


def noise(rows: list[dict], key: str = "work", digits: int = 1) -> str:
    """The standard deviation of the A/A control's paired slowdowns: one window's noise."""
    paired = _paired(rows, key)
    return f"{statistics.stdev(paired):.{digits}f}" if len(paired) > 1 else "n/a"


def _mean_ci(values: list[float], digits: int) -> str:
    """Mean and its 95% confidence interval (Student's t)."""
    if not values:
        return "n/a"
    mean = statistics.mean(values)
    if len(values) < 2:
        return f"{mean:+.{digits}f}"
    df = len(values) - 1
    t = _T95[max(k for k in _T95 if k <= df)] if df <= 30 else 1.96
    half = t * statistics.stdev(values) / len(values) ** 0.5
    return f"{mean:+.{digits}f} [{mean - half:+.{digits}f}, {mean + half:+.{digits}f}]"


def slowdown(rows: list[dict], key: str = "work", digits: int = 1) -> str:
    """Mean paired slowdown, % (1 - value / mean of the neighbouring baselines), and its 95% CI."""
    return _mean_ci(_paired(rows, key), digits)


def added(rows: list[dict], key: str, digits: int = 1) -> str:
    """Mean paired increase (value - mean of the neighbouring baselines) and its 95% CI."""
    return _mean_ci(_paired(rows, key, relative=False), digits)


def spread(base: list[dict]) -> float:
    """How far apart the fastest and slowest baseline windows were, % of their mean."""
    work = [b["work"] for b in base]
    mean = statistics.mean(work)
    return 100 * (max(work) - min(work)) / mean if mean else 0.0


def sweep(target: BenchTarget, window: float, repeats: int, spec: str) -> int:
    """The CPU-only control alone at one rate, for several amounts of work per wakeup."""
    rate_s, _, burns_s = spec.partition(":")
    rate, burns = float(rate_s), [float(b) for b in burns_s.split(",")]
    base, rows = [target.measure(window)], {b: [] for b in burns}
    for _ in range(repeats):
        for b in burns:
            paired(target, window, base, with_cpu_only(target, rate, window, b), rows[b])
    print(f"{'rate':>6} | {'work µs/wake':>12} | {'CPU µs/wake':>11} | {'slowdown % (95% CI)':>21} | {'target CPU lost %':>23}")
    for b in burns:
        cpu = statistics.mean(r["us_per_wake"] for r in rows[b])
        print(f"{rate:>6.0f} | {b:>12.0f} | {cpu:>11.0f} | {slowdown(rows[b]):>21} | "
              f"{slowdown(rows[b], 'target_cpu', 2):>23}")
    print(f"baseline spread {spread(base):.1f}%")
    return 0


COLUMNS = ("aa", "perfd", "every", "pywalk", "timer", "reads", "control", "pyspy")  # measured in this order
# the target-CPU table's columns, in order, and their headings
CPU_COLUMNS = (("perfd", "perfd"), ("every", "every thread read"), ("pywalk", "perfd, Python walker"),
               ("timer", "timer only"), ("reads", "reads only"), ("control", "CPU-only control"), ("pyspy", "py-spy"),
               ("aa", "A/A (nothing attached)"))


def _avg(rows: list[dict], key: str, width: int, digits: int = 0, scale: float = 1.0) -> str:
    """The mean of ``key`` (times ``scale``) over a column's windows, or n/a for a column not measured."""
    text = f"{scale * statistics.mean(r[key] for r in rows):.{digits}f}" if rows else "n/a"
    return f"{text:>{width}}"


def versus(rows: list[dict], other: list[dict], key: str = "target_cpu", digits: int = 2) -> str:
    """How much more one column cost than another measured in the same repeats: each
    repeat's paired slowdown of ``rows`` minus that of ``other``, mean and 95% CI."""
    return _mean_ci([a - b for a, b in zip(_paired(rows, key), _paired(other, key))], digits)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default="3.12")
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rates", default="100,250,1000")
    ap.add_argument("--columns", default=",".join(COLUMNS),
                    help=f"which windows to measure, of {','.join(COLUMNS)} (control needs perfd and timer)")
    ap.add_argument("--sweep", default=None, metavar="RATE:US,US,...",
                    help="only the CPU-only control at RATE, for each µs of work per wakeup")
    args = ap.parse_args()
    python = pyenv_python(args.python)
    rates = [float(r) for r in args.rates.split(",")]
    columns = args.columns.split(",")
    if set(columns) - set(COLUMNS) or ("control" in columns and not {"perfd", "timer"} <= set(columns)):
        ap.error(f"--columns: some of {','.join(COLUMNS)}; control needs perfd and timer")
    target = BenchTarget(python)
    try:
        frames = sum(len(t.frames) for t in StackReader(locate_interpreter(target.proc.pid)).sample().threads)
        threads = len(StackReader(locate_interpreter(target.proc.pid)).sample().threads)
        print(f"target: CPython {args.python}, {threads} threads, {frames} frames; "
              f"windows of {args.window:g}s x {args.repeats}")
        if args.sweep:
            return sweep(target, args.window, args.repeats, args.sweep)
        for walker in ("native", "python"):
            flat_hz, flat_us = max_rate(target, walker=walker)
            print(f"perfd flat out, {walker} walker: {flat_us:.0f} µs CPU per sample"
                  f" -> max sustained {flat_hz:,.0f} samples/s on one core")
        for name, n_parts, n_bytes, us in read_plans(target):
            print(f"  a sample's reads as {name}: {n_parts} parts, {n_bytes:,} bytes, {us:.1f} µs flat out")
        print()
        header = (f"{'rate':>6} | {'perfd Hz':>9} {'µs/smp':>7} {'KB/smp':>6} {'CPU %':>6} {'fail %':>6} {'slowdown % (95% CI)':>21} | "
                  f"{'µs/smp':>7} {'KB/smp':>6} {'every thread read':>21} | {'µs/smp':>7} {'perfd, Python walker':>21} | {'µs/wake':>7} {'timer only':>21} | {'µs/wake':>7} {'reads only':>21} | {'CPU-only control':>21} | {'py-spy CPU %':>12} {'slowdown % (95% CI)':>21} | "
                  f"{'A/A (nothing attached)':>22} {'noise SD %':>10} | {'baseline spread %':>17}")
        print(header)
        print("-" * len(header))
        cpu_lines = []
        for rate in rates:
            base = [target.measure(args.window)]
            rows: dict[str, list[dict]] = {c: [] for c in COLUMNS}
            measure = {
                "aa": lambda: target.measure(args.window),
                "perfd": lambda: with_perfd(target, rate, args.window),
                "every": lambda: with_perfd(target, rate, args.window, gil_gated=False),
                "pywalk": lambda: with_perfd(target, rate, args.window, walker="python"),
                "timer": lambda: with_cpu_only(target, rate, args.window, 0.0),
                "reads": lambda: with_reads_only(target, rate, args.window),
                # the control's own wakeups cost what the timer's did: it burns the rest of perfd's CPU
                "control": lambda: with_cpu_only(target, rate, args.window, max(
                    0.0, rows["perfd"][-1]["us_per_sample"] - rows["timer"][-1]["us_per_wake"])),
                "pyspy": lambda: with_pyspy(target, rate, args.window),
            }
            for _ in range(args.repeats):
                for column in COLUMNS:  # whichever are chosen
                    if column in columns:
                        paired(target, args.window, base, measure[column](), rows[column])
            perfd, everyone, pywalk, timer, reads, spy, idle = (
                rows[c] for c in ("perfd", "every", "pywalk", "timer", "reads", "pyspy", "aa"))
            print(f"{rate:>6.0f} | {_avg(perfd, 'achieved', 9, 1)} {_avg(perfd, 'us_per_sample', 7)} "
                  f"{_avg(perfd, 'kb_per_sample', 6, 1)} {_avg(perfd, 'cpu', 6, 1)} "
                  f"{_avg(perfd, 'failed', 6, 2, scale=100)} {slowdown(perfd):>21} | "
                  f"{_avg(everyone, 'us_per_sample', 7)} {_avg(everyone, 'kb_per_sample', 6, 1)} {slowdown(everyone):>21} | "
                  f"{_avg(pywalk, 'us_per_sample', 7)} {slowdown(pywalk):>21} | "
                  f"{_avg(timer, 'us_per_wake', 7)} {slowdown(timer):>21} | "
                  f"{_avg(reads, 'us_per_wake', 7)} {slowdown(reads):>21} | {slowdown(rows['control']):>21} | "
                  f"{_avg(spy, 'cpu', 12, 1)} {slowdown(spy):>21} | {slowdown(idle):>22} {noise(idle):>10} | "
                  f"{spread(base):>17.1f}", flush=True)
            cpu_lines.append(f"{rate:>6.0f} | " + " | ".join(
                f"{slowdown(rows[c], 'target_cpu', 2):>21}" for c, _ in CPU_COLUMNS)
                + f" {noise(idle, 'target_cpu', 2):>6} | {added(perfd, 'run_wait'):>21} {added(idle, 'run_wait'):>21} | "
                f"{versus(perfd, timer):>21} | {statistics.mean(b['target_cpu'] for b in base):>8.3f}")
        # the CPU the target's threads got, against the baselines around each window (same windows)
        print("\ntarget CPU lost, % (95% CI); run-queue wait added, ms per s; perfd - timer: perfd's loss"
              " less the timer's in the same repeat (what perfd costs beyond waking at the rate)")
        header = (f"{'rate':>6} | " + " | ".join(f"{name:>21}" for _, name in CPU_COLUMNS)
                  + f" {'SD %':>6} | {'wait added: perfd':>21} {'A/A':>21} | {'perfd - timer':>21} | {'cores':>8}")
        print(header)
        print("-" * len(header))
        print("\n".join(cpu_lines))
        if perfd:
            print(f"\nperfd's walker (P): {perfd[-1]['walker']}")
        if reads:
            print(f"reads only: a sample's {reads[-1]['parts']} parts, {reads[-1]['bytes']:,} bytes")
    finally:
        target.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
