"""Which nodes the demo runs, wired into the NodeManager.

Default: sensor → crop → voxel → outliers → {plane, dbscan}, with the
clustering node throttled to half the frame rate. ``--fanout K`` puts K
branches (plane, dbscan, plane, …) after outlier removal; ``--chain N``
replaces it all with a linear DAG of N processing nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from perfd.demo.config import DemoConfig, NodeDelay
from perfd.demo.nodes import (
    BaseNode,
    CropNode,
    DbscanClusteringNode,
    PlaneSegmentationNode,
    SensorNode,
    StatisticalOutlierNode,
    VoxelDownsampleNode,
    node_id_for,
    slug,
)

if TYPE_CHECKING:
    from perfd.demo.metrics.collector import GroundTruthCollector
    from perfd.demo.services.nodes.manager import NodeManager
    from perfd.demo.services.nodes.routing import DataRouter
    from perfd.demo.services.websocket.manager import ConnectionManager

SENSOR = "LiDAR Sensor"
CROP = "ROI Crop"
VOXEL = "Voxel Downsample"
OUTLIERS = "Outlier Removal"
PLANE = "Ground Plane Segmentation"
DBSCAN = "Object Clustering"


@dataclass
class NodePlan:
    name: str
    cls: type[BaseNode]
    downstream: list[str] = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    throttle_share: float | None = None  # max Hz as a share of the frame rate


def plan(config: DemoConfig) -> list[NodePlan]:
    if config.chain is not None:
        return _chain(config.chain)
    branches = [NodePlan(PLANE, PlaneSegmentationNode), NodePlan(DBSCAN, DbscanClusteringNode, throttle_share=0.5)]
    if config.fanout != 2:
        branches = []
        for i in range(config.fanout):
            kind = (PLANE, PlaneSegmentationNode) if i % 2 == 0 else (DBSCAN, DbscanClusteringNode)
            branches.append(NodePlan(f"{kind[0]} {i + 1}", kind[1], throttle_share=0.5 if i == 1 else None))
    return [
        NodePlan(SENSOR, SensorNode, [CROP]),
        NodePlan(CROP, CropNode, [VOXEL]),
        NodePlan(VOXEL, VoxelDownsampleNode, [OUTLIERS]),
        NodePlan(OUTLIERS, StatisticalOutlierNode, [b.name for b in branches]),
        *branches,
    ]


def _chain(length: int) -> list[NodePlan]:
    """crop, then voxel / outlier stages alternating (each voxel a bit coarser)."""
    plans = [NodePlan(SENSOR, SensorNode), NodePlan(CROP, CropNode)]
    for i in range(1, length):
        if i % 2:
            plans.append(NodePlan(f"{VOXEL} {i}", VoxelDownsampleNode, kwargs={"voxel_size": 0.5 + 0.1 * i}))
        else:
            plans.append(NodePlan(f"{OUTLIERS} {i}", StatisticalOutlierNode))
    for upstream, downstream in zip(plans, plans[1:]):
        upstream.downstream = [downstream.name]
    return plans


def build(config: DemoConfig, manager: "NodeManager", router: "DataRouter", connections: "ConnectionManager",
          collector: "GroundTruthCollector") -> None:
    """Create the planned nodes and register them (ids are stable across runs)."""
    plans = plan(config)
    delays = _resolve_delays(config.node_delays, plans)
    for p in plans:
        node_id = node_id_for(p.name)
        node = p.cls(node_id, p.name, router=router, connections=connections, collector=collector,
                     delay=delays.get(p.name), **p.kwargs)
        manager.register(node, [node_id_for(name) for name in p.downstream])
        if p.throttle_share is not None:
            manager.set_throttle(node_id, config.hz * p.throttle_share, config.hz)
    manager.sensor_id = node_id_for(SENSOR)


def _resolve_delays(delays: dict[str, NodeDelay], plans: list[NodePlan]) -> dict[str, NodeDelay]:
    """Delay keys may be a node's name, its slug, or its id (or an id prefix)."""
    out = {}
    for key, delay in delays.items():
        matches = [p.name for p in plans
                   if key in (p.name, slug(p.name)) or node_id_for(p.name).startswith(key)]
        if len(matches) != 1:
            names = ", ".join(slug(p.name) for p in plans)
            raise ValueError(f"--node-delay-ms {key!r} matches {len(matches)} nodes; nodes are: {names}")
        out[matches[0]] = delay
    return out
