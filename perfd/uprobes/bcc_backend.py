"""Backend bcc: ``probes/open3d_ops.bpf.c`` compiled at attach, events from a ring buffer.

Entry and return are paired in the kernel, so only completed calls cross to
user space. ``bcc`` is imported here and only here, lazily: perfd runs without
it (the tracefs backend takes over).
"""

from __future__ import annotations

import ctypes
import os
import threading
from importlib.resources import files
from typing import Callable

from perfd.cpython.layouts import FrameWalk
from perfd.cpython.objects import NP_DIMENSIONS, NP_ND
from perfd.uprobes.events import SIZED_NDARRAY, FrameWatch, OpEvent, PairingStats
from perfd.uprobes.multi import BPF_TRACE_UPROBE_MULTI, UprobeMultiError, attach_multi, detach_all, uprobe_multi_supported
from perfd.uprobes.symbols import Resolution

BPF_SOURCE = "open3d_ops.bpf.c"
READ_INTERVAL_S = 0.02  # points of a node call the tracker missed reach the dag this late


class BccError(RuntimeError):
    """bcc is missing, the program did not compile, or a probe did not attach."""


class _Event(ctypes.Structure):
    _fields_ = [
        ("tid", ctypes.c_uint32),
        ("op", ctypes.c_uint32),
        ("depth", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("start_ns", ctypes.c_uint64),
        ("duration_ns", ctypes.c_uint64),
        ("owner", ctypes.c_uint64),
        ("points", ctypes.c_uint64),  # 1 + count; 0: not read
    ]


_ATTACH_UPROBE = None


def _attach_uprobe_fn():
    """libbcc's ``bpf_attach_uprobe`` with its real signature.

    bcc's Python wrapper (0.26, as packaged by Debian 12) declares 6
    parameters, but the library takes a 7th, ``ref_ctr_offset``, which then
    comes from stack garbage: the kernel takes it for a USDT semaphore and
    *writes* to the target's memory at that offset, and a tracefs probe on the
    same function is refused ("ref_ctr_offset mismatch"). perfd calls the
    library itself with ``ref_ctr_offset = 0``, through its own handle so
    bcc's prototypes stay as they are.
    """
    global _ATTACH_UPROBE
    if _ATTACH_UPROBE is None:
        from bcc.libbcc import lib  # noqa: PLC0415

        fn = ctypes.CDLL(lib._name).bpf_attach_uprobe
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                       ctypes.c_ulonglong, ctypes.c_int, ctypes.c_uint32]
        _ATTACH_UPROBE = fn
    return _ATTACH_UPROBE


def program_text(op_ids: list[int]) -> str:
    src = files("perfd.probes").joinpath(BPF_SOURCE).read_text()
    return src + "\n" + "\n".join(f"PERFD_ENTRY({i})" for i in sorted(set(op_ids))) + "\n"


def frame_walk_flags(walk: FrameWalk | None) -> list[str]:
    """The target CPython's frame offsets for the entry probe's frame walk."""
    if walk is None:
        return []
    if not 1 <= len(walk.tstate_to_frame) <= 2:
        raise BccError(f"no frame walk for a {len(walk.tstate_to_frame)}-step thread-state path")
    first, second = (*walk.tstate_to_frame, -1)[:2]
    return ["-DPERFD_PYFRAMES", f"-DPY_TSTATE_FRAME1={first}", f"-DPY_TSTATE_FRAME2={second}",
            f"-DPY_FRAME_PREVIOUS={walk.previous}", f"-DPY_FRAME_LOCALSPLUS={walk.localsplus}",
            f"-DPY_FRAME_OWNER={walk.owner}", f"-DPY_OWNER_CSTACK={walk.owner_cstack}",
            f"-DPY_FRAME_CODE={walk.code}", f"-DPY_OBJECT_TYPE={walk.object_type}", f"-DPY_VAR_SIZE={walk.var_size}",
            f"-DNP_ND={NP_ND}", f"-DNP_DIMENSIONS={NP_DIMENSIONS}", f"-DSIZED_NDARRAY={SIZED_NDARRAY}"]


