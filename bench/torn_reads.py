#!/usr/bin/env python3
"""Samples with a torn (suspect) thread vs walks per sample, on a target built to tear.

Target: tests/targets/reader_churn.py (two threads recursing to random depths,
two asyncio loops switching tasks every few µs) under each pyenv CPython. The
sampler runs at 1 kHz for a window with the reader's walks-per-sample limit
(``perfd.cpython.stacks.ATTEMPTS``) at each value given, interleaved, and the
table shows the share of samples that still had a thread given up on (and so
count as failed in ``perfd.sampler``).

    .venv/bin/python bench/torn_reads.py [--seconds 3] [--attempts 3,5] [--versions 3.11,3.12,3.13]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from perfd.cpython import stacks  # noqa: E402
from perfd.cpython.discovery import locate_interpreter  # noqa: E402
from perfd.sampling import Sampler  # noqa: E402

PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))


def failed_share(pid: int, attempts: int, seconds: float) -> tuple[float, int]:
    stacks.ATTEMPTS = attempts  # read by StackReader.sample on every call
    sampler = Sampler(locate_interpreter(pid), 1000.0)
    sampler.start()
    time.sleep(seconds)
    sampler.stop()
    return sampler.samples_failed / max(1, sampler.samples_total), sampler.samples_total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--attempts", default="3,5")
    ap.add_argument("--versions", default="3.11,3.12,3.13")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    attempts = [int(a) for a in args.attempts.split(",")]
    default = stacks.ATTEMPTS
    print(f"failed samples (a thread still torn after N walks), 1 kHz, {args.rounds} x {args.seconds:g} s per cell")
    print(f"{'CPython':8}" + "".join(f" {f'N={a}' + (' (default)' if a == default else ''):>16}" for a in attempts))
    for version in args.versions.split(","):
        python = str(sorted(PYENV.glob(f"versions/{version}.*/bin/python{version}"))[-1])
        proc = subprocess.Popen([python, str(ROOT / "tests/targets/reader_churn.py")], stdout=subprocess.PIPE, text=True)
        try:
            assert "READY" in proc.stdout.readline()
            got: dict[int, list[tuple[float, int]]] = {a: [] for a in attempts}
            for r in range(args.rounds):
                for a in attempts[r % len(attempts):] + attempts[: r % len(attempts)]:
                    got[a].append(failed_share(proc.pid, a, args.seconds))
        finally:
            proc.kill()
            proc.wait()
        cells = []
        for a in attempts:
            total = sum(n for _, n in got[a])
            failed = sum(share * n for share, n in got[a])
            cells.append(f"{100 * failed / max(1, total):15.2f}%")
        print(f"{version:8}" + "".join(f" {c:>16}" for c in cells))
    stacks.ATTEMPTS = default


if __name__ == "__main__":
    main()
