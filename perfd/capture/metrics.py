"""Traffic events → the ``websocket`` and ``endpoints`` sections (SPEC §1).

Rates are computed over the last ``window`` seconds of *capture* time
(kernel packet timestamps, the same wall clock the app's own collector uses);
totals count since attach. Connections whose topic is unknown (picked up
mid-stream without a hint) count towards ``total_connections`` — they are
open upgraded connections — but into no topic, and their traffic is tallied
separately for health.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from perfd.capture.flows import ApiCall, TrafficEvent, WsClosed, WsData, WsOpened
from perfd.snapshot import EndpointMetrics, WebSocketMetrics, WsTopicMetrics

LATENCY_WINDOW = 60


@dataclass
class _Topic:
    active: int = 0
    total_messages: int = 0
    total_bytes: int = 0
    recent: deque[tuple[float, int]] = field(default_factory=deque)  # (ts, size), oldest first
    recent_bytes: int = 0  # sum of sizes in ``recent``: the window is O(1) to read


@dataclass
class _Endpoint:
    calls: int = 0
    last_status: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))


@dataclass
class Unattributed:
    """WebSocket traffic on connections whose topic is unknown."""

    active: int = 0
    messages: int = 0
    bytes: int = 0


class TrafficMetrics:
    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self._topics: dict[str, _Topic] = {}
        self._endpoints: dict[tuple[str, str], _Endpoint] = {}
        self.unattributed = Unattributed()
        self.latest_ts = 0.0

    def apply(self, events: list[TrafficEvent]) -> None:
        for ev in events:
            kind = type(ev)
            if kind is WsData:
                if ev.topic is None:
                    self.unattributed.messages += 1
                    self.unattributed.bytes += ev.size
                else:
                    t = self._topic(ev.topic)
                    t.total_messages += 1
                    t.total_bytes += ev.size
                    t.recent.append((ev.ts, ev.size))
                    t.recent_bytes += ev.size
                if ev.ts > self.latest_ts:
                    self.latest_ts = ev.ts
            elif kind is WsOpened:
                if ev.topic is None:
                    self.unattributed.active += 1
                else:
                    self._topic(ev.topic).active += 1
            elif kind is WsClosed:
                if ev.topic is None:
                    self.unattributed.active = max(0, self.unattributed.active - 1)
                else:
                    t = self._topic(ev.topic)
                    t.active = max(0, t.active - 1)
            elif kind is ApiCall:
                e = self._endpoints.get((ev.method, ev.path))
                if e is None:
                    e = self._endpoints[(ev.method, ev.path)] = _Endpoint()
                e.calls += 1
                e.last_status = ev.status
                e.latencies.append(ev.latency_s)

    def _topic(self, name: str) -> _Topic:
        t = self._topics.get(name)
        if t is None:
            t = self._topics[name] = _Topic()
        return t

    def websocket(self, now: float) -> WebSocketMetrics:
        """The section as of capture time ``now``: rates over ``(now - window, now]``.

        Call with a non-decreasing ``now``: entries older than the window are discarded.
        Totals include everything counted so far.
        """
        start = now - self.window
        topics: dict[str, WsTopicMetrics] = {}
        for name, t in self._topics.items():
            recent = t.recent
            while recent and recent[0][0] <= start:
                t.recent_bytes -= recent.popleft()[1]
            later_n = later_b = 0  # already counted, but after ``now``: not in this window yet
            for ts, size in reversed(recent):
                if ts <= now:
                    break
                later_n += 1
                later_b += size
            topics[name] = WsTopicMetrics(
                messages_per_sec=(len(recent) - later_n) / self.window,
                bytes_per_sec=(t.recent_bytes - later_b) / self.window,
                active_connections=t.active,
                total_messages=t.total_messages,
                total_bytes=t.total_bytes,
            )
        total = sum(t.active for t in self._topics.values()) + self.unattributed.active
        return WebSocketMetrics(topics=topics, total_connections=total)

    def endpoints(self) -> list[EndpointMetrics]:
        out = []
        for (method, path), e in sorted(self._endpoints.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            lat = e.latencies
            out.append(
                EndpointMetrics(
                    path=path,
                    method=method,
                    avg_latency_ms=(sum(lat) / len(lat) * 1000.0) if lat else 0.0,
                    calls_total=e.calls,
                    last_status_code=e.last_status,
                )
            )
        return out
