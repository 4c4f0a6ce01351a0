"""What limits call tracking: perfd's own load, and the look period.

Two experiments, each an in-process engine attached to a demo, modes
interleaved in rounds (the machine's noise hits every mode alike):

1. Coverage (calls the tracker saw / exact calls from app state) per node on
   the default demo with the stack sampler at 250 Hz with uprobes, at 250 Hz
   without, and at 10 Hz without — how much of what the tracker misses is
   perfd's own threads competing for its GIL — and with the tracker at
   2 kHz instead of 1 kHz: how much is the look period. Also the tracker's
   worst gap.
2. On ``--chain 12``: perfd's mean exec time minus the truth's, per node at
   the top of the chain, with the tracker at 1 kHz and at 333 Hz — whether
   the timing offset is a constant or follows the look period.

    .venv/bin/python bench/tracking.py [--rounds 2] [--phase-s 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import perfd.reconstruction.dag as dag_module
from perfd.demo.launcher import Demo, DemoSpec, free_port
from perfd.engine import AttachOptions, Engine
from perfd.registry import Registry

_DEFAULT_TRACK_HZ = dag_module.TRACK_HZ


def _attached(demo: Demo, rate_hz: float, uprobes: bool, track_hz: float | None = None) -> Engine:
    dag_module.TRACK_HZ = track_hz or _DEFAULT_TRACK_HZ  # taken by the DAG source when attach builds it
    try:
        engine = Engine(Registry(), AttachOptions(rate_hz=rate_hz, uprobes=uprobes, capture=False))
        engine.attach(demo.pid)
    finally:
        dag_module.TRACK_HZ = _DEFAULT_TRACK_HZ
    return engine


def _perfd(engine: Engine) -> dict:
    return engine.registry.perfd_status().model_dump()


def coverage(rounds: int, phase_s: float) -> None:
    modes = [(250.0, True, None), (250.0, False, None), (10.0, False, None), (250.0, False, 2000.0)]
    cover: dict[tuple, list[float]] = {}
    gaps: dict[tuple, list[float]] = {}
    names: dict[str, str] = {}
    demo = Demo(DemoSpec(app_port=free_port(), hz=10, points=65536, clients=1)).start()
    try:
        time.sleep(3)
        for _ in range(rounds):
            for mode in modes:
                engine = _attached(demo, *mode)
                try:
                    time.sleep(4)  # calls in flight at attach are not counted
                    before = _perfd(engine).get("dag_calls") or {}
                    time.sleep(phase_s)
                    status = _perfd(engine)
                finally:
                    engine.detach("bench phase over")
                after = status.get("dag_calls") or {}
                gaps.setdefault(mode, []).append(status["call_tracking"]["max_gap_ms"])
                for node in demo.get_json("/api/metrics")["dag"]["nodes"]:
                    nid = node["node_id"]
                    a, b = after.get(nid), before.get(nid) or {"observed_calls": 0, "exact_calls": 0}
                    if a and a["exact_calls"] > b["exact_calls"]:
                        names[nid] = node["node_name"]
                        seen = a["observed_calls"] - b["observed_calls"]
                        cover.setdefault((nid, mode), []).append(seen / (a["exact_calls"] - b["exact_calls"]))
    finally:
        demo.stop()
    label = {m: f"{m[0]:.0f} Hz{' + uprobes' if m[1] else ''}{f', track {m[2]:.0f}' if m[2] else ''}" for m in modes}
    print(f"1. coverage, default demo (10 Hz x 65,536 points, one viewer), {rounds} x {phase_s:g} s per mode")
    print(f"{'node':<27}" + "".join(f"{label[m]:>26}" for m in modes))
    for nid, name in names.items():
        print(f"{name:<27}" + "".join(f"{statistics.fmean(cover.get((nid, m), [float('nan')])):>26.2f}" for m in modes))
    print(f"{'tracker worst gap (ms)':<27}" + "".join(f"{max(gaps[m]):>26.1f}" for m in modes))
    print()


def chain_offset(rounds: int, phase_s: float) -> None:
    rates = (1000.0, 333.0)
    offsets: dict[tuple, list[float]] = {}
    names: dict[str, str] = {}
    demo = Demo(DemoSpec(app_port=free_port(), hz=5, points=16384, clients=0, chain=12)).start()
    try:
        time.sleep(4)
        for _ in range(rounds):
            for hz in rates:
                engine = _attached(demo, 250.0, False, hz)
                try:
                    time.sleep(phase_s)
                    ours = {n.node_id: n.avg_exec_ms for n in engine.registry.snapshot().dag.nodes}
                finally:
                    engine.detach("bench phase over")
                for node in demo.get_json("/api/metrics")["dag"]["nodes"][:6]:
                    if node["node_id"] in ours and node["avg_exec_ms"]:
                        names[node["node_id"]] = node["node_name"]
                        offsets.setdefault((node["node_id"], hz), []).append(ours[node["node_id"]] - node["avg_exec_ms"])
    finally:
        demo.stop()
    print(f"2. perfd mean exec minus truth (ms), --chain 12 (5 Hz x 16,384 points), {rounds} x {phase_s:g} s per rate")
    print(f"{'node':<27}" + "".join(f"{f'tracker {hz:.0f} Hz':>20}" for hz in rates))
    for nid, name in names.items():
        print(f"{name:<27}" + "".join(
            f"{' '.join(f'{x:+.2f}' for x in offsets.get((nid, hz), [])):>20}" for hz in rates))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--phase-s", type=float, default=15.0)
    args = ap.parse_args()
    coverage(args.rounds, args.phase_s)
    chain_offset(args.rounds, args.phase_s)


if __name__ == "__main__":
    main()
