"""Open3D op timings from uprobes, against real Open3D in a real process.

Every behavioural test runs once per backend (bcc, tracefs). The target times
its own calls (tests/targets/open3d_ops.py): that is the ground truth.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from conftest import TARGETS, Target, require, wait_for
from perfd.errors import UsageError
from perfd.registry import Registry
from perfd.uprobes import UNATTRIBUTED, UprobeSource, check_backends
from perfd.uprobes.stale import find_stale, remove_stale
from perfd.uprobes.tracefs import GROUP_PREFIX, INSTANCE_PREFIX, tracefs_root

pytestmark = pytest.mark.privileged

BACKENDS = ("bcc", "tracefs")
_WORKS = {c.backend: c for c in check_backends()}


def require_backend(backend: str) -> None:
    check = _WORKS[backend]
    require(f"uprobes backend {backend}", check.works, check.detail)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    require_backend(request.param)
    return request.param


def open3d_target(spawn, *args: str) -> Target:
    # Open3D is installed for perfd's own interpreter; the probes do not depend
    # on the Python version (they sit on libOpen3D's C++ symbols).
    return spawn("open3d_ops.py", *args)


def run_ops_full(target: Target) -> dict:
    """Start the target's timed run; its whole RESULT record."""
    os.kill(target.pid, signal.SIGUSR1)
    line = target.proc.stdout.readline()
    assert line.startswith("RESULT "), f"target failed: {line!r} {target.proc.stderr.read()!r}"
    return json.loads(line[7:])


def run_ops(target: Target) -> dict[int, dict[str, list[float]]]:
    """Start the target's timed run; its ground truth {tid: {op: [ms]}}."""
    return {int(tid): ops for tid, ops in run_ops_full(target)["threads"].items()}


def counted_calls(source: UprobeSource) -> int:
    return sum(m.calls for ops in source.ops_by_node().values() for m in ops.values())


def settle(source: UprobeSource, expected_calls: int) -> None:
    """Wait until ``expected_calls`` op calls have been counted (over all nodes)."""
    wait_for(lambda: (source.flush(), counted_calls(source) >= expected_calls)[1], timeout=10)


