"""Cost of the demo's ground-truth collector, relative to frame processing.

The collector must be negligible (< 0.2% of frame processing time) or it
would distort the numbers perfd is judged against. Two measurements, side
by side in one run:

1. per-event cost x events per frame / frame time: each collector call
   (node start/finish, Open3D op, WebSocket send, HTTP request) timed in a
   tight loop, multiplied by how many of each one real frame produces, over
   the measured processing time of a frame — the acceptance number;
2. A/B: the real DAG (Open3D work, in-process, no server) driven with the
   collector on and off in interleaved rounds — an honest but noisy check
   (frame time varies by more than the collector costs).

    .venv/bin/python bench/ground_truth_cost.py [--frames 60] [--rounds 4] [--points 65536]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from perfd.demo import dag
from perfd.demo.config import DemoConfig
from perfd.demo.metrics.collector import DisabledCollector, GroundTruthCollector
from perfd.demo.sensor import SceneGenerator
from perfd.demo.services.nodes.manager import NodeManager
from perfd.demo.services.nodes.routing import DataRouter
from perfd.demo.services.websocket.manager import ConnectionManager

BAR = 0.002  # 0.2 %


def build(collector: GroundTruthCollector, config: DemoConfig) -> tuple[NodeManager, DataRouter]:
    manager = NodeManager()
    router = DataRouter(manager, collector)
    dag.build(config, manager, router, ConnectionManager(collector), collector)
    return manager, router


async def drive(collector: GroundTruthCollector, config: DemoConfig, frames: list) -> list[float]:
    """Push frames through the DAG as the queue listener does; per-frame wall ms."""
    manager, router = build(collector, config)
    sensor = manager.nodes[manager.sensor_id]
    times = []
    period = 1.0 / config.hz
    for i, points in enumerate(frames):
        start = time.perf_counter()
        await sensor.publish({"points": points, "frame_id": i, "timestamp": time.time()})
        elapsed = time.perf_counter() - start
        times.append(elapsed * 1000)
        await asyncio.sleep(max(0.0, period - elapsed))  # throttle timing sees the real frame rate
    return times


def per_call_ns(fn, n: int = 200_000) -> float:  # noqa: ANN001
    start = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - start) / n


def event_costs() -> dict[str, float]:
    c = GroundTruthCollector()
    payload = {"points": [0] * 10}

    def node_call() -> None:
        c.node_started("node", payload)
        c.node_finished("node")

    return {
        "node call (start+finish)": per_call_ns(node_call),
        "open3d op": per_call_ns(lambda: c.op_done("node", "voxel_down_sample", time.monotonic_ns())),
        "ws send": per_call_ns(lambda: c.ws_sent("topic", 1000)),
        "http request": per_call_ns(lambda: c.http_done("GET", "/api/status", 200, time.monotonic_ns())),
    }


def events_per_frame(collector: GroundTruthCollector, frames: int, clients: int, topics: int,
                     polls_per_frame: float) -> dict[str, float]:
    node_calls = sum(s.calls for s in collector.nodes.values())
    op_calls = sum(op.calls for s in collector.nodes.values() for op in s.ops.values())
    return {
        "node call (start+finish)": node_calls / frames,
        "open3d op": op_calls / frames,
        "ws send": clients * topics,  # upper bound: every topic every frame
        "http request": polls_per_frame,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60, help="frames per round")
    parser.add_argument("--rounds", type=int, default=4, help="on/off rounds, interleaved")
    parser.add_argument("--points", type=int, default=65_536)
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=1)
    args = parser.parse_args()

    config = DemoConfig(hz=args.hz, points=args.points)
    scene = SceneGenerator(args.points, seed=1)
    frames = [scene.frame() for _ in range(args.frames)]
    on_ms: list[float] = []
    off_ms: list[float] = []
    last_on = None
    for _ in range(args.rounds):
        off_ms += asyncio.run(drive(DisabledCollector(), config, frames))
        last_on = GroundTruthCollector()
        on_ms += asyncio.run(drive(last_on, config, frames))

    costs = event_costs()
    topics = len(dag.plan(config))  # every node topic but the sensor's, plus system_status
    counts = events_per_frame(last_on, args.frames, args.clients, topics, polls_per_frame=2 / args.hz)
    frame_ms = statistics.median(off_ms)
    print(f"frame processing (median, collector off): {frame_ms:.2f} ms "
          f"({args.points} points, {args.frames} frames x {args.rounds} rounds)\n")
    print(f"{'event':<26}{'ns/event':>10}{'events/frame':>14}{'us/frame':>10}")
    total_ns = 0.0
    for name, ns in costs.items():
        total_ns += ns * counts[name]
        print(f"{name:<26}{ns:>10.0f}{counts[name]:>14.2f}{ns * counts[name] / 1000:>10.2f}")
    share = total_ns / 1e6 / frame_ms
    print(f"\ncollector cost per frame: {total_ns / 1000:.1f} us = {share * 100:.4f}% of frame time "
          f"(bar {BAR * 100:.1f}%: {'PASS' if share < BAR else 'FAIL'})")
    on, off = statistics.median(on_ms), statistics.median(off_ms)
    print(f"A/B frame time median: on {on:.2f} ms, off {off:.2f} ms, ratio off/on {off / on:.3f} "
          f"(noisy: frame-to-frame spread {statistics.pstdev(off_ms):.2f} ms)")


if __name__ == "__main__":
    main()
