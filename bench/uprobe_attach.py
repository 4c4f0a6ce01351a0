"""Attach and detach time of perfd's Open3D probe set: per-probe bcc uprobes vs uprobe_multi links.

One real target (tests/targets/open3d_ops.py; ``--busy`` makes it run its op
loop, so probes fire while they are removed). Its Open3D probe points are
resolved once; then, in interleaved rounds, the same entry + return probe set
is attached and detached:

- ``per-probe``: one perf-event uprobe per point and direction, attached the
  way ``BccBackend`` does, detached the way ``bcc.BPF.cleanup`` does;
- ``multi``: one uprobe_multi link for the entries, one for the returns,
  closed one after the other;
- ``multi-par``: the same two links closed concurrently (``detach_all``).

Program compilation is outside every timing. Grace periods stretch with the
host's load, so the load average is printed with the table.

    .venv/bin/python bench/uprobe_attach.py [--rounds 3] [--busy]
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

from perfd.uprobes.bcc_backend import BccBackend, compile_program, load_functions, program_text
from perfd.uprobes.multi import BPF_TRACE_UPROBE_MULTI, attach_multi, detach, detach_all, uprobe_multi_supported
from perfd.uprobes.spec import load_spec
from perfd.uprobes.symbols import resolve

TARGET = Path(__file__).resolve().parent.parent / "tests" / "targets" / "open3d_ops.py"

# One entry program for every op: the op id travels as the link's cookie.


def per_probe(pid, resolution, bpf) -> tuple[float, float]:
    backend = BccBackend(pid, resolution, on_event=lambda _e: None)
    backend._bpf = bpf
    points = resolution.points
    t0 = time.perf_counter()
    for i, p in enumerate(points):
        backend._attach(1, i, p.file_offset, "on_return")
    for i, p in enumerate(points):
        backend._attach(0, i, p.file_offset, f"enter_{p.op_id}")
    t1 = time.perf_counter()
    for name in list(bpf.uprobe_fds):
        bpf.detach_uprobe_event(name)
    return t1 - t0, time.perf_counter() - t1


def multi(pid, resolution, entry_fd, return_fd, parallel: bool) -> tuple[float, float]:
    offsets = [p.file_offset for p in resolution.points]
    cookies = [p.op_id for p in resolution.points]
    path = resolution.host_library
    t0 = time.perf_counter()
    links = [attach_multi(return_fd, path, offsets, cookies, pid, retprobe=True),
             attach_multi(entry_fd, path, offsets, cookies, pid, retprobe=False)]
    t1 = time.perf_counter()
    if parallel:
        detach_all(links[::-1])
    else:
        for fd in links[::-1]:  # entries first: no entry is left without its return
            detach(fd)
    return t1 - t0, time.perf_counter() - t1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--busy", action="store_true", help="the target runs its Open3D op loop meanwhile")
    ap.add_argument("--modes", default="per-probe,multi,multi-par",
                    help="comma-separated subset (per-probe dominates the run time)")
    args = ap.parse_args()
    if not uprobe_multi_supported():
        raise SystemExit("this kernel cannot create uprobe_multi links (Linux >= 6.6 and CAP_BPF needed)")

    import bcc  # noqa: PLC0415

    proc = subprocess.Popen([sys.executable, str(TARGET), "--loop", "--points", "5000"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert "READY" in proc.stdout.readline()
        if args.busy:  # start the op loop; its FRAME lines are read and dropped
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            os.kill(proc.pid, signal.SIGUSR1)
        resolution = resolve(proc.pid, load_spec())
        if not resolution.found:
            raise SystemExit(f"no Open3D probe points found in the target (missing: {', '.join(resolution.missing)})")
        op_ids = [p.op_id for p in resolution.points]
        n = len(resolution.points)
        classic_bpf = compile_program(proc.pid, op_ids)
        load_functions(classic_bpf, op_ids)
        multi_bpf = bcc.BPF(text=program_text(op_ids), cflags=[f"-DPERFD_TGID={proc.pid}"])
        entry_fd = multi_bpf.load_func(b"enter_multi", bcc.BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI).fd
        return_fd = multi_bpf.load_func(b"on_return_multi", bcc.BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI).fd

        modes = {
            "per-probe": lambda: per_probe(proc.pid, resolution, classic_bpf),
            "multi": lambda: multi(proc.pid, resolution, entry_fd, return_fd, parallel=False),
            "multi-par": lambda: multi(proc.pid, resolution, entry_fd, return_fd, parallel=True),
        }
        modes = {m: run for m, run in modes.items() if m in args.modes.split(",")}
        times: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
        loads = []
        for _ in range(args.rounds):
            for mode, run in modes.items():
                times[mode].append(run())
                loads.append(os.getloadavg()[0])
        classic_bpf.cleanup()
        multi_bpf.cleanup()
    finally:
        proc.kill()
        proc.wait()

    first = next(iter(times))
    print(f"target: {TARGET.name} ({'running its op loop' if args.busy else 'idle'}), {n} Open3D probe points in "
          f"{os.path.basename(resolution.library)} = {2 * n} uprobes (entry + return); {args.rounds} rounds, "
          f"interleaved; load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs")
    print(f"{'mode':10} {'attach median':>14} {'detach median':>14} {'detach min':>11} {'detach max':>11} "
          f"{'detach vs ' + first:>20}")
    base = statistics.median(d for _, d in times[first])
    for mode, samples in times.items():
        att = statistics.median(a for a, _ in samples) * 1e3
        det = [d * 1e3 for _, d in samples]
        med = statistics.median(det)
        print(f"{mode:10} {att:11.1f} ms {med:11.1f} ms {min(det):8.1f} ms {max(det):8.1f} ms "
              f"{base * 1e3 / med:18.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