def merged(truth: dict[int, dict[str, list[float]]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for ops in truth.values():
        for op, durations in ops.items():
            out.setdefault(op, []).extend(durations)
    return out


def within(measured_ms: float, truth_ms: float) -> bool:
    """The acceptance tolerance: ±5% or ±0.2 ms, whichever is looser."""
    return abs(measured_ms - truth_ms) <= max(0.05 * truth_ms, 0.2)


def our_probe_lines() -> list[str]:
    mine = f"{GROUP_PREFIX}{os.getpid()}_"
    return [line for line in (tracefs_root() / "uprobe_events").read_text().splitlines() if mine in line]


def our_instances() -> list[str]:
    return [p.name for p in (tracefs_root() / "instances").iterdir() if p.name.startswith(f"{INSTANCE_PREFIX}{os.getpid()}-")]


def code_bytes(pid: int) -> bytes:
    """First byte of every probed function in the target: 0xCC while a uprobe
    breakpoint is installed there, the original instruction otherwise."""
    from perfd.cpython.maps import load_base, read_maps
    from perfd.uprobes.spec import load_spec
    from perfd.uprobes.symbols import resolve

    res = resolve(pid, load_spec())
    base = load_base(read_maps(pid), res.library)
    with open(f"/proc/{pid}/mem", "rb") as mem:
        out = b""
        for point in res.points:
            mem.seek(base + point.vaddr)
            out += mem.read(1)
    return out


def bpf_prog_ids(pid: int | str = "self") -> set[int]:
    """BPF programs a process holds, from its fdinfo."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


def bpf_prog_loaded(prog_id: int) -> bool:
    """Is a BPF program with this id loaded anywhere on the system (``bpftool prog``)?"""
    BPF_PROG_GET_FD_BY_ID = 13
    attr = (ctypes.c_uint32 * 4)(prog_id, 0, 0, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(321, BPF_PROG_GET_FD_BY_ID, ctypes.byref(attr), ctypes.sizeof(attr))  # SYS_bpf
    if fd >= 0:
        os.close(fd)
        return True
    assert ctypes.get_errno() == errno.ENOENT, os.strerror(ctypes.get_errno())
    return False


# --- accuracy ---------------------------------------------------------------------


def test_calls_exact_and_durations_match_ground_truth(spawn, backend):
    """Counts exactly; the mean within ±5% / ±0.2 ms. The target's timed thread
    runs SCHED_FIFO: on a loaded host a preemption between its clock read and
    the C++ call would stretch only the Python-side span (not a probe error)."""
    target = open3d_target(spawn, "--iterations", "8", "--api", "both", "--realtime")
    registry = Registry()
    events = []
    with UprobeSource(target.pid, registry, backend=backend) as source:
        source.add_listener(events.append)
        assert source.backend.name == backend
        assert registry.perfd_status().sources["uprobes"].active
        result = run_ops_full(target)
        ((tid, truth),) = ((int(t), ops) for t, ops in result["threads"].items())
        preempted = result["preempted"][str(tid)]
        settle(source, sum(len(d) for d in truth.values()))
        ops = source.ops_by_node()
    assert set(ops) == {UNATTRIBUTED}  # no attribution callback: all explicit, none dropped
    measured = ops[UNATTRIBUTED]
    assert set(measured) == set(truth) and len(truth) == 9
    for op, durations in truth.items():
        m = measured[op]
        assert m.calls == len(durations), op
        probed = [e.duration_ns / 1e6 for e in sorted(events, key=lambda e: e.start_ns)
                  if e.op == op and e.depth == 0 and e.tid == tid]
        assert len(probed) == len(durations)
        # Call by call, the C++ span lies inside the Python-side timer.
        assert all(p <= t + 0.05 for p, t in zip(probed, durations)), (op, probed, durations)
        assert 0 < m.last_ms <= durations[-1] + 0.05, f"{op}: last {m.last_ms:.3f} vs truth {durations[-1]:.3f} ms"
        truth_avg = sum(durations[-60:]) / len(durations[-60:])
        assert within(m.avg_ms, truth_avg), (
            f"{op}: avg {m.avg_ms:.3f} ms vs truth {truth_avg:.3f} ms; {sum(preempted[op])} of {len(durations)} "
            f"calls preempted (load average {os.getloadavg()[0]:.1f})")


def test_nested_internal_calls_do_not_count(spawn, backend):
    """crop and remove_statistical_outlier call SelectByIndex inside Open3D:
    those inner calls are seen (nested) but only the node's own calls count."""
    target = open3d_target(spawn, "--iterations", "3", "--api", "legacy", "--ops", "crop,remove_statistical_outlier")
    with UprobeSource(target.pid, Registry(), backend=backend) as source:
        truth = merged(run_ops(target))
        settle(source, 6)
        wait_for(lambda: source.status().nested_calls >= 6)
        ops = source.ops_by_node()[UNATTRIBUTED]
        status = source.status()
    assert set(ops) == {"crop", "remove_statistical_outlier"}
    assert ops["crop"].calls == len(truth["crop"]) == 3
    assert ops["remove_statistical_outlier"].calls == 3
    assert status.nested_calls == 6
    assert status.unmatched_returns == 0 and status.abandoned_entries == 0


def test_threads_attributed_to_their_nodes(spawn, backend):
    """Per-thread stacks: two threads run ops concurrently; the attribution
    callback maps one thread to a node and leaves the other unattributed."""
    target = open3d_target(spawn, "--iterations", "3", "--api", "legacy", "--threads", "2",
                           "--ops", "voxel_down_sample,crop,select_by_index,segment_plane")
    seen: list[tuple[int, int]] = []
    node_of: dict[int, str | None] = {}

    def attribute(ev) -> str | None:  # noqa: ANN001 - OpEvent
        # Stands in for the DAG reconstruction: the first worker thread seen
        # serves "node-a"; the other is one nobody can place.
        seen.append((ev.tid, ev.start_ns))
        return node_of.setdefault(ev.tid, None if node_of else "node-a")

    with UprobeSource(target.pid, Registry(), backend=backend, attribute=attribute) as source:
        tids_at_attach = set(int(t) for t in os.listdir(f"/proc/{target.pid}/task"))
        truth = run_ops(target)
        settle(source, sum(len(d) for ops in truth.values() for d in ops.values()))
        ops = source.ops_by_node()
        status = source.status()
    assert len(truth) == 2 and not set(truth) & tids_at_attach  # threads created after attach
    assert set(node_of) == set(truth)
    node_a = next(tid for tid, node in node_of.items() if node == "node-a")
    other = next(tid for tid in truth if tid != node_a)
    assert set(ops) == {"node-a", UNATTRIBUTED}
    for tid, node in ((node_a, "node-a"), (other, UNATTRIBUTED)):
        assert {op: m.calls for op, m in ops[node].items()} == {op: len(d) for op, d in truth[tid].items()}
    assert status.unattributed_calls == sum(len(d) for d in truth[other].values())
    now = time.monotonic_ns()
    assert all(now - 60e9 < start <= now for _, start in seen)  # start_ns is CLOCK_MONOTONIC


# --- lifecycle ----------------------------------------------------------------------


def test_target_without_open3d_is_inactive_not_an_error(spawn, backend):
    target = spawn("idle.py")
    registry = Registry()
    source = UprobeSource(target.pid, registry, backend=backend)
    assert source.start() is False
    status = registry.perfd_status().sources["uprobes"]
    assert not status.active and "Open3D not loaded" in status.reason
    assert source.ops_by_node() == {}
    assert our_probe_lines() == [] and our_instances() == []
    source.stop()


def test_stop_removes_every_probe(spawn, backend):
    target = open3d_target(spawn, "--iterations", "1", "--ops", "crop")
    before = bpf_prog_ids()
    code = code_bytes(target.pid)
    assert 0xCC not in code  # no one else's breakpoints: the check below means something
    source = UprobeSource(target.pid, Registry(), backend=backend)
    assert source.start()
    assert set(code_bytes(target.pid)) == {0xCC}
    if backend == "tracefs":
        assert len(our_probe_lines()) == 2 * source.status().probes
        assert our_instances()
    else:
        held = bpf_prog_ids() - before
        assert held and all(bpf_prog_loaded(p) for p in held)
    source.stop()
    assert our_probe_lines() == []
    assert our_instances() == []
    assert bpf_prog_ids() - before == set()
    if backend == "bcc":
        # uprobe_multi links unregister their probes on close; the kernel frees
        # the programs right after, once the link's last reference is gone
        wait_for(lambda: not any(bpf_prog_loaded(p) for p in held), timeout=2.0)
    # The target is untouched and still works without probes.
    truth = run_ops(target)
    assert sum(len(d) for d in merged(truth).values()) == 2


def test_sigkilled_perfd_leaves_nothing_after_next_start(spawn, backend):
    """A perfd killed with probes live: the kernel frees BPF programs itself;
    tracefs definitions survive it and the next start removes them."""
    target = open3d_target(spawn, "--iterations", "1", "--ops", "crop")
    code = code_bytes(target.pid)
    assert 0xCC not in code
    holder = Target([sys.executable, str(TARGETS / "open3d_probe_holder.py"), str(target.pid), backend], ready_line=None)
    try:
        line = holder.proc.stdout.readline()
        assert line.startswith("READY "), f"{line!r} {holder.proc.stderr.read()!r}"
        info = json.loads(line[6:])
        assert info["backend"] == backend
        held_group = f"{GROUP_PREFIX}{holder.pid}_{target.pid}"
        if backend == "tracefs":
            assert held_group in (tracefs_root() / "uprobe_events").read_text()
        else:
            assert info["prog_ids"] and all(bpf_prog_loaded(p) for p in info["prog_ids"])
        holder.proc.send_signal(signal.SIGKILL)
        holder.proc.wait(timeout=10)
    finally:
        holder.stop()
    if backend == "bcc":
        wait_for(lambda: not any(bpf_prog_loaded(p) for p in info["prog_ids"]), timeout=5)
        assert code_bytes(target.pid) == code  # perf-event uprobes go with their last fd
        return
    # tracefs definitions outlive their owner, still enabled in its instance:
    # the breakpoints stay in the target until the next start sweeps them.
    assert set(code_bytes(target.pid)) == {0xCC}
    stale = find_stale()
    assert any(e.startswith(held_group + "/") for e in stale.events)
    assert any(p.name == f"{INSTANCE_PREFIX}{holder.pid}-{target.pid}" for p in stale.instances)
    source = UprobeSource(target.pid, Registry(), backend=backend)
    assert source.start()
    try:
        assert held_group not in (tracefs_root() / "uprobe_events").read_text()
        assert not (tracefs_root() / "instances" / f"{INSTANCE_PREFIX}{holder.pid}-{target.pid}").exists()
        assert our_probe_lines()  # its own probes are untouched by the sweep
        assert remove_stale().events == []
    finally:
        source.stop()
    assert code_bytes(target.pid) == code


def test_auto_prefers_bcc_and_backend_is_validated(spawn):
    require_backend("bcc")
    target = open3d_target(spawn, "--iterations", "1", "--ops", "crop")
    with UprobeSource(target.pid, Registry()) as source:
        assert source.backend.name == "bcc" and source.status().fallback_reason is None
    with pytest.raises(UsageError):
        UprobeSource(target.pid, Registry(), backend="perf")


def test_doctor_reports_both_backends_working_here():
    checks = {c.backend: c for c in check_backends()}
    assert set(checks) == {"bcc", "tracefs"}
    for name, check in checks.items():
        require(f"uprobes backend {name}", check.works, check.detail)
        assert check.detail


def test_bcc_and_tracefs_coexist_and_target_memory_is_unchanged(spawn):
    """bcc probes carry no USDT semaphore (ref_ctr_offset 0): nothing is
    written into the target, and a tracefs probe on the same functions —
    another perfd, or the fallback — is not refused."""
    require_backend("bcc")
    require_backend("tracefs")
    from perfd.cpython.maps import load_base, read_maps

    target = open3d_target(spawn, "--iterations", "2", "--api", "legacy", "--ops", "crop,voxel_down_sample")
    with UprobeSource(target.pid, Registry(), backend="bcc") as probe_bcc:
        lib = probe_bcc.resolution.library
        base = load_base(read_maps(target.pid), lib)

        def header() -> bytes:
            with open(f"/proc/{target.pid}/mem", "rb") as mem:
                mem.seek(base)
                return mem.read(64)

        before = header()
        with UprobeSource(target.pid, Registry(), backend="tracefs") as probe_tracefs:
            assert probe_tracefs.backend is not None and probe_tracefs.backend.name == "tracefs"
            assert header() == before
            truth = merged(run_ops(target))
            settle(probe_bcc, 4)
            settle(probe_tracefs, 4)
            for source in (probe_bcc, probe_tracefs):
                assert {op: m.calls for op, m in source.ops_by_node()[UNATTRIBUTED].items()} == {
                    op: len(d) for op, d in truth.items()}
    assert header() == before


def test_open3d_imported_after_attach_is_probed_then(spawn, backend):
    target = spawn("open3d_late.py")
    registry = Registry()
    source = UprobeSource(target.pid, registry, backend=backend, recheck_s=0.2)
    try:
        assert source.start() is False
        assert "checking every" in registry.perfd_status().sources["uprobes"].reason
        os.kill(target.pid, signal.SIGUSR1)
        assert target.proc.stdout.readline().strip() == "LOADED"
        wait_for(lambda: registry.perfd_status().sources["uprobes"].active, timeout=10)
        assert source.backend.name == backend
        os.kill(target.pid, signal.SIGUSR1)
        assert target.proc.stdout.readline().strip() == "RESULT 3"
        settle(source, 3)
        assert source.ops_by_node()[UNATTRIBUTED]["crop"].calls == 3
    finally:
        source.stop()
    assert our_probe_lines() == [] and our_instances() == []


def test_high_call_rate_loses_nothing(spawn, backend):
    """20000 short calls (~10 µs each) in a burst: every one counted, none lost
    between two reads of the kernel buffer."""
    target = open3d_target(spawn, "--iterations", "20000", "--api", "legacy", "--points", "64",
                           "--ops", "select_by_index")
    with UprobeSource(target.pid, Registry(), backend=backend) as source:
        truth = merged(run_ops(target))
        settle(source, 20000)
        status = source.status()
        m = source.ops_by_node()[UNATTRIBUTED]["select_by_index"]
    assert len(truth["select_by_index"]) == 20000 and m.calls == 20000
    assert status.lost_events == 0 and status.unmatched_returns == 0 and status.abandoned_entries == 0


def test_calls_lost_to_a_full_kernel_buffer_are_counted_and_published(spawn, monkeypatch):
    """A reader that falls behind loses calls once the kernel's ring buffer is
    full. Each lost call is counted, published in ``perfd.uprobes`` and named in
    the source's reason, so that calls counted + calls lost = calls made."""
    require_backend("bcc")
    from perfd.uprobes import bcc_backend, source as uprobe_source

    monkeypatch.setattr(bcc_backend, "READ_INTERVAL_S", 60.0)  # a reader that never catches up on its own
    monkeypatch.setattr(uprobe_source, "STATUS_EVERY_S", 0.2)
    calls = 100_000  # the 2 MiB ring holds fewer completed calls than this
    target = open3d_target(spawn, "--iterations", str(calls), "--api", "legacy", "--points", "64",
                           "--ops", "select_by_index")
    registry = Registry()

    def published() -> dict:
        return registry.health(broadcaster_running=False).model_dump()["perfd"].get("uprobes", {})

    with UprobeSource(target.pid, registry, backend="bcc") as source:
        truth = merged(run_ops(target))
        source.flush()
        counted = source.ops_by_node()[UNATTRIBUTED]["select_by_index"].calls
        wait_for(lambda: published().get("events_total") == counted, timeout=5)  # a publication after the flush
        status = published()
        reason = registry.perfd_status().sources["uprobes"].reason
    assert len(truth["select_by_index"]) == calls
    lost = status["lost_events"]
    assert 0 < lost < calls and counted + lost == calls, (counted, lost)
    assert status["backend"] == "bcc"
    assert f"{lost} op calls lost" in reason
