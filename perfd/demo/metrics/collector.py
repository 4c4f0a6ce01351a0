"""Exact in-process counters: node calls, Open3D ops, WebSocket sends, HTTP.

Each event costs a ``monotonic_ns()`` or two and a few dict/deque updates;
all aggregation (means, 1 s windows) happens when a snapshot is read.
Recording may happen on worker threads (Open3D ops run in
``asyncio.to_thread``); every update is a single GIL-atomic container op on
per-key state, so no lock is needed.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

AVG_WINDOW = 60  # calls in a rolling mean (SPEC §1)
RATE_WINDOW_NS = 1_000_000_000  # rates are over the last 1 s


def _ms(ns: int) -> float:
    return ns / 1e6


def _prune(window: deque, now_ns: int) -> None:
    cutoff = now_ns - RATE_WINDOW_NS
    while window and window[0][0] < cutoff:
        window.popleft()


@dataclass(slots=True)
class OpStats:
    calls: int = 0
    last_ns: int = 0
    total_ns: int = 0

    def as_dict(self) -> dict:
        return {"last_ms": _ms(self.last_ns), "avg_ms": _ms(self.total_ns) / self.calls if self.calls else 0.0,
                "calls": self.calls}


@dataclass(slots=True)
class NodeStats:
    calls: int = 0
    last_ns: int = 0
    recent_ns: deque = field(default_factory=lambda: deque(maxlen=AVG_WINDOW))
    completed: deque = field(default_factory=deque)  # (end_ns, points) of calls in the last 1 s
    last_point_count: int = 0
    last_seen_ts: float = 0.0
    started_ns: int = 0  # start of the call in flight (a node is never re-entered)
    in_flight: bool = False
    ops: dict[str, OpStats] = field(default_factory=dict)


@dataclass(slots=True)
class TopicStats:
    total_messages: int = 0
    total_bytes: int = 0
    window: deque = field(default_factory=deque)  # (sent_ns, bytes)


@dataclass(slots=True)
class EndpointStats:
    calls: int = 0
    recent_ns: deque = field(default_factory=lambda: deque(maxlen=AVG_WINDOW))
    last_status: int = 200


class GroundTruthCollector:
    """Records events; ``node_view``/``topic_view``/``endpoint_view`` read them."""

    enabled = True

    def __init__(self) -> None:
        self.nodes: dict[str, NodeStats] = {}
        self.topics: dict[str, TopicStats] = {}
        self.endpoints: dict[tuple[str, str], EndpointStats] = {}

    # --- recording (hot path) ---------------------------------------------

    def node_started(self, node_id: str, payload: dict) -> None:
        stats = self.nodes.get(node_id)
        if stats is None:
            stats = self.nodes[node_id] = NodeStats()
        stats.started_ns = time.monotonic_ns()
        stats.last_seen_ts = time.time()
        stats.last_point_count = len(payload["points"])
        stats.in_flight = True

    def node_finished(self, node_id: str) -> None:
        end = time.monotonic_ns()
        stats = self.nodes[node_id]
        elapsed = end - stats.started_ns
        stats.calls += 1
        stats.last_ns = elapsed
        stats.recent_ns.append(elapsed)
        stats.completed.append((end, stats.last_point_count))
        _prune(stats.completed, end)
        stats.in_flight = False

    def op_done(self, node_id: str, op: str, start_ns: int) -> None:
        elapsed = time.monotonic_ns() - start_ns
        stats = self.nodes.get(node_id)
        if stats is None:
            stats = self.nodes[node_id] = NodeStats()
        op_stats = stats.ops.get(op)
        if op_stats is None:
            op_stats = stats.ops[op] = OpStats()
        op_stats.calls += 1
        op_stats.last_ns = elapsed
        op_stats.total_ns += elapsed

    def ws_sent(self, topic: str, nbytes: int) -> None:
        now = time.monotonic_ns()
        stats = self.topics.get(topic)
        if stats is None:
            stats = self.topics[topic] = TopicStats()
        stats.total_messages += 1
        stats.total_bytes += nbytes
        stats.window.append((now, nbytes))
        _prune(stats.window, now)

    def http_done(self, method: str, path: str, status: int, start_ns: int) -> None:
        elapsed = time.monotonic_ns() - start_ns
        key = (method, path)
        stats = self.endpoints.get(key)
        if stats is None:
            stats = self.endpoints[key] = EndpointStats()
        stats.calls += 1
        stats.recent_ns.append(elapsed)
        stats.last_status = status

    # --- reading (snapshot time) ------------------------------------------

    def node_view(self, node_id: str) -> dict:
        """The measured fields of one DagNodeMetrics (app state adds the rest)."""
        stats = self.nodes.get(node_id)
        if stats is None:
            return {"last_exec_ms": 0.0, "avg_exec_ms": 0.0, "calls_total": 0, "throughput_pps": 0.0,
                    "last_point_count": 0, "last_seen_ts": 0.0, "running": False}
        now = time.monotonic_ns()
        completed = list(stats.completed)
        cutoff = now - RATE_WINDOW_NS
        recent = list(stats.recent_ns)
        view = {
            "last_exec_ms": _ms(stats.last_ns),
            "avg_exec_ms": _ms(sum(recent)) / len(recent) if recent else 0.0,
            "calls_total": stats.calls,
            "throughput_pps": float(sum(points for end, points in completed if end >= cutoff)),
            "last_point_count": stats.last_point_count,
            "last_seen_ts": stats.last_seen_ts,
            "running": stats.in_flight,
        }
        if stats.ops:
            view["open3d_ops"] = {op: s.as_dict() for op, s in list(stats.ops.items())}
        return view

    def topic_view(self, topic: str, active_connections: int) -> dict:
        stats = self.topics.get(topic) or TopicStats()
        cutoff = time.monotonic_ns() - RATE_WINDOW_NS
        window = [nbytes for sent, nbytes in list(stats.window) if sent >= cutoff]
        return {
            "messages_per_sec": float(len(window)),
            "bytes_per_sec": float(sum(window)),
            "active_connections": active_connections,
            "total_messages": stats.total_messages,
            "total_bytes": stats.total_bytes,
        }

    def endpoint_views(self) -> list[dict]:
        out = []
        for (method, path), stats in list(self.endpoints.items()):
            recent = list(stats.recent_ns)
            out.append({
                "path": path,
                "method": method,
                "avg_latency_ms": _ms(sum(recent)) / len(recent) if recent else 0.0,
                "calls_total": stats.calls,
                "last_status_code": stats.last_status,
            })
        return out


class DisabledCollector(GroundTruthCollector):
    """``LIDAR_ENABLE_METRICS=0``: the same interface, recording nothing."""

    enabled = False

    def node_started(self, node_id: str, payload: dict) -> None:
        pass

    def node_finished(self, node_id: str) -> None:
        pass

    def op_done(self, node_id: str, op: str, start_ns: int) -> None:
        pass

    def ws_sent(self, topic: str, nbytes: int) -> None:
        pass

    def http_done(self, method: str, path: str, status: int, start_ns: int) -> None:
        pass
