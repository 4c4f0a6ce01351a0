"""The DAG's node classes: real Open3D work, the shape of a LiDAR app's nodes.

Each node has ``id``, ``name`` and ``type``; its ``on_input`` runs the
point-cloud operation in a worker thread (``asyncio.to_thread``), publishes
the result on its WebSocket topic when anyone listens, and forwards it
downstream *inside* its own call — so a node's wall time includes its
descendants', as in the apps perfd profiles.

Every Open3D call is timed on its own (the span a uprobe on the C++ symbol
sees) and recorded under the op name ``probes/open3d.toml`` uses.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import TYPE_CHECKING

import numpy as np
import open3d as o3d

from perfd.demo import frames
from perfd.demo.config import NodeDelay

if TYPE_CHECKING:
    from perfd.demo.metrics.collector import GroundTruthCollector
    from perfd.demo.services.nodes.routing import DataRouter
    from perfd.demo.services.websocket.manager import ConnectionManager

_ID_NAMESPACE = uuid.UUID("6f1c1f0e-4a8e-4d2b-9a51-5d3c0c2f7e11")
EMPTY = np.empty((0, 3), dtype=np.float32)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def node_id_for(name: str) -> str:
    """Stable across runs, so tests and dashboards can name nodes by id."""
    return str(uuid.uuid5(_ID_NAMESPACE, slug(name)))


def topic_for(name: str, node_id: str) -> str:
    return f"{slug(name)}_{node_id[:8]}"


def _cloud(points: np.ndarray) -> o3d.geometry.PointCloud:
    return o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))


def _xyz(cloud: o3d.geometry.PointCloud) -> np.ndarray:
    return np.asarray(cloud.points, dtype=np.float32)


def _spin(ms: float) -> None:
    end = time.perf_counter() + ms / 1000.0
    while time.perf_counter() < end:
        pass


class BaseNode:
    type = "base"

    def __init__(self, node_id: str, name: str, *, router: "DataRouter", connections: "ConnectionManager",
                 collector: "GroundTruthCollector", delay: NodeDelay | None = None) -> None:
        self.id = node_id
        self.name = name
        self.topic = topic_for(name, node_id)
        self.delay = delay
        self._router = router
        self._connections = connections
        self._collector = collector

    def process(self, points: np.ndarray) -> np.ndarray:
        """The node's work; runs in a worker thread."""
        raise NotImplementedError

    async def on_input(self, payload: dict) -> None:
        points = await asyncio.to_thread(self.process, payload["points"])
        if self.delay is not None:
            await self._extra_work()
        await self.publish({"points": points, "frame_id": payload["frame_id"], "timestamp": payload["timestamp"]})

    async def publish(self, payload: dict) -> None:
        """Broadcast to this node's topic (if subscribed), then run the downstream nodes."""
        if self._connections.has_subscribers(self.topic):
            await self._connections.broadcast(
                self.topic, frames.encode(payload["points"], payload["frame_id"], payload["timestamp"]))
        await self._router.forward_data(self.id, payload)

    async def _extra_work(self) -> None:
        if self.delay.mode == "sleep":
            await asyncio.sleep(self.delay.ms / 1000.0)
        else:
            _spin(self.delay.ms)  # deliberately blocks the event loop

    def _timed(self, op: str, call, *args):  # noqa: ANN001, ANN202 - any Open3D bound method
        start = time.monotonic_ns()
        result = call(*args)
        self._collector.op_done(self.id, op, start)
        return result

    def describe(self) -> dict:
        return {"id": self.id, "name": self.name, "type": self.type, "topic": self.topic}


class SensorNode(BaseNode):
    """The source: frames come from the sensor queue, not from another node."""

    type = "sensor"

    def process(self, points: np.ndarray) -> np.ndarray:
        return points


class CropNode(BaseNode):
    """Region of interest in plain numpy (no Open3D op)."""

    type = "crop"

    def __init__(self, *args, half_extent_m: float = 20.0, z_range: tuple[float, float] = (-1.0, 4.0),
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.half_extent_m = half_extent_m
        self.z_range = z_range

    def process(self, points: np.ndarray) -> np.ndarray:
        half = self.half_extent_m
        keep = ((np.abs(points[:, 0]) <= half) & (np.abs(points[:, 1]) <= half)
                & (points[:, 2] >= self.z_range[0]) & (points[:, 2] <= self.z_range[1]))
        return points[keep]


class VoxelDownsampleNode(BaseNode):
    type = "voxel_downsample"

    def __init__(self, *args, voxel_size: float = 0.6, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.voxel_size = voxel_size

    def process(self, points: np.ndarray) -> np.ndarray:
        if len(points) == 0:
            return EMPTY
        return _xyz(self._timed("voxel_down_sample", _cloud(points).voxel_down_sample, self.voxel_size))


class StatisticalOutlierNode(BaseNode):
    type = "outlier_removal"

    def __init__(self, *args, nb_neighbors: int = 10, std_ratio: float = 2.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nb_neighbors = nb_neighbors
        self.std_ratio = std_ratio

    def process(self, points: np.ndarray) -> np.ndarray:
        if len(points) <= self.nb_neighbors:
            return points
        cloud, _ = self._timed("remove_statistical_outlier", _cloud(points).remove_statistical_outlier,
                               self.nb_neighbors, self.std_ratio)
        return _xyz(cloud)


class PlaneSegmentationNode(BaseNode):
    """Finds the ground plane and passes on what is not ground."""

    type = "plane_segmentation"

    def __init__(self, *args, distance_threshold: float = 0.2, iterations: int = 100, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.distance_threshold = distance_threshold
        self.iterations = iterations

    def process(self, points: np.ndarray) -> np.ndarray:
        if len(points) < 3:
            return points
        cloud = _cloud(points)
        _, inliers = self._timed("segment_plane", cloud.segment_plane, self.distance_threshold, 3, self.iterations)
        return _xyz(self._timed("select_by_index", cloud.select_by_index, inliers, True))


class DbscanClusteringNode(BaseNode):
    """Clusters objects; passes on the clustered points (noise dropped)."""

    type = "dbscan_clustering"

    def __init__(self, *args, eps: float = 1.0, min_points: int = 10, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps
        self.min_points = min_points
        self.last_cluster_count = 0

    def process(self, points: np.ndarray) -> np.ndarray:
        if len(points) < self.min_points:
            return EMPTY
        labels = np.asarray(self._timed("cluster_dbscan", _cloud(points).cluster_dbscan, self.eps, self.min_points))
        self.last_cluster_count = int(labels.max()) + 1 if len(labels) else 0
        return points[labels >= 0]