def compile_program(pid: int, op_ids: list[int], walk: FrameWalk | None = None):
    """The loaded ``bcc.BPF`` object; raises ``BccError`` on any failure."""
    try:
        import bcc  # noqa: PLC0415 — optional, heavy, and needs kernel headers
    except ImportError as e:
        raise BccError(f"bcc not importable ({e}); install python3-bpfcc") from None
    try:
        return bcc.BPF(text=program_text(op_ids), cflags=[f"-DPERFD_TGID={pid}", *frame_walk_flags(walk)])
    except Exception as e:  # bcc raises bare Exception on compile/load failure
        raise BccError(f"bcc could not compile the probe program: {e}") from None


def load_functions(bpf, op_ids: list[int]) -> list:
    """Run the verifier on every function now, so failures surface at attach time."""
    import bcc  # noqa: PLC0415

    try:
        return [bpf.load_func(name, bcc.BPF.KPROBE) for name in ["on_return", *(f"enter_{i}" for i in sorted(set(op_ids)))]]
    except Exception as e:  # bcc raises bare Exception when the verifier rejects
        raise BccError(f"the kernel rejected the probe program: {e}") from None


def _replace(table, items: dict[int, int]) -> None:
    """Make a BPF hash map of integers hold exactly ``items``."""
    for key in list(table.keys()):
        if key.value not in items:
            try:
                del table[key]
            except KeyError:  # gone meanwhile
                pass
    for k, v in items.items():
        table[table.Key(k)] = table.Leaf(v)


