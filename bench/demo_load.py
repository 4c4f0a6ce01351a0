"""Does the demo keep up on this machine, and what does it cost?

Starts the demo (default rate, one viewer) and measures two phases side by
side on the same processes: the demo alone, then with ``perfd attach`` at
``--rate`` Hz. Per phase: frame rate, queue depth (max over the phase),
each node's mean exec time (ground truth), and CPU per process (% of one
core, from each process's own CPU time over the phase).

    .venv/bin/python bench/demo_load.py [--seconds 15] [--hz 10] [--points 65536] [--clients 1] [--rate 250]
                                        [--perfd-arg=--no-capture ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

import psutil

from perfd.demo.launcher import Demo, DemoSpec, free_port


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    frames: int = 0
    max_queue: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # process -> % of one core
    exec_ms: dict[str, float] = field(default_factory=dict)


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def measure(name: str, demo: Demo, procs: dict[str, psutil.Process], seconds: float) -> Phase:
    phase = Phase(name)
    before = {k: cpu_seconds(p) for k, p in procs.items()}
    frames0 = demo.get_json("/api/status")["frames_received"]
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        phase.max_queue = max(phase.max_queue, demo.get_json("/api/status")["queue_depth"])
        time.sleep(0.5)
    phase.seconds = time.monotonic() - start
    phase.frames = demo.get_json("/api/status")["frames_received"] - frames0
    phase.cpu = {k: (cpu_seconds(p) - before[k]) / phase.seconds * 100 for k, p in procs.items()}
    for node in demo.get_json("/api/metrics")["dag"]["nodes"]:
        if node["calls_total"]:
            phase.exec_ms[node["node_name"]] = node["avg_exec_ms"]
    return phase


def wait_attached(url: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/api/health/performance", timeout=2) as r:
                health = json.load(r)
            if health.get("metrics_enabled"):
                return health
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"perfd did not attach within {timeout}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--points", type=int, default=65_536)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--rate", type=float, default=250.0, help="perfd sampling rate")
    parser.add_argument("--perfd-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for perfd attach (repeat), e.g. --perfd-arg=--no-capture")
    args = parser.parse_args()

    spec = DemoSpec(app_port=free_port(), hz=args.hz, points=args.points, clients=args.clients)
    with Demo(spec) as demo:
        procs = {"demo server": psutil.Process(demo.pid), "sensor": psutil.Process(demo.sensor_pid)}
        for i, viewer in enumerate(demo.viewers):
            procs[f"viewer {i}"] = psutil.Process(viewer.pid)
        time.sleep(2.0)  # warm-up: imports done, caches hot
        phases = [measure("demo alone", demo, procs, args.seconds)]
        port = free_port()
        perfd = subprocess.Popen([sys.executable, "-m", "perfd", "attach", str(demo.pid), "--port", str(port),
                                  "--rate", f"{args.rate:g}", *args.perfd_arg], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_attached(f"http://127.0.0.1:{port}")
            procs["perfd"] = psutil.Process(perfd.pid)
            label = " ".join([f"+ perfd @ {args.rate:g} Hz", *args.perfd_arg])
            phases.append(measure(label, demo, procs, args.seconds))
            # sources start in the background after attach: report what ran during the phase
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health/performance", timeout=5) as r:
                sources = json.load(r).get("perfd", {}).get("sources", {})
        finally:
            perfd.terminate()
            perfd.wait(timeout=20)

    print(f"demo: {args.hz:g} Hz x {args.points} points, {args.clients} viewer(s); "
          f"{args.seconds:g} s per phase on {psutil.cpu_count()} cores")
    print("perfd sources: " + ", ".join(f"{k}={'on' if v.get('active') else 'off'}" for k, v in sources.items()))
    names = [p.name for p in phases]
    width = max(24, *(len(n) + 2 for n in names))
    print(f"\n{'':<40}" + "".join(f"{n:>{width}}" for n in names))
    rows = [("frames/s", [p.frames / p.seconds for p in phases], "{:.2f}"),
            ("max queue depth", [p.max_queue for p in phases], "{:d}")]
    for node in phases[0].exec_ms:
        rows.append((f"exec ms: {node}", [p.exec_ms.get(node, 0.0) for p in phases], "{:.2f}"))
    for proc in procs:
        rows.append((f"CPU %: {proc}", [p.cpu.get(proc) for p in phases], "{:.1f}"))
    rows.append(("CPU %: total", [sum(p.cpu.values()) for p in phases], "{:.1f}"))
    for label, values, fmt in rows:
        cells = "".join(f"{'-' if v is None else fmt.format(v):>{width}}" for v in values)
        print(f"{label[:40]:<40}{cells}")


if __name__ == "__main__":
    main()
