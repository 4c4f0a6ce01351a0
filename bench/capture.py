"""Capture under load: WebSocket traffic on loopback vs the server's own counts, and perfd's CPU per MB.

For each scenario a real aiohttp server (tests/targets/capture_server.py)
streams paced binary messages to viewer processes; perfd's CaptureSource runs
in *this* process, which does nothing else, so this process's CPU time over
the run is the capture's cost. Prints one row per scenario: wire rate, whether
message/byte totals match the server's (or how many packets the kernel
dropped), and CPU as % of one core and ms per MB of WebSocket payload.

    .venv/bin/python bench/capture.py [--seconds 10] [--rate-mb 50] [--viewers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from perfd.capture.source import CaptureSource
from perfd.registry import Registry
from perfd.snapshot import TargetStatus

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ROOT / "tests" / "targets"
MB = 1_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_scenario(size: int, rate_mb: float, seconds: float, viewers: int, capture: bool = True) -> dict:
    port = free_port()
    server = subprocess.Popen([sys.executable, str(TARGETS / "capture_server.py"), str(port)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert "READY" in server.stdout.readline()
        registry = Registry()
        registry.attach(TargetStatus(pid=server.pid, python="3", exe=sys.executable, attached_at=time.time()))
        source = CaptureSource(server.pid, registry)
        if capture:
            source.start()
        try:
            per_viewer = rate_mb * MB / viewers
            cpu0, t0 = cpu_seconds(), time.monotonic()
            clients = [
                subprocess.Popen([sys.executable, str(TARGETS / "capture_load_client.py"),
                                  f"ws://127.0.0.1:{port}/ws/load", str(per_viewer), str(seconds), str(size)],
                                 stdout=subprocess.PIPE, text=True)
                for _ in range(viewers)
            ]
            stream_secs = 0.0
            for c in clients:
                out, _ = c.communicate(timeout=seconds * 3 + 30)
                stream_secs = max(stream_secs, float(out.split()[-1]))
            wall = time.monotonic() - t0
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/truth", timeout=5) as r:
                truth = json.load(r)["ws"]["load"]
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                topic = registry.snapshot().websocket.topics.get("load")
                if topic and topic.total_messages >= truth["messages"]:
                    break
                time.sleep(0.05)
            time.sleep(1.2)  # one more refresh: kernel counters
            cpu = cpu_seconds() - cpu0
            status = source.status()
        finally:
            source.stop()
    finally:
        server.kill()
        server.wait()
    topic = registry.snapshot().websocket.topics.get("load") if capture else None
    got_msgs = topic.total_messages if topic else 0
    got_bytes = topic.total_bytes if topic else 0
    return {
        "size": size,
        "mb_per_s": truth["bytes"] / MB / stream_secs,
        "seconds": stream_secs,
        "truth_msgs": truth["messages"],
        "perfd_msgs": got_msgs,
        "truth_mb": truth["bytes"] / MB,
        "perfd_mb": got_bytes / MB,
        "exact": got_msgs == truth["messages"] and got_bytes == truth["bytes"],
        "drops": status.kernel_drops,
        "lost_bytes": status.lost_bytes,
        "cpu_pct": cpu / wall * 100,
        "cpu_ms_per_mb": cpu * 1000 / max(truth["bytes"] / MB, 1e-9),
        "packets": status.packets,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate-mb", type=float, default=50.0, help="total WebSocket payload MB/s")
    ap.add_argument("--viewers", type=int, default=2)
    ap.add_argument("--sizes", default="1048576,65536,4096", help="message sizes, comma-separated")
    ap.add_argument("--overhead", action="store_true",
                    help="also: the target's unpaced maximum rate with capture off and on, side by side")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/capture.py needs root (AF_PACKET, setns)")
    if args.overhead:
        print_overhead(args.seconds / 2, args.viewers)
    rows = [run_scenario(int(s), args.rate_mb, args.seconds, args.viewers) for s in args.sizes.split(",")]
    head = (f"{'msg size':>9} {'MB/s':>6} {'secs':>5} {'msgs truth':>10} {'msgs perfd':>10} {'MB truth':>9} "
            f"{'MB perfd':>9} {'exact':>5} {'drops':>6} {'lost B':>8} {'pkts':>7} {'CPU %':>6} {'CPU ms/MB':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['size']:>9} {r['mb_per_s']:>6.1f} {r['seconds']:>5.1f} {r['truth_msgs']:>10} {r['perfd_msgs']:>10} "
              f"{r['truth_mb']:>9.2f} {r['perfd_mb']:>9.2f} {'yes' if r['exact'] else 'NO':>5} {r['drops']:>6} "
              f"{r['lost_bytes']:>8} {r['packets']:>7} {r['cpu_pct']:>6.1f} {r['cpu_ms_per_mb']:>9.3f}")
    print("\nMB/s: WebSocket payload over the streaming time (first to last message at the viewers).")
    print("CPU: this process (capture thread + an idle main thread) over the whole run incl. setup, "
          "% of one core; ms per MB of payload.")


def print_overhead(seconds: float, viewers: int, size: int = 65536) -> None:
    """The target flat out (as fast as its viewers read), without and with capture, alternating."""
    runs = {False: [], True: []}
    for capture in (False, True, False, True):
        runs[capture].append(run_scenario(size, 1e6, seconds, viewers, capture=capture))
    off = max(r["mb_per_s"] for r in runs[False])
    on = max(r["mb_per_s"] for r in runs[True])
    drops = sum(r["drops"] for r in runs[True])
    exact = all(r["exact"] for r in runs[True])
    print(f"target flat out, {size}-byte messages, {viewers} viewers, best of 2 each:")
    print(f"  capture off {off:8.1f} MB/s")
    print(f"  capture on  {on:8.1f} MB/s  ({on / off * 100:.0f}% of off; kernel drops {drops}; "
          f"counts {'exact' if exact else 'short by the drops'}; CPU "
          f"{max(r['cpu_ms_per_mb'] for r in runs[True]):.2f} ms/MB)")
    print("  (2 shared cores: the target, its viewers and perfd compete for CPU; this is the worst case)\n")


if __name__ == "__main__":
    main()