class BccBackend:
    name = "bcc"

    def __init__(self, pid: int, resolution: Resolution, on_event: Callable[[OpEvent], None],
                 walk: FrameWalk | None = None) -> None:
        self.pid = pid
        self.walk = walk  # the target's frame offsets: entries then report their node (see watch)
        self.resolution = resolution
        self.on_event = on_event
        self._bpf = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._drain_lock = threading.Lock()
        self._links: list[int] = []  # uprobe_multi link fds
        self.mode = "per-probe"  # or "uprobe_multi"
        self.multi_fallback: str | None = None  # why uprobe_multi was not used

    def start(self) -> None:
        res = self.resolution
        op_ids = [p.op_id for p in res.points]
        self._bpf = compile_program(self.pid, op_ids, self.walk)
        try:
            if not self._attach_multi():
                load_functions(self._bpf, op_ids)
        except BccError:
            self.stop()
            raise
        try:
            if self.mode == "per-probe":
                # Returns first (see tracefs backend): never an entry without a return.
                for i, p in enumerate(res.points):
                    self._attach(1, i, p.file_offset, "on_return")
                for i, p in enumerate(res.points):
                    self._attach(0, i, p.file_offset, f"enter_{p.op_id}")
            self._bpf["events"].open_ring_buffer(self._on_raw)
        except Exception as e:  # noqa: BLE001 — bcc raises bare Exception on failure
            self.stop()
            raise BccError(f"bcc could not attach uprobes: {e}") from None
        self._thread = threading.Thread(target=self._poll_loop, name=f"perfd-uprobes-{self.pid}", daemon=True)
        self._thread.start()

    def _attach_multi(self) -> bool:
        """Every probe point as two uprobe_multi links (returns first), when the
        kernel has them: detaching is then one kernel grace period per link
        instead of one per probe — the difference between a 2 s exit and a
        many-second one. False (with the reason kept) means: use classic probes."""
        if not uprobe_multi_supported():
            self.multi_fallback = "kernel has no uprobe_multi links (Linux < 6.6)"
            return False
        import bcc  # noqa: PLC0415

        res = self.resolution
        offsets = [p.file_offset for p in res.points]
        cookies = [p.op_id for p in res.points]
        try:
            ret = self._bpf.load_func(b"on_return_multi", bcc.BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
            ent = self._bpf.load_func(b"enter_multi", bcc.BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
        except Exception as e:  # noqa: BLE001 — bcc raises bare Exception when the verifier rejects
            raise BccError(f"the kernel rejected the probe program: {e}") from None
        try:
            for fn, retprobe in ((ret, True), (ent, False)):
                self._links.append(attach_multi(fn.fd, res.host_library, offsets, cookies, self.pid, retprobe))
        except UprobeMultiError as e:
            detach_all(self._links)
            self._links = []
            self.multi_fallback = str(e)
            return False
        self.mode = "uprobe_multi"
        return True

    def _attach(self, is_return: int, index: int, file_offset: int, fn_name: str) -> None:
        """A PID-filtered perf uprobe running ``fn_name``; bcc's cleanup detaches it."""
        import bcc  # noqa: PLC0415

        fn = self._bpf.load_func(fn_name.encode(), bcc.BPF.KPROBE)
        # Short and recognisable if libbcc has to fall back to uprobe_events.
        ev_name = f"perfd_{os.getpid()}_{self.pid}_{'r' if is_return else 'p'}{index}".encode()
        path = self.resolution.host_library.encode()
        fd = _attach_uprobe_fn()(fn.fd, is_return, ev_name, path, file_offset, self.pid, 0)
        if fd < 0:
            from bcc.libbcc import lib  # noqa: PLC0415

            lib.bpf_detach_uprobe(ev_name)  # libbcc may have left a uprobe_events fallback definition
            raise BccError(f"attaching {'uretprobe' if is_return else 'uprobe'} at {path.decode()}:{file_offset:#x} failed")
        self._bpf._add_uprobe_fd(ev_name, fd)

    def _on_raw(self, _ctx, data, _size) -> None:
        ev = ctypes.cast(data, ctypes.POINTER(_Event)).contents
        ops = self.resolution.ops
        if ev.op < len(ops):
            self.on_event(OpEvent(ev.tid, ops[ev.op], ev.start_ns, ev.duration_ns, ev.depth, ev.owner,
                                  ev.points - 1 if ev.points else None))

    def watch(self, watch: FrameWatch) -> None:
        """Tell the entry probe the target's threads, the objects to look for as
        ``self`` in their frames (node objects) and where those keep their
        points. Replaces what it was told before; a no-op without a frame walk."""
        with self._drain_lock:
            if self._bpf is None or self.walk is None:
                return
            _replace(self._bpf["py_tstates"], dict(watch.tstates))
            _replace(self._bpf["py_owners"], dict.fromkeys(watch.owners, 1))
            _replace(self._bpf["py_point_slots"], dict(watch.point_slots))
            _replace(self._bpf["py_point_types"], dict(watch.point_types))

    def _poll_loop(self) -> None:
        # A timer, not epoll: the program writes without wakeups (see the .bpf.c).
        while not self._stop.wait(READ_INTERVAL_S):
            self.drain()

    def drain(self) -> None:
        with self._drain_lock:
            if self._bpf is not None:
                self._bpf.ring_buffer_consume()

    @property
    def stats(self) -> PairingStats:
        if self._bpf is None:
            return PairingStats()
        c = self._bpf["counters"]
        return PairingStats(unmatched_returns=c[0].value, abandoned_entries=c[1].value, lost_events=c[3].value)

    def counters(self) -> dict[str, int]:
        if self._bpf is None:
            return {}
        c = self._bpf["counters"]
        names = ("unmatched_returns", "abandoned_entries", "overflowed_entries", "lost_events")
        return {n: c[i].value for i, n in enumerate(names)}

    def prog_fds(self) -> list[int]:
        """File descriptors of the loaded BPF programs (for cleanliness checks)."""
        if self._bpf is None:
            return []
        return [fn.fd for fn in self._bpf.funcs.values()]

    def stop(self) -> None:
        """Detach every probe and unload the programs (closing their fds)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        # Links hold their own reference to the programs: close them first.
        links, self._links = self._links, []
        detach_all(links)
        with self._drain_lock:
            if self._bpf is not None:
                try:
                    self._bpf.ring_buffer_consume()
                except Exception:  # noqa: BLE001 — best effort before unloading
                    pass
                self._bpf.cleanup()
                self._bpf = None
