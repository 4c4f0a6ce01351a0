"""The registry: where sources publish and the server reads.

Sources run on their own threads and publish finished sections (already
validated models); the server assembles a snapshot by reference under a short
lock, so assembly never waits on a source and never blocks the event loop for
more than a copy of a few hundred small objects.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from perfd.errors import NotAttached
from perfd.snapshot import (
    DagMetrics,
    EndpointMetrics,
    MetricsSnapshot,
    PerfdStatus,
    PerformanceHealth,
    SamplerStatus,
    SourceStatus,
    SystemMetrics,
    TargetStatus,
    WebSocketMetrics,
)

SOURCE_NAMES = ("stacks", "uprobes", "capture", "system")


@dataclass
class _State:
    target: TargetStatus | None = None
    detached_reason: str | None = "not attached yet"
    dag: DagMetrics = field(default_factory=DagMetrics)
    websocket: WebSocketMetrics = field(default_factory=WebSocketMetrics)
    system: SystemMetrics = field(default_factory=SystemMetrics)
    endpoints: list[EndpointMetrics] = field(default_factory=list)
    sources: dict[str, SourceStatus] = field(
        default_factory=lambda: {
            name: SourceStatus(active=False, reason="not attached") for name in SOURCE_NAMES
        }
    )
    sampler: SamplerStatus = field(default_factory=SamplerStatus)
    extras: dict[str, object] = field(default_factory=dict)  # additive perfd-section keys, per source
    profiles: dict[str, dict[str, int]] = field(default_factory=dict)  # node id -> collapsed stack -> samples


class Registry:
    """Latest published state of every source, readable as a snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = _State()
        self.generation = 0  # bumped on every publish; lets readers skip unchanged work

    # --- lifecycle ---------------------------------------------------------

    def attach(self, target: TargetStatus) -> None:
        """Start a fresh attach: counters of a previous target are dropped."""
        with self._lock:
            self._state = _State(target=target, detached_reason=None)
            self.generation += 1

    def detach(self, reason: str) -> None:
        """The target is gone or was released; keep the last numbers, serve 503."""
        with self._lock:
            self._state.detached_reason = reason
            for name, status in self._state.sources.items():
                if status.active:
                    self._state.sources[name] = SourceStatus(active=False, reason=reason)
            self.generation += 1

    @property
    def attached(self) -> bool:
        return self._state.detached_reason is None

    @property
    def detached_reason(self) -> str | None:
        return self._state.detached_reason

    # --- publishing (any thread) -------------------------------------------

    def publish_dag(self, dag: DagMetrics) -> None:
        self._set("dag", dag)

    def publish_websocket(self, websocket: WebSocketMetrics) -> None:
        self._set("websocket", websocket)

    def publish_endpoints(self, endpoints: list[EndpointMetrics]) -> None:
        self._set("endpoints", list(endpoints))

    def update_system(self, **fields: float | int) -> None:
        """Merge some ``system`` fields: the OS probe owns cpu/memory, the
        memory reader owns thread_count and queue_depth once it runs."""
        with self._lock:
            merged = self._state.system.model_dump() | fields
            self._state.system = SystemMetrics.model_validate(merged)
            self.generation += 1

    def set_source(self, name: str, active: bool, reason: str | None = None) -> None:
        self._set_item("sources", name, SourceStatus(active=active, reason=reason))

    def publish_sampler(self, sampler: SamplerStatus) -> None:
        self._set("sampler", sampler)

    def publish_profiles(self, profiles: dict[str, dict[str, int]]) -> None:
        """Per-node sampled stacks (collapsed form), replaced as a whole."""
        self._set("profiles", profiles)

    def profile(self, node_id: str) -> dict[str, int] | None:
        """A node's collapsed stacks; raises ``NotAttached``; None for an unknown node."""
        with self._lock:
            if self._state.detached_reason is not None:
                raise NotAttached(self._state.detached_reason)
            found = self._state.profiles.get(node_id)
            known = found is not None or any(n.node_id == node_id for n in self._state.dag.nodes)
        if not known:
            return None
        return found or {}

    def publish_extra(self, key: str, value: object) -> None:
        """An additive key of the ``perfd`` section (a source's own status, JSON-ready)."""
        self._set_item("extras", key, value)

    def _set(self, attr: str, value: object) -> None:
        with self._lock:
            setattr(self._state, attr, value)
            self.generation += 1

    def _set_item(self, attr: str, key: str, value: object) -> None:
        with self._lock:
            getattr(self._state, attr)[key] = value
            self.generation += 1

    # --- reading (server) --------------------------------------------------

    def perfd_status(self) -> PerfdStatus:
        with self._lock:
            return self._perfd_status_locked()

    def _perfd_status_locked(self) -> PerfdStatus:
        s = self._state
        return PerfdStatus(target=s.target, sources=dict(s.sources), sampler=s.sampler, **s.extras)

    def snapshot(self) -> MetricsSnapshot:
        """The full snapshot; raises ``NotAttached`` while there is no live target."""
        with self._lock:
            s = self._state
            if s.detached_reason is not None:
                raise NotAttached(s.detached_reason)
            return MetricsSnapshot.model_construct(
                timestamp=time.time(),
                dag=s.dag,
                websocket=s.websocket,
                system=s.system,
                endpoints=list(s.endpoints),
                perfd=self._perfd_status_locked(),
            )

    def health(self, *, broadcaster_running: bool) -> PerformanceHealth:
        with self._lock:
            s = self._state
            attached = s.detached_reason is None
            system = s.sources.get("system")
            return PerformanceHealth.model_construct(
                metrics_enabled=attached and any(src.active for src in s.sources.values()),
                broadcaster_running=broadcaster_running,
                system_probe_running=bool(system and system.active),
                node_count=s.dag.total_nodes,
                version="1.0.0",
                detail=s.detached_reason,
                perfd=self._perfd_status_locked(),
            )
