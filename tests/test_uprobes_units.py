"""The pure parts of the uprobe source: op spec, symbol matching against the
installed Open3D, entry/return pairing, the trace_pipe line parser."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import require
from perfd.errors import UsageError
from perfd.uprobes.aggregate import ROLLING_CALLS, UNATTRIBUTED, OpAggregator
from perfd.uprobes.events import CallPairer, OpEvent
from perfd.uprobes.spec import OpSpec, load_spec, parse_spec
from perfd.uprobes.symbols import open3d_candidates, resolve, resolve_in_file, symbol_matches
from perfd.cpython.layouts import frame_walk, generated_layout
from perfd.uprobes.tracefs import MAX_ARG_CHARS, MAX_DEREFS, TraceLineDecoder, frame_args, frame_owner, parse_line

open3d = pytest.importorskip("open3d")
LIBOPEN3D = next(Path(open3d.__file__).parent.glob("libOpen3D.so*"))

REQUIRED_OPS = {
    "voxel_down_sample", "remove_statistical_outlier", "remove_radius_outlier", "segment_plane",
    "cluster_dbscan", "estimate_normals", "crop", "select_by_index", "registration_icp",
}


# --- spec -------------------------------------------------------------------------------


def test_shipped_spec_covers_required_ops_in_both_apis():
    spec = {op.name: op for op in load_spec()}
    assert REQUIRED_OPS <= set(spec)
    for name in REQUIRED_OPS - {"registration_icp"}:
        prefixes = {s.split("::")[1] for s in spec[name].symbols}
        assert prefixes == {"geometry", "t"}, name  # legacy and tensor variants


@pytest.mark.parametrize("text", ["", "[ops]", "[ops.x]\nsymbols = []", "[ops.x]\nsymbols = [1]", "ops = ["])
def test_malformed_spec_is_a_usage_error(text):
    with pytest.raises(UsageError):
        parse_spec(text)


# --- symbols -----------------------------------------------------------------------------


def test_every_required_op_resolves_in_installed_open3d():
    points = resolve_in_file(str(LIBOPEN3D), load_spec())
    assert {p.op for p in points} >= REQUIRED_OPS
    for p in points:
        assert p.symbol.startswith("_Z") and p.file_offset > 0
    # Both Crop overloads (AxisAligned, Oriented) in both APIs are "crop".
    assert sum(p.op == "crop" for p in points) == 4
    assert not any("VoxelDownSampleAndTrace" in p.symbol for p in points)
    assert not any("TriangleMesh" in p.symbol for p in points)


def test_nested_name_matching_is_exact():
    assert symbol_matches("_ZNK6open3d8geometry10PointCloud15VoxelDownSampleEd", "open3d::geometry::PointCloud::VoxelDownSample")
    assert not symbol_matches(
        "_ZNK6open3d8geometry10PointCloud23VoxelDownSampleAndTraceEdRKN5Eigen6MatrixIdLi3ELi1ELi0ELi3ELi1EEES6_b",
        "open3d::geometry::PointCloud::VoxelDownSample",
    )
    assert symbol_matches("_ZN6open3d1t8geometry10PointCloud15EstimateNormalsESt8optionalIiES3_IdE",
                          "open3d::t::geometry::PointCloud::EstimateNormals")
    assert not symbol_matches("_ZN6open3d1t8geometry10PointCloud15EstimateNormalsESt8optionalIiES3_IdE",
                              "open3d::geometry::PointCloud::EstimateNormals")


def test_parameter_list_pins_one_overload():
    require("c++filt", shutil.which("c++filt") is not None, "binutils")
    sig = "open3d::geometry::PointCloud::Crop(open3d::geometry::OrientedBoundingBox const&, bool) const"
    points = resolve_in_file(str(LIBOPEN3D), [OpSpec("crop_obb", (sig,))])
    assert [p.demangled for p in points] == [sig]


def test_missing_ops_are_reported(spawn):
    spec = load_spec() + [OpSpec("not_in_open3d", ("open3d::geometry::PointCloud::NoSuchFunction",))]
    target = spawn("open3d_ops.py")
    res = resolve(target.pid, spec)
    assert res.library and res.library.endswith(LIBOPEN3D.name)
    assert res.missing == ["not_in_open3d"]
    assert res.ops[-1] == "not_in_open3d"


def test_target_without_open3d_resolves_to_nothing(spawn):
    from perfd.cpython.maps import read_maps

    target = spawn("idle.py")
    assert open3d_candidates(read_maps(target.pid)) == []
    res = resolve(target.pid, load_spec())
    assert not res.found and set(res.missing) >= REQUIRED_OPS


# --- pairing -----------------------------------------------------------------------------


def test_nested_and_recursive_calls_pair_by_stack_pointer():
    p = CallPairer(["outer", "inner"])
    p.entry(7, 0, sp=1000, ts_ns=100)
    p.entry(7, 1, sp=900, ts_ns=200)
    p.entry(7, 1, sp=800, ts_ns=300)  # recursion
    assert p.ret(7, sp=808, ts_ns=350) == OpEvent(7, "inner", 300, 50, 2)
    assert p.ret(7, sp=908, ts_ns=400) == OpEvent(7, "inner", 200, 200, 1)
    assert p.ret(7, sp=1008, ts_ns=1000) == OpEvent(7, "outer", 100, 900, 0)
    assert p.open_calls() == 0 and p.stats.unmatched_returns == 0


def test_unwound_call_is_discarded_not_mispaired():
    p = CallPairer(["outer", "inner"])
    p.entry(1, 0, sp=1000, ts_ns=0)
    p.entry(1, 1, sp=900, ts_ns=10)  # an exception unwinds through inner: no return
    assert p.ret(1, sp=1008, ts_ns=50) == OpEvent(1, "outer", 0, 50, 0)
    assert p.stats.abandoned_entries == 1 and p.open_calls() == 0


def test_return_without_entry_is_counted():
    p = CallPairer(["op"])
    assert p.ret(1, sp=1008, ts_ns=5) is None
    p.entry(2, 0, sp=1000, ts_ns=0)
    assert p.ret(1, sp=1008, ts_ns=5) is None  # another thread's stack is not touched
    assert p.stats.unmatched_returns == 2 and p.open_calls() == 1


# --- trace_pipe lines ------------------------------------------------------------------------

ENTRY = "          python-5772    (   5772) [000] DBZff   632.412540: crop_0: (0x7f46d0adc3b0) sp=0x7ffe3614e278"
RETURN = "     my-thread 2-5790    (   5772) [001] d..3.   632.415619: crop_0_ret: (0x7f46db8fac9a <- 0x7f46d0adc3b0) sp=0x7ffe3614e280"


def test_trace_line_parser():
    hit = parse_line(ENTRY)
    assert (hit.tid, hit.tgid, hit.ts_ns, hit.event, hit.sp) == (5772, 5772, 632_412_540_000, "crop_0", 0x7FFE3614E278)
    hit = parse_line(RETURN)  # a comm with spaces and dashes
    assert (hit.tid, hit.event) == (5790, "crop_0_ret")
    assert parse_line("# tracer: nop") is None


def test_decoder_pairs_across_chunk_boundaries_and_drops_other_processes():
    d = TraceLineDecoder(5772, ["crop"], {"crop_0": 0}, {"crop_0_ret"})
    ret = RETURN.replace("5790", "5772")
    data = (ENTRY + "\n" + ENTRY.replace("(   5772)", "(   9999)") + "\n" + ret + "\n").encode()
    events = d.feed(data[:50]) + d.feed(data[50:130]) + d.feed(data[130:])
    assert events == [OpEvent(5772, "crop", 632_412_540_000, 3_079_000, 0)]
    assert d.foreign_lines == 1 and d.bad_lines == 0


# --- frames fetched by tracefs entries ---------------------------------------------------------


@pytest.mark.parametrize("minor", ["3.11", "3.12", "3.13"])
def test_frame_args_stay_within_the_kernels_limits(minor):
    walk = frame_walk(generated_layout(minor), runtime_addr=0x7F00_0000_0000)
    args = frame_args(walk)
    assert args[0].startswith("ht=+") and args[-1] == args[0].replace("ht=", "hu=")
    frames = [a for a in args if a.startswith("f")]
    assert len(frames) >= 7  # the demo's node method is frame 0 or 1; the frames test needs 7
    for a in args:
        expr = a.split("=", 1)[1].rsplit(":", 1)[0]
        assert len(expr) <= MAX_ARG_CHARS and expr.count("(") + 2 <= MAX_DEREFS, a
    assert ("o0=" in " ".join(args)) == (walk.owner_cstack >= 0)  # 3.11 has no C-stack shims
    assert frame_args(frame_walk(generated_layout(minor))) == []  # no runtime address: no frames


def test_frame_owner_trusts_only_the_callers_own_frames():
    owners = {0xA0, 0xB0}
    args = {"ht": 7, "f0": 0x10, "l0": 0x99, "o0": 0, "f1": 0x20, "l1": 0xB0, "o1": 3, "f2": 0x30, "l2": 0xA0,
            "o2": 0, "f3": 0, "l3": 0xB0, "hu": 7}
    assert frame_owner(7, args, owners, owner_cstack=3) == 0xA0  # frame 1 is a C-stack shim: its "local" is not one
    assert frame_owner(7, args, owners, owner_cstack=-1) == 0xB0
    assert frame_owner(8, args, owners, 3) == 0  # the GIL holder is another thread
    assert frame_owner(7, {**args, "hu": 9}, owners, 3) == 0  # ... or became one during the fetch
    # past the end of the chain (f == 0) the fetched values are stale buffer bytes
    assert frame_owner(7, {**args, "l2": 0x55}, owners, 3) == 0


def test_entry_lines_with_frames_name_their_owner():
    d = TraceLineDecoder(5772, ["crop"], {"crop_0": 0}, {"crop_0_ret"}, owner_cstack=3)
    d.owners = frozenset({0x7F0000001000})
    entry = ENTRY + " ht=5772 f0=0x55aa00 l0=0x7f0000001000 o0=0 hu=5772"
    assert parse_line(entry).args == {"ht": 5772, "f0": 0x55AA00, "l0": 0x7F0000001000, "o0": 0, "hu": 5772}
    (ev,) = d.feed((entry + "\n" + RETURN.replace("5790", "5772") + "\n").encode())
    assert ev.owner == 0x7F0000001000


# --- aggregation ----------------------------------------------------------------------------


def test_aggregator_rolling_average_and_unattributed():
    agg = OpAggregator(attribute=lambda ev: "n1" if ev.tid == 1 else None)
    for i in range(ROLLING_CALLS + 10):
        agg.add(OpEvent(1, "crop", i, (i + 1) * 1_000_000, 0))
    agg.add(OpEvent(2, "crop", 0, 2_000_000, 0))
    agg.add(OpEvent(1, "select_by_index", 0, 1_000_000, 1))  # nested: not counted
    by_node = agg.by_node()
    m = by_node["n1"]["crop"]
    assert m.calls == ROLLING_CALLS + 10 and m.last_ms == ROLLING_CALLS + 10
    assert m.avg_ms == pytest.approx(sum(range(11, ROLLING_CALLS + 11)) / ROLLING_CALLS)
    assert by_node[UNATTRIBUTED]["crop"].calls == 1
    assert "select_by_index" not in by_node["n1"] and agg.nested_total == 1


def test_broken_attribution_callback_does_not_lose_events():
    def boom(ev):
        raise KeyError(ev.tid)

    agg = OpAggregator(attribute=boom)
    agg.add(OpEvent(1, "crop", 0, 1, 0))
    assert agg.by_node()[UNATTRIBUTED]["crop"].calls == 1 and agg.attribution_errors == 1


def test_attribution_waits_for_the_sampler_to_catch_up():
    asked = []
    agg = OpAggregator(attribute=lambda ev: asked.append(ev.tid) or "n1", settle_ns=10_000_000_000)
    import time

    now = time.monotonic_ns()
    agg.add(OpEvent(1, "crop", now - 1_000_000, 1_000_000, 0))  # ended just now
    agg.add(OpEvent(2, "crop", now - 20_000_000_000, 1_000_000, 0))  # ended 20 s ago
    assert agg.by_node()["n1"]["crop"].calls == 1 and asked == [2]
    agg.settle(force=True)
    assert asked == [2, 1] and agg.by_node()["n1"]["crop"].calls == 2


def test_stale_probe_names_are_recognised(tmp_path):
    """Names carry the owning perfd's PID: a dead owner's probes and instances
    are stale (also libbcc's fallback definitions under group "uprobes"), a
    live owner's and other tools' are not."""
    import os

    from perfd.uprobes.stale import find_stale

    dead = 2**22 + 7  # above pid_max's default: no such process
    live = os.getpid()
    (tmp_path / "uprobe_events").write_text(
        f"p:perfd_{dead}_10/crop_0 /lib/libOpen3D.so:0x30dae10 sp=%sp\n"
        f"r:perfd_{dead}_10/crop_0_ret /lib/libOpen3D.so:0x30dae10 sp=%sp\n"
        f"r:uprobes/perfd_{dead}_10_r0_bcc_{dead} /lib/libOpen3D.so:0x00000000030dae10\n"
        f"p:perfd_{live}_10/crop_0 /lib/libOpen3D.so:0x30dae10 sp=%sp\n"
        f"p:uprobes/p__lib_libc_so_6_0xd54e0_{dead} /lib/libc.so.6:0xd54e0\n"
    )
    (tmp_path / "instances" / f"perfd-{dead}-10").mkdir(parents=True)
    (tmp_path / "instances" / f"perfd-{live}-10").mkdir()
    (tmp_path / "instances" / "someone-else").mkdir()
    stale = find_stale(tmp_path)
    assert stale.events == [f"perfd_{dead}_10/crop_0", f"perfd_{dead}_10/crop_0_ret", f"uprobes/perfd_{dead}_10_r0_bcc_{dead}"]
    assert [p.name for p in stale.instances] == [f"perfd-{dead}-10"]


def test_lost_return_does_not_make_later_calls_nested():
    """A return lost (buffer overflow, exception) leaves a stale frame; the next
    call from the same place has the same stack pointer and replaces it."""
    p = CallPairer(["op"])
    p.entry(1, 0, sp=1000, ts_ns=0)  # its return is lost
    p.entry(1, 0, sp=1000, ts_ns=10)
    assert p.ret(1, sp=1008, ts_ns=15) == OpEvent(1, "op", 10, 5, 0)
    assert p.stats.abandoned_entries == 1 and p.open_calls() == 0
