"""Per-node statistics with the in-process collector's meanings (SPEC §1)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from perfd.reconstruction.calls import CompletedCall, OpenCall

AVG_WINDOW = 60
RATE_WINDOW_S = 1.0
# A call whose start or end fell into a sampling gap wider than twice this, and
# wider than a tenth of the call (perfd was not scheduled, e.g. on an
# overloaded host, often exactly while the target was busy), is counted but
# not timed — unless no call of the node could be timed at all.
MAX_TIMING_UNCERTAINTY_S = 0.0025
MAX_TIMING_UNCERTAINTY_SHARE = 0.05


@dataclass
class NodeStats:
    calls_total: int = 0
    last_exec_ms: float = 0.0
    recent_ms: deque = field(default_factory=lambda: deque(maxlen=AVG_WINDOW))  # timed calls
    untimed_ms: deque = field(default_factory=lambda: deque(maxlen=AVG_WINDOW))  # the rest, as estimated
    completed: deque = field(default_factory=deque)  # (end_mono, points) within the rate window
    last_point_count: int = 0
    points_at: float = 0.0  # monotonic s of the call start (or op start) last_point_count is from
    last_seen_ts: float = 0.0
    untimed_calls: int = 0  # counted, but endpoints too uncertain to time
    op_calls: int = 0  # calls the tracker missed, placed from their Open3D ops (not in calls_total)
    last_end: float = 0.0  # monotonic s: end of the latest completed call

    def started(self, call: OpenCall) -> None:
        self.last_seen_ts = call.start_wall
        if call.points is not None:
            self.last_point_count = call.points
            self.points_at = call.start_mono

    def op_points(self, at_mono: float, points: int) -> bool:
        """Points of the call running an op that began at ``at_mono``: newer than
        the last call seen starting means a call the tracker missed. True when
        last_point_count changed."""
        if at_mono <= self.points_at:
            return False
        self.points_at = at_mono
        changed = points != self.last_point_count
        self.last_point_count = points
        return changed

    def finished(self, call: CompletedCall) -> None:
        self.calls_total += 1
        self._add(call)

    def missed_finished(self, call: CompletedCall) -> None:
        """A call the tracker missed, placed from its ops (``MissedCalls``) a
        moment after it ended: newer calls may have finished meanwhile."""
        self.op_calls += 1
        self.last_seen_ts = max(self.last_seen_ts, call.start_wall)
        self._add(call)

    def _add(self, call: CompletedCall) -> None:
        latest = call.end_mono >= self.last_end
        self.last_end = max(self.last_end, call.end_mono)
        if call.points is not None:  # unread points are estimated from the others (throughput_pps)
            i = len(self.completed)
            while i and self.completed[i - 1][0] > call.end_mono:  # kept in end order: the window is cut from the left
                i -= 1
            self.completed.insert(i, (call.end_mono, call.points))
        ms = call.duration_s * 1000.0
        if call.uncertainty > max(MAX_TIMING_UNCERTAINTY_S, MAX_TIMING_UNCERTAINTY_SHARE * call.duration_s):
            self.untimed_calls += 1
            self.untimed_ms.append(ms)
            if not self.recent_ms and latest:
                self.last_exec_ms = ms
            return
        if latest:
            self.last_exec_ms = ms
        self.recent_ms.append(ms)

    @property
    def avg_exec_ms(self) -> float:
        window = self.recent_ms or self.untimed_ms
        return sum(window) / len(window) if window else 0.0

    def throughput_pps(self, now_mono: float, calls_in_window: int | None = None) -> float:
        """Points of calls completed in the last second, per second.

        ``calls_in_window`` is the exact number of calls that completed in that
        second (from app-state counters): calls too short for the sampler to see
        are then counted at the mean size of the ones it did see.
        """
        cutoff = now_mono - RATE_WINDOW_S
        while self.completed and self.completed[0][0] < cutoff:
            self.completed.popleft()
        points = float(sum(p for _, p in self.completed))
        seen = len(self.completed)
        # the exact count comes from counters read a few times a second: a
        # difference of one call is their granularity, not a missed call
        if calls_in_window is not None and seen and calls_in_window > seen + 1:
            points *= calls_in_window / seen
        return points / RATE_WINDOW_S
