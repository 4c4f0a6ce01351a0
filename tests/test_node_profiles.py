"""Per-node profiles: worker-thread samples belong to the node call that awaits them."""

from __future__ import annotations

import json

import pytest

from conftest import wait_for
from demo_helpers import demo_factory  # noqa: F401 - fixture
from perfd_process import PerfdServer


@pytest.mark.slow
def test_profiles_attribute_worker_threads_to_their_node(demo_factory):  # noqa: F811
    demo = demo_factory(points=65536)
    nodes = {n["node_name"]: n["node_id"] for n in demo.get_json("/api/metrics")["dag"]["nodes"]}
    with PerfdServer(demo.pid, "--no-capture", "--no-uprobes", "--rate", "500") as server:
        voxel = nodes["Voxel Downsample"]

        def collapsed() -> str:
            status, body, _ = server.get(f"/api/profile?node_id={voxel}&format=collapsed")
            return body.decode() if status == 200 else ""

        text = wait_for(lambda: "VoxelDownsampleNode.process" in collapsed() and collapsed(), timeout=20, interval=0.5)
        lines = [line.rsplit(" ", 1) for line in text.strip().splitlines()]
        assert all(count.isdigit() and int(count) > 0 for _, count in lines)
        # the voxel node's worker-thread work is in its profile, not another node's work
        assert any("VoxelDownsampleNode.process" in stack for stack, _ in lines)
        assert not any("DbscanClusteringNode.process" in stack for stack, _ in lines)

        status, body, _ = server.get(f"/api/v1/profile?node_id={voxel}&format=speedscope")
        assert status == 200
        doc = json.loads(body)
        assert doc["profiles"][0]["type"] == "sampled"
        frames = doc["shared"]["frames"]
        assert all(0 <= i < len(frames) for sample in doc["profiles"][0]["samples"] for i in sample)
        assert sum(doc["profiles"][0]["weights"]) == doc["profiles"][0]["endValue"] > 0

        assert server.get("/api/profile?node_id=nope&format=collapsed")[0] == 404
        assert server.get(f"/api/profile?node_id={voxel}&format=svg")[0] == 400
