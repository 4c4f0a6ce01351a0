"""Many uprobes as one BPF link (``BPF_TRACE_UPROBE_MULTI``, Linux >= 6.6).

Why: a classic uprobe is one perf event per probe point, and closing each one
makes the kernel wait for grace periods (``uprobe_unregister_sync``: RCU
tasks-trace, then SRCU), one probe after the other: perfd's 40 Open3D probes
(20 functions, entry + return) took 4-54 s to detach on a loaded host, far
too slow for perfd to exit within 2 s of SIGTERM. An uprobe_multi link
registers every offset of one file in a single ``bpf(BPF_LINK_CREATE)`` and
unregisters them all with one such wait when its fd is closed.

The program must have been loaded with expected attach type
``BPF_TRACE_UPROBE_MULTI`` (bcc: ``bpf.load_func(name, BPF.KPROBE,
attach_type=BPF_TRACE_UPROBE_MULTI)``). The program learns which offset
fired from ``bpf_get_attach_cookie(ctx)``, so one entry program serves every
op. Keep the two worlds apart: a classic program is refused in a multi link
(EINVAL), but the 6.18 kernel *accepts* a multi-loaded program on a classic
perf-event uprobe, where ``bpf_get_attach_cookie`` then returns garbage.

Plain ctypes on the ``bpf`` syscall: bcc 0.26 has no wrapper for this link
type, and perfd adds no dependency for it. Constants and the ``union
bpf_attr`` layout are the kernel's uapi (checked against the running kernel's
BTF, ``/sys/kernel/btf/vmlinux``).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import threading

from perfd.errors import PerfdError

_NR_BPF = {"x86_64": 321, "aarch64": 280}
BPF_PROG_LOAD = 5
BPF_LINK_CREATE = 28
BPF_PROG_TYPE_KPROBE = 2
BPF_TRACE_UPROBE_MULTI = 48  # enum bpf_attach_type
BPF_F_UPROBE_MULTI_RETURN = 1  # link_create.uprobe_multi.flags


class UprobeMultiError(PerfdError):
    """The kernel refused an uprobe_multi link; ``errno`` says why."""

    def __init__(self, message: str, err: int) -> None:
        super().__init__(message)
        self.errno = err


class _ProgLoadAttr(ctypes.Structure):
    """``union bpf_attr`` for ``BPF_PROG_LOAD``, up to ``expected_attach_type``."""

    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    ]


class _LinkCreateAttr(ctypes.Structure):
    """``union bpf_attr`` for ``BPF_LINK_CREATE`` with its ``uprobe_multi`` member."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("path", ctypes.c_uint64),
        ("offsets", ctypes.c_uint64),
        ("ref_ctr_offsets", ctypes.c_uint64),
        ("cookies", ctypes.c_uint64),
        ("cnt", ctypes.c_uint32),
        ("uprobe_flags", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


assert ctypes.sizeof(_LinkCreateAttr) == 64 and _LinkCreateAttr.pid.offset == 56
assert _ProgLoadAttr.expected_attach_type.offset == 68


@functools.cache
def _syscall():
    fn = ctypes.CDLL(None, use_errno=True).syscall
    fn.restype = ctypes.c_long
    fn.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint]
    return fn


def _bpf(cmd: int, attr: ctypes.Structure) -> tuple[int, int]:
    """``bpf(cmd, &attr, sizeof attr)`` -> (result, errno). The kernel zero-extends a short attr."""
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        return -1, errno.ENOSYS
    ret = _syscall()(nr, cmd, ctypes.addressof(attr), ctypes.sizeof(attr))
    return ret, (ctypes.get_errno() if ret < 0 else 0)


def _link_create(prog_fd: int, path: bytes, offsets: list[int], cookies: list[int], pid: int, flags: int) -> tuple[int, int]:
    n = len(offsets)
    c_path = ctypes.create_string_buffer(path)
    c_offsets = (ctypes.c_uint64 * n)(*offsets)
    c_cookies = (ctypes.c_uint64 * n)(*cookies) if cookies else None
    attr = _LinkCreateAttr(
        prog_fd=prog_fd,
        attach_type=BPF_TRACE_UPROBE_MULTI,
        path=ctypes.addressof(c_path),
        offsets=ctypes.addressof(c_offsets),
        cookies=ctypes.addressof(c_cookies) if c_cookies is not None else 0,
        cnt=n,
        uprobe_flags=flags,
        pid=pid,
    )
    return _bpf(BPF_LINK_CREATE, attr)


