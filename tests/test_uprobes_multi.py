"""uprobe_multi links on a real process: exact counts per cookie, PID filter, fast and complete detach.

The target (tests/targets/libc_calls.py) calls 20 libc functions a known
number of times; one bcc program counts entries and one counts returns, keyed
by ``bpf_get_attach_cookie``. The programs do not filter by process: the
link's ``pid`` must keep a second, unattached process calling the same
functions out of the counts.
"""

from __future__ import annotations

import ctypes
import errno
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import TARGET_VERSIONS, TARGETS, python_for, require
from libc_symbols import libc_functions
from perfd.cpython.maps import read_maps
from perfd.uprobes.multi import (
    BPF_TRACE_UPROBE_MULTI,
    UprobeMultiError,
    attach_multi,
    detach_all,
    uprobe_multi_supported,
)
from perfd.uprobes.bcc_backend import _Event, program_text
from perfd.uprobes.spec import load_spec
from perfd.uprobes.symbols import resolve

pytestmark = pytest.mark.privileged

ITERATIONS = 300
INT3 = 0xCC

COUNTING_PROGRAM = r"""
BPF_ARRAY(entries, u64, 64);
BPF_ARRAY(returns, u64, 64);

int on_entry(struct pt_regs *ctx) {
    u32 k = bpf_get_attach_cookie(ctx);
    u64 *c = entries.lookup(&k);
    if (c)
        __sync_fetch_and_add(c, 1);
    return 0;
}

int on_return(struct pt_regs *ctx) {
    u32 k = bpf_get_attach_cookie(ctx);
    u64 *c = returns.lookup(&k);
    if (c)
        __sync_fetch_and_add(c, 1);
    return 0;
}
"""


