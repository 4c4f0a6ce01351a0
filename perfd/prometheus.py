"""Prometheus text exposition (format 0.0.4) of the snapshot's numbers.

Names are ``perfd_<section>_<field>``; the snapshot's identities become
labels. ``perfd_up`` is 1 while attached, so a scrape during detachment
still succeeds and says why there are no target series.
"""

from __future__ import annotations

from collections.abc import Iterable

from perfd.snapshot import MetricsSnapshot, PerformanceHealth

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (metric, type, help, field) per labelled family
_NODE = [
    ("perfd_node_last_exec_ms", "gauge", "Wall time of the node's last completed call (ms)", "last_exec_ms"),
    ("perfd_node_avg_exec_ms", "gauge", "Mean wall time of the node's last 60 calls (ms)", "avg_exec_ms"),
    ("perfd_node_calls_total", "counter", "Completed node calls since attach", "calls_total"),
    ("perfd_node_throughput_pps", "gauge", "Points handed to the node per second (1 s window)", "throughput_pps"),
    ("perfd_node_last_point_count", "gauge", "Points in the node's last payload", "last_point_count"),
    ("perfd_node_throttled_total", "counter", "Frames dropped for the node by the throttle manager", "throttled_count"),
    ("perfd_node_last_seen_timestamp_seconds", "gauge", "Start of the node's last call (epoch s)", "last_seen_ts"),
]
_OP = [
    ("perfd_open3d_op_last_ms", "gauge", "Duration of the last Open3D call of this op in this node (ms)", "last_ms"),
    ("perfd_open3d_op_avg_ms", "gauge", "Mean duration of the op's last 60 calls in this node (ms)", "avg_ms"),
    ("perfd_open3d_op_calls_total", "counter", "Open3D calls of this op in this node since attach", "calls"),
]
_TOPIC = [
    ("perfd_ws_messages_per_second", "gauge", "Server-to-client data frames per second on the topic", "messages_per_sec"),
    ("perfd_ws_bytes_per_second", "gauge", "Payload bytes per second on the topic", "bytes_per_sec"),
    ("perfd_ws_active_connections", "gauge", "Open WebSocket connections on the topic", "active_connections"),
    ("perfd_ws_messages_total", "counter", "Data frames sent on the topic since attach", "total_messages"),
    ("perfd_ws_bytes_total", "counter", "Payload bytes sent on the topic since attach", "total_bytes"),
]
_ENDPOINT = [
    ("perfd_endpoint_avg_latency_ms", "gauge", "Mean latency of the last 60 requests (ms)", "avg_latency_ms"),
    ("perfd_endpoint_calls_total", "counter", "Requests since attach", "calls_total"),
    ("perfd_endpoint_last_status_code", "gauge", "Status code of the last response", "last_status_code"),
]
_SYSTEM = [
    ("perfd_system_cpu_percent", "Host CPU utilisation (%)", "cpu_percent"),
    ("perfd_system_memory_used_mb", "Target process RSS (MiB)", "memory_used_mb"),
    ("perfd_system_memory_total_mb", "Host physical memory (MiB)", "memory_total_mb"),
    ("perfd_system_memory_percent", "Target RSS over host memory (%)", "memory_percent"),
    ("perfd_system_thread_count", "Threads alive in the target", "thread_count"),
    ("perfd_system_queue_depth", "Items in the app's sensor queue", "queue_depth"),
]


def render(snapshot: MetricsSnapshot | None, health: PerformanceHealth) -> str:
    lines: list[str] = []
    _family(lines, "perfd_up", "gauge", "1 while perfd is attached to its target", [({}, int(snapshot is not None))])
    _family(
        lines,
        "perfd_source_active",
        "gauge",
        "1 for each perfd source that is running",
        [({"source": name}, int(st.active)) for name, st in (health.perfd.sources if health.perfd else {}).items()],
    )
    if snapshot is None:
        return "\n".join(lines) + "\n"
    sampler = snapshot.perfd.sampler if snapshot.perfd else None
    if sampler is not None:
        _family(lines, "perfd_sampler_achieved_hz", "gauge", "Stack samples per second (last 10 s)", [({}, sampler.achieved_hz)])
        _family(lines, "perfd_sampler_samples_total", "counter", "Stack samples taken", [({}, sampler.samples_total)])
        _family(lines, "perfd_sampler_failed_total", "counter", "Stack samples skipped as unreadable", [({}, sampler.samples_failed)])
        _family(lines, "perfd_sampler_cpu_percent", "gauge", "perfd's sampler CPU, % of one core", [({}, sampler.cpu_percent)])
    for name, help_, attr in _SYSTEM:
        _family(lines, name, "gauge", help_, [({}, getattr(snapshot.system, attr))])
    nodes = snapshot.dag.nodes
    node_labels = [{"node_id": n.node_id, "node_name": n.node_name, "node_type": n.node_type} for n in nodes]
    for name, kind, help_, attr in _NODE:
        _family(lines, name, kind, help_, [(lab, getattr(n, attr)) for lab, n in zip(node_labels, nodes)])
    ops = [
        ({"node_id": n.node_id, "op": op}, m)
        for n in nodes
        for op, m in (n.open3d_ops or {}).items()
    ]
    for name, kind, help_, attr in _OP:
        _family(lines, name, kind, help_, [(lab, getattr(m, attr)) for lab, m in ops])
    _family(lines, "perfd_dag_nodes", "gauge", "Nodes in the app's registry", [({}, snapshot.dag.total_nodes)])
    _family(lines, "perfd_dag_running_nodes", "gauge", "Nodes with a call in flight", [({}, snapshot.dag.running_nodes)])
    topics = list(snapshot.websocket.topics.items())
    for name, kind, help_, attr in _TOPIC:
        _family(lines, name, kind, help_, [({"topic": t}, getattr(m, attr)) for t, m in topics])
    _family(lines, "perfd_ws_connections", "gauge", "Open WebSocket connections on all topics", [({}, snapshot.websocket.total_connections)])
    eps = [({"method": e.method, "path": e.path}, e) for e in snapshot.endpoints]
    for name, kind, help_, attr in _ENDPOINT:
        _family(lines, name, kind, help_, [(lab, getattr(e, attr)) for lab, e in eps])
    return "\n".join(lines) + "\n"


def _family(lines: list[str], name: str, kind: str, help_: str, samples: Iterable[tuple[dict, float]]) -> None:
    samples = list(samples)
    if not samples:
        return
    lines.append(f"# HELP {name} {help_}")
    lines.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        lines.append(f"{name}{_labels(labels)} {_value(value)}")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(value: float) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    return repr(float(value))
