"""Node calls the call tracker missed, timed from their Open3D ops.

A call can begin and end between two of the tracker's looks — when the
target's threads hold every core, a look comes late or is held up mid-read
— yet the Open3D ops it ran were seen by the op probe, which names the node
(``OpEvent.owner``). Such a call lies wholly between the last *clear* look
before its first op and the first clear look after its last op (clear: every
chain read whole, none cut at a coroutine running on the loop thread — a
look that could have seen it). Its start and end are placed halfway into
those two gaps, as the tracker places the calls it sees, with the half-gaps
as its uncertainty; ``NodeStats`` then decides, by the same rule as for the
tracker's calls, whether it is timed.

Sans-IO: fed looks and ops, asked for calls. Nothing is invented: only ops
whose call would not overlap any the tracker saw of the same node become
calls (a node is not re-entered), and no more of them per node than the
app's exact count says are missing.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import dataclass

from perfd.reconstruction.calls import CompletedCall, OpenCall

SETTLE_NS = 300_000_000  # an op is judged this long after it ended: the tracker has ended its call by then
SAME_CALL_GAP_NS = 2_000_000  # ops of one node on one thread this close together are one call's
LOOKS_MAX = 4096  # ~4 s of looks at 1 kHz
OPS_MAX = 1024  # pending ops per node


@dataclass(frozen=True)
class OpSpan:
    tid: int
    start_ns: int
    end_ns: int
    points: int | None


@dataclass(frozen=True)
class Look:
    start_ns: int
    end_ns: int  # the read happened somewhere in [start_ns, end_ns]
    clear: bool  # every chain read whole and none cut at a running coroutine


class MissedCalls:
    def __init__(self, settle_ns: int = SETTLE_NS, same_call_gap_ns: int = SAME_CALL_GAP_NS) -> None:
        self.settle_ns = settle_ns
        self.same_call_gap_ns = same_call_gap_ns
        self._looks: deque[Look] = deque(maxlen=LOOKS_MAX)
        self._ops: dict[str, deque[OpSpan]] = {}
        self._lock = threading.Lock()
        self.unbounded = 0  # op groups with no clear look on one side in the history (dropped)

    def add_look(self, look: Look) -> None:
        with self._lock:
            self._looks.append(look)

    def add_op(self, node_id: str, op: OpSpan) -> None:
        with self._lock:
            self._ops.setdefault(node_id, deque(maxlen=OPS_MAX)).append(op)

    def take(self, now_ns: int, tracked: list[CompletedCall], running: list[OpenCall],
             room: dict[str, int], wall_minus_mono: float = 0.0) -> list[CompletedCall]:
        """Calls made from settled ops that no tracked or running call of their
        node holds, at most ``room[node]`` per node (exact calls not yet accounted for)."""
        due = now_ns - self.settle_ns
        with self._lock:  # shared with the tracker's 1 kHz add_look: copy the looks only when needed
            settled: dict[str, list[OpSpan]] = {}
            for node, ops in self._ops.items():
                while ops and ops[0].end_ns <= due:
                    settled.setdefault(node, []).append(ops.popleft())
            if not settled:
                return []
            looks = list(self._looks)
        starts = [lk.start_ns for lk in looks]
        out: list[CompletedCall] = []
        for node, ops in settled.items():
            spans = [(c.start_mono - c.uncertainty, c.end_mono + c.uncertainty) for c in tracked if c.node_id == node]
            spans += [(c.start_mono - c.start_uncertainty, float("inf")) for c in running if c.node_id == node]
            for group in self._groups(ops):
                if room.get(node, 0) <= 0:
                    break
                call = self._call(node, group, looks, starts, wall_minus_mono)
                if call is None:
                    self.unbounded += 1
                    continue
                # a node is not re-entered: ops whose call would overlap one the
                # tracker saw ran in that call (seen late, or its start placed late)
                if any(call.start_mono < hi and call.end_mono > lo for lo, hi in spans):
                    continue
                room[node] = room.get(node, 0) - 1
                out.append(call)
        return out

    def _groups(self, ops: list[OpSpan]) -> list[list[OpSpan]]:
        groups: list[list[OpSpan]] = []
        for op in sorted(ops, key=lambda o: o.start_ns):
            last = groups[-1][-1] if groups else None
            if last is not None and last.tid == op.tid and op.start_ns - last.end_ns <= self.same_call_gap_ns:
                groups[-1].append(op)
            else:
                groups.append([op])
        return groups

    def _call(self, node: str, group: list[OpSpan], looks: list[Look], starts: list[int],
              wall_minus_mono: float) -> CompletedCall | None:
        first, last = group[0].start_ns, max(op.end_ns for op in group)
        i = bisect.bisect_left(starts, first) - 1
        while i >= 0 and not (looks[i].clear and looks[i].end_ns <= first):
            i -= 1
        j = bisect.bisect_right(starts, last)
        while j < len(looks) and not looks[j].clear:
            j += 1
        if i < 0 or j >= len(looks):
            return None  # a side with no look in the history: no bound
        lo, hi = looks[i].start_ns, looks[j].end_ns
        start, end = (lo + first) / 2e9, (last + hi) / 2e9
        uncertainty = max(first - lo, hi - last) / 2e9
        points = next((op.points for op in group if op.points is not None), None)
        return CompletedCall(node, start, start + wall_minus_mono, end, points, uncertainty)
