#!/usr/bin/env python3
"""perfd's memory over a long attach: does anything grow without bound?

The default demo (10 Hz x 65,536 points, one viewer) runs; a perfd engine with
every source attaches to it in this process and a snapshot is assembled every
second, as a server would. After a warm-up minute, every ``--every`` seconds
the bench prints this process's RSS and Python object count against the
warm-up mark and the object types that grew most. perfd's caches are bounded
(code objects, frame records, profiles): their growth must flatten, not climb.

Usage: python bench/soak.py [--minutes 20] [--every 60] [--rate 250]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from demo_helpers import running_demo  # noqa: E402
from perfd.engine import AttachOptions, Engine  # noqa: E402
from perfd.registry import Registry  # noqa: E402
from perfd.snapshot import dump  # noqa: E402


def object_counts() -> Counter:
    gc.collect()
    return Counter(type(o).__name__ for o in gc.get_objects())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--every", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=250.0)
    args = ap.parse_args()
    me = psutil.Process()
    with running_demo(hz=10, clients=1) as demo:
        registry = Registry()
        engine = Engine(registry, AttachOptions(rate_hz=args.rate))
        engine.attach(demo.pid)
        stop = threading.Event()

        def serve() -> None:  # what a server does once a second
            while not stop.wait(1.0):
                json.dumps(dump(registry.snapshot()))

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        try:
            time.sleep(60)
            base, rss0, t0 = object_counts(), me.memory_info().rss, time.monotonic()
            print(f"demo PID {demo.pid}, sampler at {args.rate:g} Hz; after a 60 s warm-up: "
                  f"RSS {rss0 / 2**20:.1f} MiB, {sum(base.values()):,} objects")
            print(f"{'min':>5} | {'RSS +MiB':>8} | {'objects +':>9} | types that grew most")
            while time.monotonic() - t0 < args.minutes * 60:
                time.sleep(args.every)
                counts = object_counts()
                grew = sorted(((k, counts[k] - base[k]) for k in counts if counts[k] > base[k]), key=lambda kv: -kv[1])
                print(f"{(time.monotonic() - t0) / 60:>5.1f} | {(me.memory_info().rss - rss0) / 2**20:>8.1f} | "
                      f"{sum(counts.values()) - sum(base.values()):>9,} | "
                      + ", ".join(f"{k} +{n}" for k, n in grew[:5]), flush=True)
            print("sources:", {k: v.active for k, v in registry.perfd_status().sources.items()})
        finally:
            stop.set()
            engine.detach()
    return 0


if __name__ == "__main__":
    sys.exit(main())
