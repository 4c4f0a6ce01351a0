"""The entry probe names the object whose method made the call, with both backends.

perfd's bcc probe program, compiled with the target's frame offsets
(``perfd.cpython.layouts.frame_walk``), walks the calling thread's Python
frames at every probed entry and reports the first frame whose first local is
a watched object — how Open3D ops are placed on DAG nodes exactly. The
tracefs probe runs no code; its fetch arguments read the GIL holder's frames,
which are the calling thread's own when it holds the GIL (as an Open3D op's
caller does). Checked on 3.11, 3.12 and 3.13 with a libc function as the
probed "op" and ground truth from the target (tests/targets/frame_owners.py):
every call made inside an owner's method names that owner — through helper
frames, recursion and a C shim — and calls from outside any owner, or from a
thread perfd was not told about (bcc), name none; with tracefs, calls made
with the GIL released name their owner or none, never another.

The bcc probe also counts the owner's points local (an ndarray's first
dimension, a list's or tuple's length) in the method perfd found keeping it —
how a node call too short for the call tracker still reports its points
(tests/targets/op_points.py).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter

import pytest

from conftest import TARGET_VERSIONS, require
from libc_symbols import libc_functions
from perfd.cpython.discovery import locate_interpreter
from perfd.cpython.layouts import frame_walk
from perfd.cpython.stacks import StackReader
from perfd.profile import load_profile
from perfd.reconstruction.observe import NodeCallFinder, point_types
from perfd.uprobes import check_backends
from perfd.uprobes.bcc_backend import BccBackend
from perfd.uprobes.events import FrameWatch
from perfd.uprobes.symbols import ProbePoint, Resolution
from perfd.uprobes.tracefs import TracefsBackend

pytestmark = pytest.mark.privileged

FUNCTION = "getppid"


def libc_resolution(pid: int) -> Resolution:
    library, path, where = libc_functions(pid, [FUNCTION])
    vaddr, offset = where[FUNCTION]
    return Resolution(library, path, [FUNCTION], [ProbePoint(FUNCTION, 0, FUNCTION, FUNCTION, vaddr, offset)])


def read_header(target) -> tuple[dict[int, tuple[int, int]], tuple[int, int]]:
    """owner id -> (thread id, calls per round); and (main thread id, its calls)."""
    owners = {}
    while True:
        words = target.proc.stdout.readline().split()
        if words[0] == "OWNER":
            owners[int(words[2])] = (int(words[3]), int(words[4]))
        else:
            return owners, (int(words[1]), int(words[2]))


def _run_rounds(target, backend, events: Counter, watched_rounds, owners) -> list[Counter]:
    """One SIGUSR1 round of the target's calls per entry of ``watched_rounds``
    (the thread states the backend is told); the (tid, owner) counts of each."""
    got = []
    for watched in watched_rounds:
        events.clear()
        backend.watch(FrameWatch(watched, frozenset(owners)))
        os.kill(target.pid, signal.SIGUSR1)
        assert target.proc.stdout.readline().strip() == "DONE"
        time.sleep(0.3)  # every event reaches a reader (tracefs reads every 0.1 s)
        backend.drain()
        got.append(Counter(events))
    return got


def _expected(owners, main_tid: int, main_calls: int, named: set[int]) -> Counter:
    """(tid, owner) counts when calls on the threads in ``named`` name their owner
    and every other call (the main thread's included) names none."""
    want = Counter({(main_tid, 0): main_calls})
    for owner, (tid, calls) in owners.items():
        want[(tid, owner if tid in named else 0)] += calls
    return want


@pytest.mark.parametrize("version", TARGET_VERSIONS)
def test_entry_probe_names_the_owner_whose_method_called(spawn, version):
    check = next(c for c in check_backends() if c.backend == "bcc")
    require("uprobes backend bcc", check.works, check.detail)
    target = spawn("frame_owners.py", version=version)
    owners, (main_tid, main_calls) = read_header(target)
    stacks = StackReader(locate_interpreter(target.pid))
    threads = {t.native_thread_id: t.tstate_addr for t in stacks.sample().threads}
    assert set(threads) == {tid for tid, _ in owners.values()} | {main_tid}
    unknown_tid = owners[next(iter(owners))][0]  # a thread the probe is not told about
    events: Counter = Counter()
    backend = BccBackend(target.pid, libc_resolution(target.pid),
                         lambda ev: events.update([(ev.tid, ev.owner)]), walk=frame_walk(stacks.layout))
    rounds = ({t: a for t, a in threads.items() if t != unknown_tid}, threads)
    backend.start()
    try:
        got = _run_rounds(target, backend, events, rounds, owners)
    finally:
        backend.stop()
        stacks.close()
    for rnd, (watched, counts) in enumerate(zip(rounds, got)):
        assert counts == _expected(owners, main_tid, main_calls, set(watched)), f"round {rnd}"


@pytest.mark.parametrize("version", TARGET_VERSIONS)
def test_tracefs_entry_names_the_owner_from_the_gil_holders_frames(spawn, version):
    check = next(c for c in check_backends() if c.backend == "tracefs")
    require("uprobes backend tracefs", check.works, check.detail)
    for mode in ("pydll", "cdll"):
        target = spawn("frame_owners.py", *(["pydll"] if mode == "pydll" else []), version=version)
        owners, (main_tid, main_calls) = read_header(target)
        stacks = StackReader(locate_interpreter(target.pid))
        events: Counter = Counter()
        backend = TracefsBackend(target.pid, libc_resolution(target.pid),
                                 lambda ev: events.update([(ev.tid, ev.owner)]),
                                 walk=frame_walk(stacks.layout, stacks.interp.runtime_addr))
        backend.start()
        try:
            assert backend.frame_depth >= 7, backend.frames_refused  # the deepest owner is frame 7
            got = _run_rounds(target, backend, events, [{}, {}], owners)
        finally:
            backend.stop()
            stacks.close()
        for rnd, counts in enumerate(got):
            if mode == "pydll":  # the GIL held across the call: every call placed
                every_owner = {tid for tid, _ in owners.values()}
                assert counts == _expected(owners, main_tid, main_calls, every_owner), f"{mode} round {rnd}"
            else:  # released: the holder may be another thread, then no name; never a wrong one
                by_tid = {tid: owner for owner, (tid, _) in owners.items()}
                assert sum(counts.values()) == main_calls + sum(c for _, c in owners.values())
                wrong = {k: n for k, n in counts.items() if k[1] not in (0, by_tid.get(k[0], 0))}
                assert not wrong, f"{mode} round {rnd}: {wrong}"


@pytest.mark.parametrize("version", TARGET_VERSIONS)
def test_entry_probe_counts_the_points_of_the_owners_call(spawn, version):
    check = next(c for c in check_backends() if c.backend == "bcc")
    require("uprobes backend bcc", check.works, check.detail)
    target = spawn("op_points.py", version=version)
    owners = {}  # owner id -> native tid
    while (words := target.proc.stdout.readline().split())[0] == "OWNER":
        owners[int(words[2])] = int(words[3])
    assert words == ["HELD"]
    stacks = StackReader(locate_interpreter(target.pid))
    sample = stacks.sample()
    # where the points are kept, found as perfd finds it: a sample of the threads
    # sitting in their node methods, and the default profile's points local
    finder = NodeCallFinder(load_profile(), stacks)
    assert all(t.first_locals is not None for t in sample.threads)  # self as the native walker read it
    assert finder.thread_nodes(sample.threads, frozenset(owners)) == {t: o for o, t in owners.items()}
    python = StackReader(locate_interpreter(target.pid), walker="python")  # self read by the finder
    assert NodeCallFinder(load_profile(), python).thread_nodes(python.sample().threads, frozenset(owners)) == \
        {t: o for o, t in owners.items()}
    python.close()
    assert sorted(finder.point_slots.values()) == [1]  # process(self, points); other(self, n) has none
    types = point_types(stacks)
    assert len(types) == 3  # numpy.ndarray, list, tuple
    watch = FrameWatch({t.native_thread_id: t.tstate_addr for t in sample.threads}, frozenset(owners),
                       dict(finder.point_slots), types)
    events: dict[int, list] = {}
    backend = BccBackend(target.pid, libc_resolution(target.pid),
                         lambda ev: events.setdefault(ev.tid, []).append((ev.owner, ev.points)),
                         walk=frame_walk(stacks.layout))
    backend.start()
    try:
        backend.watch(watch)
        for _ in range(2):
            events.clear()
            os.kill(target.pid, signal.SIGUSR1)
            expected = {}
            while (words := target.proc.stdout.readline().split())[0] == "EXPECT":
                expected[int(words[1])] = json.loads(" ".join(words[2:]))
            assert words == ["DONE"]
            time.sleep(0.1)
            backend.drain()
            by_tid = {t: o for o, t in owners.items()}
            for tid, counts in expected.items():
                assert events.get(tid) == [(by_tid[tid], c) for c in counts], tid
    finally:
        backend.stop()
        stacks.close()
