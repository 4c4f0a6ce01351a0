"""Snapshot assembly latency: registry → JSON text, as the server does per request/tick.

Sizes: 50 nodes (each with 3 Open3D ops), 50 topics, 100 endpoints. A
publisher thread keeps replacing sections meanwhile, as live sources do, so
lock contention is part of the measurement. Prints p50/p99/max in ms.
"""

from __future__ import annotations

import json
import statistics
import threading
import time

from perfd.registry import Registry
from perfd.snapshot import (
    DagMetrics, DagNodeMetrics, EndpointMetrics, Open3DOpMetrics, TargetStatus, WebSocketMetrics,
    WsTopicMetrics, dump,
)


def populate(registry: Registry, nodes: int, topics: int, endpoints: int, seq: int) -> None:
    registry.publish_dag(DagMetrics(
        nodes=[DagNodeMetrics(
            node_id=f"{i:08x}-node", node_name=f"Node {i}", node_type="voxel_downsample",
            last_exec_ms=1.5 + seq, avg_exec_ms=1.2, calls_total=seq, throughput_pps=65536.0,
            last_point_count=65536, throttled_count=3, queue_depth=2, last_seen_ts=time.time(),
            open3d_ops={op: Open3DOpMetrics(last_ms=1.0, avg_ms=1.1, calls=seq)
                        for op in ("voxel_down_sample", "segment_plane", "cluster_dbscan")},
        ) for i in range(nodes)],
        total_nodes=nodes, running_nodes=2))
    registry.publish_websocket(WebSocketMetrics(
        topics={f"topic_{i}": WsTopicMetrics(messages_per_sec=10, bytes_per_sec=786452, active_connections=1,
                                            total_messages=seq, total_bytes=seq * 786452) for i in range(topics)},
        total_connections=topics))
    registry.publish_endpoints([EndpointMetrics(path=f"/api/v1/route/{i}", method="GET", avg_latency_ms=3.2,
                                                calls_total=seq, last_status_code=200) for i in range(endpoints)])


def measure(nodes: int, topics: int, endpoints: int, rounds: int = 2000) -> list[float]:
    registry = Registry()
    registry.attach(TargetStatus(pid=1, python="3.12.1", exe="/usr/bin/python3", attached_at=time.time()))
    populate(registry, nodes, topics, endpoints, 0)
    stop = threading.Event()

    def publisher() -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            populate(registry, nodes, topics, endpoints, seq)
            time.sleep(0.01)

    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    samples = []
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            json.dumps(dump(registry.snapshot()), separators=(",", ":"))
            samples.append((time.perf_counter() - t0) * 1000)
    finally:
        stop.set()
        thread.join()
    return samples


def main() -> None:
    print(f"{'nodes':>6} {'topics':>6} {'endpoints':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for sizes in ((5, 5, 10), (50, 50, 100), (200, 200, 400)):
        s = sorted(measure(*sizes))
        p50 = statistics.median(s)
        p99 = s[int(len(s) * 0.99) - 1]
        print(f"{sizes[0]:>6} {sizes[1]:>6} {sizes[2]:>9} {p50:>8.3f} {p99:>8.3f} {s[-1]:>8.3f}")


if __name__ == "__main__":
    main()