@pytest.fixture(scope="module")
def counting_bpf():
    """The counting program, compiled once; its functions loaded for uprobe_multi links."""
    require("bcc (python3-bpfcc)", importlib.util.find_spec("bcc") is not None)
    require("BPF uprobe_multi links (Linux >= 6.6, CAP_BPF)", uprobe_multi_supported)
    import bcc  # noqa: PLC0415

    bpf = bcc.BPF(text=COUNTING_PROGRAM)
    entry = bpf.load_func(b"on_entry", bcc.BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
    ret = bpf.load_func(b"on_return", bcc.BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
    yield bpf, entry.fd, ret.fd
    bpf.cleanup()


class LibcTarget:
    """tests/targets/libc_calls.py: the libc functions it calls and their file offsets."""

    def __init__(self, version: str | None) -> None:
        exe = python_for(version) if version else sys.executable
        self.proc = subprocess.Popen([exe, str(TARGETS / "libc_calls.py"), str(ITERATIONS)],
                                     stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        assert self.proc.stdout.readline().strip() == "READY"
        self.names = self.proc.stdout.readline().split()[1].split(",")
        self.library, self.path, where = libc_functions(self.pid, self.names)
        self.offsets = [where[n][1] for n in self.names]
        self._maps = [m for m in read_maps(self.pid) if m.path == self.library]

    def run(self) -> None:
        """One round: every function ``ITERATIONS`` times."""
        os.kill(self.pid, signal.SIGUSR1)
        assert self.proc.stdout.readline().strip() == "DONE"

    def code_bytes(self) -> list[int]:
        """First byte of every probed function as the target sees it (0xCC while a uprobe sits there)."""
        out = []
        with open(f"/proc/{self.pid}/mem", "rb") as mem:
            for off in self.offsets:
                m = next(m for m in self._maps if m.offset <= off < m.offset + (m.end - m.start))
                mem.seek(m.start + off - m.offset)
                out.append(mem.read(1)[0])
        return out

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def libc_targets():
    started: list[LibcTarget] = []

    def _start(version: str | None = None) -> LibcTarget:
        t = LibcTarget(version)
        started.append(t)
        return t

    yield _start
    for t in started:
        t.stop()


def counts(bpf, table: str, n: int) -> list[int]:
    t = bpf[table]
    return [t[i].value for i in range(n)]


@pytest.mark.parametrize("version", TARGET_VERSIONS)
def test_counts_per_cookie_match_the_targets_calls(counting_bpf, libc_targets, version):
    bpf, entry_fd, return_fd = counting_bpf
    bpf["entries"].clear()
    bpf["returns"].clear()
    target = libc_targets(version)
    bystander = libc_targets(version)
    n = len(target.offsets)
    assert n == 20 and len(set(target.offsets)) == n, "20 distinct functions (40 probes)"
    before = target.code_bytes()
    assert INT3 not in before

    cookies = list(range(n))
    t0 = time.perf_counter()
    links = [attach_multi(return_fd, target.path, target.offsets, cookies, target.pid, retprobe=True),
             attach_multi(entry_fd, target.path, target.offsets, cookies, target.pid, retprobe=False)]
    attach_s = time.perf_counter() - t0
    try:
        # What the kernel holds: one link of n offsets per direction, not inherited by exec.
        for fd, kind in zip(links, ("uretprobe_multi", "uprobe_multi")):
            info = dict(line.split(":", 1) for line in open(f"/proc/self/fdinfo/{fd}").read().splitlines() if ":" in line)
            assert info["link_type"].strip() == kind and int(info["uprobe_cnt"]) == n
            assert int(info["pid"]) == target.pid and int(info["flags"], 8) & os.O_CLOEXEC
        assert target.code_bytes() == [INT3] * n
        target.run()
        bystander.run()  # same library, same functions, not attached: must not count
        assert counts(bpf, "entries", n) == [ITERATIONS] * n
        assert counts(bpf, "returns", n) == [ITERATIONS] * n
    finally:
        t0 = time.perf_counter()
        detach_all(links)
        detach_s = time.perf_counter() - t0
    print(f"\n{2 * n} uprobes as 2 uprobe_multi links: attach {attach_s * 1e3:.1f} ms, detach {detach_s * 1e3:.1f} ms")
    assert detach_s < 1.0

    assert target.code_bytes() == before, "every breakpoint removed from the target"
    target.run()
    assert counts(bpf, "entries", n) == [ITERATIONS] * n, "no entries after detach"
    assert counts(bpf, "returns", n) == [ITERATIONS] * n, "no returns after detach"


def test_refusals_carry_the_errno(counting_bpf, libc_targets):
    import bcc  # noqa: PLC0415

    bpf, entry_fd, _ = counting_bpf
    target = libc_targets()
    offsets, cookies = target.offsets[:2], [0, 1]

    # A program loaded for classic perf-event uprobes cannot go into a multi link.
    classic = bcc.BPF(text=COUNTING_PROGRAM)
    try:
        fd = classic.load_func(b"on_entry", bcc.BPF.KPROBE).fd
        with pytest.raises(UprobeMultiError) as e:
            attach_multi(fd, target.path, offsets, cookies, target.pid, retprobe=False)
        assert e.value.errno == errno.EINVAL
    finally:
        classic.cleanup()

    with pytest.raises(UprobeMultiError) as e:
        attach_multi(entry_fd, target.path + ".missing", offsets, cookies, target.pid, retprobe=False)
    assert e.value.errno == errno.ENOENT and "No such file" in str(e.value)

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.raises(UprobeMultiError) as e:
        attach_multi(entry_fd, target.path, offsets, cookies, gone.pid, retprobe=False)
    assert e.value.errno == errno.ESRCH

    with pytest.raises(ValueError):
        attach_multi(entry_fd, target.path, offsets, [0], target.pid, retprobe=False)
    assert INT3 not in target.code_bytes(), "a refused link leaves nothing behind"


@pytest.mark.slow
def test_perfd_probe_program_pairs_every_open3d_call_under_multi_links(counting_bpf, spawn):
    """perfd's own probe program, attached as 2 links to a 2-thread Open3D
    target: every outermost op call arrives as one paired event, per thread."""
    import bcc  # noqa: PLC0415

    target = spawn("open3d_ops.py", "--iterations", "2", "--threads", "2", "--points", "5000")
    res = resolve(target.pid, load_spec())
    assert len(res.points) >= 18, res.missing
    bpf = bcc.BPF(text=program_text([p.op_id for p in res.points]),
                  cflags=[f"-DPERFD_TGID={target.pid}"])
    seen: dict[tuple[int, str], int] = {}

    def on_raw(_ctx, data, _size) -> None:
        ev = ctypes.cast(data, ctypes.POINTER(_Event)).contents
        if ev.depth == 0:
            key = (ev.tid, res.ops[ev.op])
            seen[key] = seen.get(key, 0) + 1

    try:
        entry = bpf.load_func(b"enter_multi", bcc.BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
        ret = bpf.load_func(b"on_return_multi", bcc.BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
        bpf["events"].open_ring_buffer(on_raw)
        offsets = [p.file_offset for p in res.points]
        cookies = [p.op_id for p in res.points]
        links = [attach_multi(ret.fd, res.host_library, offsets, cookies, target.pid, retprobe=True),
                 attach_multi(entry.fd, res.host_library, offsets, cookies, target.pid, retprobe=False)]
        try:
            os.kill(target.pid, signal.SIGUSR1)
            line = target.proc.stdout.readline()
            assert line.startswith("RESULT "), line
            truth = json.loads(line[7:])["threads"]
            bpf.ring_buffer_consume()
        finally:
            detach_all(links)
        expected = {(int(tid), op): len(d) for tid, ops in truth.items() for op, d in ops.items()}
        assert len({tid for tid, _ in expected}) == 2
        assert seen == expected
        assert bpf["counters"][0].value == 0, "no unmatched returns"
    finally:
        bpf.cleanup()


def test_support_check_installs_nothing_and_leaks_no_fd():
    """The check offers the kernel a link on "/": refused after validation, nothing to remove."""
    before = sorted(os.listdir("/proc/self/fd"))
    supported = uprobe_multi_supported.__wrapped__()  # uncached: really asks the kernel
    assert sorted(os.listdir("/proc/self/fd")) == before
    require("BPF uprobe_multi links (Linux >= 6.6, CAP_BPF)", supported)
    assert uprobe_multi_supported() is True
