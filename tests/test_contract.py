"""The models, the shipped schema copy and the Prometheus rendering agree with the contract."""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from conftest import ROOT, SCHEMA_PATH
from perfd.prometheus import render
from perfd.registry import Registry
from perfd.snapshot import (
    DagMetrics, DagNodeMetrics, EndpointMetrics, Open3DOpMetrics, SystemMetrics, TargetStatus,
    WebSocketMetrics, WsTopicMetrics, dump,
)
from perfd_process import validate

SHARED = ROOT.parent / "shared" / "snapshot.schema.json"


@pytest.mark.skipif(not SHARED.exists(), reason="no product definition checkout beside the repo")
def test_shipped_schema_is_the_contract():
    assert json.loads(SCHEMA_PATH.read_text()) == json.loads(SHARED.read_text())


def _registry_with_everything() -> Registry:
    r = Registry()
    r.attach(TargetStatus(pid=1, python="3.12.1", exe="/x", attached_at=time.time()))
    r.publish_dag(DagMetrics(nodes=[
        DagNodeMetrics(node_id='we"ird\\id\n', node_name="Crop", node_type="crop"),
        DagNodeMetrics(node_id="b", node_name="Voxel", node_type="voxel", calls_total=3,
                       open3d_ops={"voxel_down_sample": Open3DOpMetrics(last_ms=1, avg_ms=2, calls=3)}),
    ], total_nodes=2, running_nodes=1))
    r.publish_websocket(WebSocketMetrics(topics={"crop_abc": WsTopicMetrics(total_messages=4)}, total_connections=1))
    r.publish_endpoints([EndpointMetrics(path="/api/nodes", method="GET", last_status_code=404)])
    r.update_system(cpu_percent=12.5, thread_count=7)
    return r


def test_full_snapshot_validates_and_omits_unset_extensions(snapshot_schema):
    data = dump(_registry_with_everything().snapshot())
    validate(data, snapshot_schema)
    assert "open3d_ops" not in data["dag"]["nodes"][0]  # unset extension is absent, not null
    assert data["dag"]["nodes"][1]["open3d_ops"]["voxel_down_sample"]["calls"] == 3
    assert data["perfd"]["sources"]["stacks"]["reason"]  # reasons survive (null is meaningful there)


def test_models_refuse_what_the_schema_refuses():
    with pytest.raises(ValidationError):
        SystemMetrics(cpu_percent=101)
    with pytest.raises(ValidationError):
        DagNodeMetrics(node_id="", node_name="x", node_type="y")
    with pytest.raises(ValidationError):
        EndpointMetrics(path="/api/x", method="GET", last_status_code=42)
    with pytest.raises(ValidationError):
        WsTopicMetrics(total_bytes=-1)


def test_prometheus_escapes_labels_and_parses():
    r = _registry_with_everything()
    text = render(r.snapshot(), r.health(broadcaster_running=True))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    ids = {s.labels["node_id"] for s in families["perfd_node_last_exec_ms"].samples}
    assert 'we"ird\\id\n' in ids
    assert families["perfd_open3d_op_calls"].samples[0].value == 3
    assert families["perfd_endpoint_last_status_code"].samples[0].value == 404
    assert families["perfd_system_thread_count"].samples[0].value == 7


def test_prometheus_while_detached_says_down():
    r = Registry()
    text = render(None, r.health(broadcaster_running=False))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["perfd_up"].samples[0].value == 0
