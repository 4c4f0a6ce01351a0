"""Per-node Open3D op statistics: ``{node: {op: last_ms, avg_ms, calls}}``.

Only outermost probed calls count (depth 0): Open3D calls some probed
functions internally, and the node called ``crop``, not ``select_by_index``.
Events no node can be found for go under ``UNATTRIBUTED``; they are counted,
never dropped.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from perfd.snapshot import Open3DOpMetrics
from perfd.uprobes.events import OpEvent

UNATTRIBUTED = "(unattributed)"
ROLLING_CALLS = 60

Attribute = Callable[[OpEvent], "str | None"]  # an op call -> the node id whose call ran it


@dataclass(frozen=True)
class OpTotals:
    """Since-attach sums: the mean over any window is a difference of two."""

    calls: int
    total_ns: int


@dataclass
class _OpStats:
    calls: int = 0
    last_ns: int = 0
    total_ns: int = 0
    window: deque = field(default_factory=lambda: deque(maxlen=ROLLING_CALLS))

    def add(self, duration_ns: int) -> None:
        self.calls += 1
        self.last_ns = duration_ns
        self.total_ns += duration_ns
        self.window.append(duration_ns)

    def metrics(self) -> Open3DOpMetrics:
        avg = sum(self.window) / len(self.window) if self.window else 0.0
        return Open3DOpMetrics(last_ms=self.last_ns / 1e6, avg_ms=avg / 1e6, calls=self.calls)


class OpAggregator:
    """Thread-safe: backends feed events from their reader thread.

    Attribution waits ``settle_ns`` after a call ended, so the sampler has
    seen the thread serving its node call before it is asked about it.
    """

    def __init__(self, attribute: Attribute | None = None, count_nested: bool = False,
                 settle_ns: int = 250_000_000) -> None:
        self.attribute = attribute
        self.count_nested = count_nested
        self.settle_ns = settle_ns if attribute is not None else 0
        self._lock = threading.Lock()
        self._pending: deque[OpEvent] = deque()
        self._nodes: dict[str, dict[str, _OpStats]] = {}
        self.events_total = 0
        self.nested_total = 0  # inner calls seen and not counted
        self.attribution_errors = 0

    def add(self, ev: OpEvent) -> None:
        with self._lock:
            self.events_total += 1
            if ev.depth > 0 and not self.count_nested:
                self.nested_total += 1
                return
            self._pending.append(ev)
        if not self.settle_ns:
            self.settle()

    def settle(self, force: bool = False) -> None:
        """Attribute the calls that ended at least ``settle_ns`` ago (all if ``force``)."""
        due_before = time.monotonic_ns() - self.settle_ns
        with self._lock:
            if force:
                ready, self._pending = list(self._pending), deque()
            else:
                ready = [ev for ev in self._pending if ev.start_ns + ev.duration_ns <= due_before]
                if ready:
                    self._pending = deque(ev for ev in self._pending if ev.start_ns + ev.duration_ns > due_before)
        placed = [(self._node_for(ev), ev) for ev in ready]  # outside the lock: the callback has its own
        with self._lock:
            for node, ev in placed:
                self._nodes.setdefault(node, {}).setdefault(ev.op, _OpStats()).add(ev.duration_ns)

    def _node_for(self, ev: OpEvent) -> str:
        if self.attribute is None:
            return UNATTRIBUTED
        try:
            node = self.attribute(ev)
        except Exception:  # noqa: BLE001 — a broken attributor must not lose events
            self.attribution_errors += 1
            return UNATTRIBUTED
        return node if node else UNATTRIBUTED

    def by_node(self) -> dict[str, dict[str, Open3DOpMetrics]]:
        self.settle()
        with self._lock:
            return {node: {op: s.metrics() for op, s in ops.items()} for node, ops in self._nodes.items()}

    def totals(self) -> dict[str, dict[str, OpTotals]]:
        self.settle()
        with self._lock:
            return {node: {op: OpTotals(s.calls, s.total_ns) for op, s in ops.items()} for node, ops in self._nodes.items()}

    def unattributed_calls(self) -> int:
        self.settle()
        with self._lock:
            return sum(s.calls for s in self._nodes.get(UNATTRIBUTED, {}).values())
