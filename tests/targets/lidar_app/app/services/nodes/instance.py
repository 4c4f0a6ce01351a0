"""Singletons at the paths the lidar_scan profile lists for `app.services...` layouts."""

import json
import multiprocessing
import os
import time

from app.services.nodes.managers.nodes import Decimate, Sink, Smooth
from app.services.nodes.managers.routing import DataRouter


class NodeManager:
    def __init__(self):
        self.nodes = {}
        self.downstream_map = {}
        self.data_queue = multiprocessing.Queue(maxsize=500)
        self._throttled_count = {}
        self.truth = {}  # node_id -> {"calls": n, "points": last}

    def record(self, node_id, payload):
        entry = self.truth.setdefault(node_id, {"calls": 0, "points": 0})
        entry["calls"] += 1
        entry["points"] = len(payload["points"])

    def dump_truth(self, path):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"time": time.time(), "nodes": self.truth}, f)
        os.replace(tmp, path)


node_manager = NodeManager()
router = DataRouter(node_manager)


def build():
    specs = [
        ("src-0001", "Source", "sensor", None, ["dec-0002"]),
        ("dec-0002", "Decimate", "decimate", Decimate, ["smo-0003"]),
        ("smo-0003", "Smooth", "smooth", Smooth, ["snk-0004", "snk-0005"]),
        ("snk-0004", "Sink A", "sink", Sink, []),
        ("snk-0005", "Sink B", "sink", Sink, []),
    ]
    for node_id, name, kind, cls, downstream in specs:
        if cls is not None:
            node_manager.nodes[node_id] = cls(node_id, name, kind, router, node_manager)
        node_manager.downstream_map[node_id] = downstream
