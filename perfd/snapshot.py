"""MetricsSnapshot v1.0.0 — the contract perfd serves.

Field names, nesting and JSON types are fixed by ``snapshot.schema.json``;
clients written for v1.0.0 must work unchanged. Extensions are *additive*
only: a node's ``open3d_ops`` and the top-level ``perfd`` self-report.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

CONTRACT_VERSION = "1.0.0"


class _Model(BaseModel):
    # Extra keys from a future additive extension must survive a round trip.
    model_config = ConfigDict(extra="allow")


class Open3DOpMetrics(_Model):
    last_ms: float = Field(0.0, ge=0)
    avg_ms: float = Field(0.0, ge=0)
    calls: int = Field(0, ge=0)


class DagNodeMetrics(_Model):
    node_id: str = Field(min_length=1)
    node_name: str
    node_type: str
    last_exec_ms: float = Field(0.0, ge=0)
    avg_exec_ms: float = Field(0.0, ge=0)
    calls_total: int = Field(0, ge=0)
    throughput_pps: float = Field(0.0, ge=0)
    last_point_count: int = Field(0, ge=0)
    throttled_count: int = Field(0, ge=0)
    queue_depth: int = Field(0, ge=0)
    last_seen_ts: float = 0.0
    open3d_ops: dict[str, Open3DOpMetrics] | None = None


class DagMetrics(_Model):
    nodes: list[DagNodeMetrics] = Field(default_factory=list)
    total_nodes: int = Field(0, ge=0)
    running_nodes: int = Field(0, ge=0)


class WsTopicMetrics(_Model):
    messages_per_sec: float = Field(0.0, ge=0)
    bytes_per_sec: float = Field(0.0, ge=0)
    active_connections: int = Field(0, ge=0)
    total_messages: int = Field(0, ge=0)
    total_bytes: int = Field(0, ge=0)


class WebSocketMetrics(_Model):
    topics: dict[str, WsTopicMetrics] = Field(default_factory=dict)
    total_connections: int = Field(0, ge=0)


class SystemMetrics(_Model):
    cpu_percent: float = Field(0.0, ge=0, le=100)
    memory_used_mb: float = Field(0.0, ge=0)
    memory_total_mb: float = Field(0.0, ge=0)
    memory_percent: float = Field(0.0, ge=0, le=100)
    thread_count: int = Field(0, ge=0)
    queue_depth: int = Field(0, ge=0)


class EndpointMetrics(_Model):
    path: str = Field(min_length=1)
    method: str = Field(min_length=1)
    avg_latency_ms: float = Field(0.0, ge=0)
    calls_total: int = Field(0, ge=0)
    last_status_code: int = Field(ge=100, le=599)


# --- additive self-report (SPEC §7) -----------------------------------------


class TargetStatus(_Model):
    pid: int
    python: str
    exe: str
    attached_at: float


class SourceStatus(_Model):
    active: bool
    reason: str | None = None


class SamplerStatus(_Model):
    rate_hz: float = 0.0
    achieved_hz: float = 0.0
    samples_total: int = 0
    samples_failed: int = 0
    cpu_percent: float = 0.0
    walker: str | None = None  # "native" (C core) or "python"; None before the first sample
    walker_note: str | None = None  # why the Python walker, when it is


class PerfdStatus(_Model):
    target: TargetStatus | None = None
    sources: dict[str, SourceStatus] = Field(default_factory=dict)
    sampler: SamplerStatus = Field(default_factory=SamplerStatus)


class MetricsSnapshot(_Model):
    timestamp: float
    dag: DagMetrics
    websocket: WebSocketMetrics
    system: SystemMetrics
    endpoints: list[EndpointMetrics]
    perfd: PerfdStatus | None = None


class PerformanceHealth(_Model):
    metrics_enabled: bool
    broadcaster_running: bool
    system_probe_running: bool
    node_count: int = Field(ge=0)
    version: str = CONTRACT_VERSION
    detail: str | None = None
    perfd: PerfdStatus | None = None


def dump(model: BaseModel) -> dict:
    """JSON-ready dict. Unset *optional extensions* (a node's ``open3d_ops``,
    the ``perfd`` section, health ``detail``) are left out rather than sent as
    null, so v1.0.0 clients see exactly the shape they know."""
    data = model.model_dump(mode="json")
    _drop_none(data, ("perfd", "detail"))
    for node in data.get("dag", data).get("nodes", ()):
        _drop_none(node, ("open3d_ops",))
    return data


def _drop_none(data: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        if key in data and data[key] is None:
            del data[key]
