"""Side-by-side windows of perfd's ``dag`` and the demo's ground truth.

Both are read as deltas over the same window: a pair of readings every
``every`` seconds (ground truth first, perfd right after), then per node the
errors the DAG accuracy tests and ``bench/accuracy.py`` judge.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field


@dataclass
class NodeComparison:
    node_id: str
    name: str
    gt_name: str
    node_type: str
    gt_type: str
    calls: int
    gt_calls: int
    avg_ms: float
    gt_avg_ms: float
    pps: float
    gt_pps: float
    points_equal_share: float
    throttled_diff: int
    queue_diff: int
    coverage: float | None = None

    @property
    def calls_error(self) -> float:
        return (self.calls - self.gt_calls) / self.gt_calls if self.gt_calls else 0.0

    @property
    def avg_error(self) -> float:
        return (self.avg_ms - self.gt_avg_ms) / self.gt_avg_ms if self.gt_avg_ms else 0.0

    @property
    def pps_error(self) -> float:
        return (self.pps - self.gt_pps) / self.gt_pps if self.gt_pps else 0.0


@dataclass
class Window:
    seconds: float
    pairs: list[tuple[dict, dict]] = field(default_factory=list)  # (ground truth, perfd) snapshots

    def compare(self) -> list[NodeComparison]:
        (g0, p0), (g1, p1) = self.pairs[0], self.pairs[-1]
        gt0, gt1 = _nodes(g0), _nodes(g1)
        pf0, pf1 = _nodes(p0), _nodes(p1)
        dag_calls = p1.get("perfd", {}).get("dag_calls") or {}
        out = []
        for node_id, g in gt1.items():
            p = pf1.get(node_id)
            if p is None:
                continue
            same_points = [
                _nodes(gp)[node_id]["last_point_count"] == _nodes(pp).get(node_id, {}).get("last_point_count")
                for gp, pp in self.pairs
                if node_id in _nodes(gp)
            ]
            out.append(NodeComparison(
                node_id=node_id, name=p["node_name"], gt_name=g["node_name"],
                node_type=p["node_type"], gt_type=g["node_type"],
                calls=p["calls_total"] - pf0.get(node_id, {}).get("calls_total", 0),
                gt_calls=g["calls_total"] - gt0.get(node_id, {}).get("calls_total", 0),
                avg_ms=p["avg_exec_ms"], gt_avg_ms=g["avg_exec_ms"],
                pps=statistics.fmean(_nodes(pp).get(node_id, {}).get("throughput_pps", 0.0) for _, pp in self.pairs),
                gt_pps=statistics.fmean(_nodes(gp)[node_id]["throughput_pps"] for gp, _ in self.pairs),
                points_equal_share=sum(same_points) / len(same_points) if same_points else 0.0,
                throttled_diff=abs(p["throttled_count"] - g["throttled_count"]),
                queue_diff=abs(p["queue_depth"] - g["queue_depth"]),
                coverage=(dag_calls.get(node_id) or {}).get("coverage"),
            ))
        return out


def _nodes(snapshot: dict) -> dict[str, dict]:
    return {n["node_id"]: n for n in snapshot["dag"]["nodes"]}


def record(ground_truth, perfd, seconds: float, every: float = 0.5) -> Window:  # noqa: ANN001 - callables
    """``ground_truth()`` and ``perfd()`` each return a full snapshot dict."""
    window = Window(seconds)
    end = time.monotonic() + seconds
    while True:
        window.pairs.append((ground_truth(), perfd()))
        if time.monotonic() >= end:
            return window
        time.sleep(every)


def table(rows: list[NodeComparison]) -> str:
    head = (f"{'node':<26} {'calls':>6} {'gt':>6} {'err%':>6} {'avg ms':>8} {'gt ms':>8} {'err%':>6} "
            f"{'pps err%':>8} {'pts eq':>6} {'cover':>6}")
    lines = [head]
    for r in rows:
        lines.append(
            f"{r.name[:26]:<26} {r.calls:>6} {r.gt_calls:>6} {100 * r.calls_error:>6.1f} {r.avg_ms:>8.2f} "
            f"{r.gt_avg_ms:>8.2f} {100 * r.avg_error:>6.1f} {100 * r.pps_error:>8.1f} "
            f"{100 * r.points_equal_share:>5.0f}% {'' if r.coverage is None else f'{r.coverage:.2f}':>6}")
    return "\n".join(lines)