_HINTS = {
    errno.EINVAL: " (was the program loaded with attach_type=BPF_TRACE_UPROBE_MULTI? is every offset a valid instruction?)",
    errno.EBADF: " (not a regular file)",
    errno.ESRCH: " (no such process)",
}


def attach_multi(prog_fd: int, path: str, offsets: list[int], cookies: list[int], pid: int, retprobe: bool) -> int:
    """Attach ``prog_fd`` at every file offset of ``path``, for process ``pid`` only.

    ``path`` must be openable by perfd (a target's library as
    ``/proc/PID/root/<path>``); ``offsets`` are file offsets, as for tracefs
    uprobes; ``cookies[i]`` is what ``bpf_get_attach_cookie`` returns when
    ``offsets[i]`` fires (perfd passes the op id); ``retprobe`` makes them
    uretprobes. ``pid`` is a process in perfd's PID namespace; every thread
    of it fires (0 would mean every process mapping the file). All or
    nothing: the kernel registers every offset or none.
    Returns the link fd; close it (``detach``) to remove every probe.
    """
    if not offsets:
        raise ValueError("attach_multi needs at least one offset")
    if cookies and len(cookies) != len(offsets):
        raise ValueError(f"{len(cookies)} cookies for {len(offsets)} offsets")
    flags = BPF_F_UPROBE_MULTI_RETURN if retprobe else 0
    fd, err = _link_create(prog_fd, os.fsencode(path), list(offsets), list(cookies), pid, flags)
    if fd < 0:
        kind = "uretprobe" if retprobe else "uprobe"
        raise UprobeMultiError(
            f"{kind} multi link on {path} ({len(offsets)} offsets, pid {pid}) failed: "
            f"{os.strerror(err)}{_HINTS.get(err, '')}",
            err,
        )
    return fd


def detach(fd: int) -> None:
    """Remove every probe of the link, synchronously in close().

    The kernel unregisters all offsets, then waits once for an RCU
    tasks-trace and an SRCU grace period (``uprobe_unregister_sync``): tens of
    ms on an idle host, up to ~1 s on a saturated one.
    """
    os.close(fd)


def detach_all(fds: list[int]) -> None:
    """Close several links at once, each from its own thread.

    Their grace-period waits then overlap (concurrent synchronize calls can
    share a grace period): measured 1.1-1.4x faster (median) than closing an
    entry and a return link one after the other.
    """
    errors: list[OSError] = []

    def close(fd: int) -> None:
        try:
            detach(fd)
        except OSError as e:
            errors.append(e)

    threads = [threading.Thread(target=close, args=(fd,), name="perfd-unlink") for fd in fds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _load_trivial_program() -> tuple[int, int]:
    """A ``return 0`` kprobe program loaded for uprobe_multi links -> (fd, errno)."""
    insns = (ctypes.c_uint64 * 2)(
        0x00000000000000B7,  # r0 = 0  (BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm 0)
        0x0000000000000095,  # exit    (BPF_JMP | BPF_EXIT)
    )
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoadAttr(
        prog_type=BPF_PROG_TYPE_KPROBE,
        insn_cnt=2,
        insns=ctypes.addressof(insns),
        license=ctypes.addressof(license_),
        prog_name=b"perfd_um_probe",
        expected_attach_type=BPF_TRACE_UPROBE_MULTI,
    )
    return _bpf(BPF_PROG_LOAD, attr)


@functools.cache
def uprobe_multi_supported() -> bool:
    """Can this kernel (and this process's privileges) create uprobe_multi links?

    Checked without installing any probe: a valid program is offered a link on
    ``/``. A kernel with uprobe_multi validates the program and attach type,
    then refuses the directory with EBADF; an older kernel refuses the attach
    type with EINVAL before that.
    """
    prog_fd, _ = _load_trivial_program()
    if prog_fd < 0:
        return False
    try:
        fd, err = _link_create(prog_fd, b"/", [0], [], 0, 0)
        if fd >= 0:  # a kernel that took "/" (never seen): it works, remove it
            os.close(fd)
            return True
        return err == errno.EBADF
    finally:
        os.close(prog_fd)
