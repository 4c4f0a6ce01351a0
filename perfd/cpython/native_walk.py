"""The stack reader's native core (``_walk.c``): loading, building, and a thin
typed wrapper.

The core is a plain shared library loaded with ctypes, not a CPython
extension: it needs no Python headers to build, and one build serves every
target version (offsets are passed in, from the layout owner). When it is
missing, stale or refused, the stack reader walks in Python instead — same
results, more CPU — and says so (``status()``, ``perfd doctor``).
``PERFD_STACK_WALKER=python`` forces the Python walker.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from perfd.cpython.layouts import Layout
from perfd.errors import PerfdError

ABI = 7  # must equal PW_ABI in _walk.c
SOURCE = Path(__file__).with_name("_walk.c")
LIBRARY = Path(__file__).with_name("_walk.so")

OK, RELIST, TORN, NEED_CODES = 0, 1, 2, 3
# SAME: frames and first locals as the thread's last sample (none sent); FIRSTS_KEPT:
# first locals sent for the new frames only, the kept frames' are as last sample
SUSPECT, DROPPED, SAME, FIRSTS_KEPT = 1, 2, 4, 8
_SLOT_HEAD = 11  # words before each sample's own in pw_loop_copy's buffer

_FIELDS = (
    "tstate_size", "tstate_next", "tstate_thread_id", "tstate_native_thread_id",
    "tstate_cframe", "tstate_current_frame", "cframe_current_frame", "tstate_root_cframe",
    "tstate_datastack_chunk", "tstate_datastack_top",
    "chunk_previous", "chunk_size", "chunk_top", "chunk_data",
    "frame_code", "frame_previous", "frame_instr", "frame_owner", "frame_is_entry",
    "owner_generator", "owner_cstack", "owner_frame_object",
    "interp_threads_head", "code_head", "code_code_adaptive", "frame_localsplus",
)


class _Layout(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in _FIELDS]


class _Result(ctypes.Structure):
    _fields_ = [
        ("n_threads", ctypes.c_uint64), ("n_words", ctypes.c_uint64),
        ("words", ctypes.c_void_p), ("cap_words", ctypes.c_uint64),
        ("n_need", ctypes.c_uint64), ("need", ctypes.c_void_p), ("need_heads", ctypes.c_void_p),
        ("reads", ctypes.c_uint64), ("bytes", ctypes.c_uint64), ("unread", ctypes.c_uint64),
        ("msg", ctypes.c_char * 200),
    ]


class _Slot(ctypes.Structure):
    """One sample the paced loop took (``pw_slot``)."""

    _fields_ = [
        ("mono_ns", ctypes.c_int64), ("epoch_ns", ctypes.c_int64), ("done_ns", ctypes.c_int64),
        ("rc", ctypes.c_int32), ("attempts", ctypes.c_int32), ("gen", ctypes.c_uint64),
        ("n_threads", ctypes.c_uint64), ("n_words", ctypes.c_uint64), ("reads", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64), ("unread", ctypes.c_uint64),
        ("words", ctypes.c_void_p), ("cap_words", ctypes.c_uint64), ("msg", ctypes.c_char * 200),
    ]


class _LoopPub(ctypes.Structure):
    _fields_ = [("tid", ctypes.c_int64), ("cpu_ns", ctypes.c_int64), ("skipped", ctypes.c_int64),
                ("gen", ctypes.c_int64)]


class NativeWalkerUnavailable(PerfdError):
    """The native walker was asked for and cannot run here (the reason says why)."""


@dataclass(frozen=True)
class NativeStatus:
    available: bool
    reason: str | None  # why not, and what to do


def compiler() -> str:
    """The C compiler to build with ($CC, else cc or gcc on PATH)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (apt-get install gcc libc6-dev)")
    return cc


def build(out: Path = LIBRARY) -> Path:
    """Compile ``_walk.c`` (needs a C compiler; no Python headers)."""
    cc = compiler()
    tmp = out.with_suffix(".so.tmp")
    subprocess.run([cc, "-O2", "-Wall", "-shared", "-fPIC", "-o", str(tmp), str(SOURCE)], check=True)
    os.replace(tmp, out)
    return out


def _load() -> tuple[ctypes.CDLL | None, str | None]:
    if os.environ.get("PERFD_STACK_WALKER", "").lower() == "python":
        return None, "PERFD_STACK_WALKER=python"
    if not LIBRARY.exists():
        return None, f"{LIBRARY.name} is not built: run ./dev install (or python -m perfd.cpython.native_walk)"
    if LIBRARY.stat().st_mtime < SOURCE.stat().st_mtime:
        return None, f"{LIBRARY.name} is older than {SOURCE.name}: rebuild it (./dev install)"
    try:
        lib = ctypes.CDLL(str(LIBRARY))
    except OSError as e:
        return None, f"cannot load {LIBRARY.name}: {e}"
    if lib.pw_abi() != ABI:
        return None, f"{LIBRARY.name} is ABI {lib.pw_abi()}, perfd wants {ABI}: rebuild it"
    vp, u64, i32 = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int
    lib.pw_new.argtypes, lib.pw_new.restype = [i32, ctypes.POINTER(_Layout)], vp
    lib.pw_free.argtypes, lib.pw_free.restype = [vp], None
    lib.pw_result_of.argtypes, lib.pw_result_of.restype = [vp], ctypes.POINTER(_Result)
    lib.pw_set_threads.argtypes = [vp, ctypes.POINTER(u64), ctypes.c_size_t, ctypes.POINTER(u64), ctypes.c_size_t]
    lib.pw_forget.argtypes, lib.pw_forget.restype = [vp], None
    lib.pw_set_gil.argtypes = [vp, u64, ctypes.c_int64]
    lib.pw_walk.argtypes = [vp, i32]
    lib.pw_set_code.argtypes = [vp, u64, ctypes.c_char_p, i32, i32]
    lib.pw_decode.argtypes = [vp, i32]
    lib.pw_sample.argtypes = [vp, i32]
    i64 = ctypes.c_int64
    lib.pw_loop_start.argtypes, lib.pw_loop_start.restype = [vp, i64, u64, u64, i32, i32, i32, i32], vp
    lib.pw_loop_pub_of.argtypes, lib.pw_loop_pub_of.restype = [vp], ctypes.POINTER(_LoopPub)
    lib.pw_loop_wait.argtypes, lib.pw_loop_wait.restype = [vp, i64, ctypes.POINTER(u64)], i64
    lib.pw_loop_slot.argtypes, lib.pw_loop_slot.restype = [vp, u64], ctypes.POINTER(_Slot)
    lib.pw_loop_copy.argtypes, lib.pw_loop_copy.restype = [vp, u64, u64, ctypes.POINTER(u64), u64], i64
    lib.pw_loop_release.argtypes, lib.pw_loop_release.restype = [vp, u64], None
    lib.pw_loop_reset.argtypes, lib.pw_loop_reset.restype = [vp], i64
    lib.pw_loop_stop.argtypes, lib.pw_loop_stop.restype = [vp, ctypes.POINTER(_LoopPub)], None
    return lib, None


_LIB, _WHY = _load()


def status() -> NativeStatus:
    return NativeStatus(_LIB is not None, _WHY)


def _c_layout(L: Layout) -> _Layout:
    get = L.get
    values = {
        "tstate_size": L.tstate_size, "tstate_next": L.tstate_next,
        "tstate_thread_id": L.tstate_thread_id, "tstate_native_thread_id": L.tstate_native_thread_id,
        "tstate_cframe": get("tstate.cframe", -1), "tstate_current_frame": get("tstate.current_frame", -1),
        "cframe_current_frame": get("cframe.current_frame", -1), "tstate_root_cframe": get("tstate.root_cframe", -1),
        "tstate_datastack_chunk": L.tstate_datastack_chunk, "tstate_datastack_top": L.tstate_datastack_top,
        "chunk_previous": L.chunk_previous, "chunk_size": L.chunk_size, "chunk_top": L.chunk_top,
        "chunk_data": L.chunk_data,
        "frame_code": L.frame_code, "frame_previous": L.frame_previous, "frame_instr": L.frame_instr,
        "frame_owner": L.frame_owner, "frame_is_entry": get("frame.is_entry", -1),
        "owner_generator": L.frame_owner_generator, "owner_cstack": get("frame.owner_cstack", -1),
        "owner_frame_object": L.frame_owner_frame_object,
        "interp_threads_head": L.interp_threads_head, "code_head": L.code_qualname,
        "code_code_adaptive": L.code_code_adaptive, "frame_localsplus": L.frame_localsplus,
    }
    return _Layout(**values)


class NativeWalk:
    """One target's native walker. Not thread-safe (one per StackReader)."""

    def __init__(self, lib: ctypes.CDLL, pid: int, layout: Layout) -> None:
        self._lib = lib
        self._h = lib.pw_new(pid, ctypes.byref(_c_layout(layout)))
        if not self._h:
            raise ValueError("the native walker refused this layout")
        self._res = lib.pw_result_of(self._h).contents
        self.head_len = layout.code_qualname
        self._words: memoryview | None = None  # over the result words, rebuilt when C moves them
        self._words_at = 0
        self.loop: NativeLoop | None = None

    @classmethod
    def create(cls, pid: int, layout: Layout) -> "NativeWalk | None":
        if _LIB is None or sys.byteorder != "little":
            return None
        try:
            return cls(_LIB, pid, layout)
        except ValueError:
            return None

    def close(self) -> None:
        self.stop_loop()
        if self._h:
            self._lib.pw_free(self._h)
            self._h = None

    def start_loop(self, period_ns: int, slots: int, batch: int, attempts: int, nice: int | None,
                   policy: int | None = None) -> "NativeLoop":
        """Sample on a C thread from now on (see ``NativeLoop``); one loop at a time."""
        self.stop_loop()
        self.loop = NativeLoop(self, period_ns, slots, batch, attempts, nice, policy)
        return self.loop

    def stop_loop(self) -> None:
        if self.loop is not None:
            self.loop.stop()
            self.loop = None

    def __del__(self) -> None:
        self.close()

    def set_threads(self, interps: list[int], tstates: list[int]) -> None:
        ia = (ctypes.c_uint64 * max(1, len(interps)))(*interps)
        ta = (ctypes.c_uint64 * max(1, len(tstates)))(*tstates)
        if self._lib.pw_set_threads(self._h, ia, len(interps), ta, len(tstates)) < 0:
            raise ValueError("too many threads or interpreters for the native walker")

    def forget(self) -> None:
        self._lib.pw_forget(self._h)

    def set_gil(self, holder_addr: int, switch_off: int) -> None:
        """Where the main GIL's holder is (absolute) and its switch count (from
        there): threads that cannot have held it since their last sample are not
        read. 0: read every thread."""
        if self._lib.pw_set_gil(self._h, holder_addr, switch_off) < 0:
            raise ValueError("the native walker refused the GIL's layout")

    def walk(self, lenient: bool) -> int:
        """Read and walk: OK (then ``needed_codes``, ``set_code``, ``decode``), RELIST,
        TORN, or -errno (target gone or unreadable)."""
        return self._lib.pw_walk(self._h, int(lenient))

    def sample(self, lenient: bool) -> int:
        """``walk`` and ``decode`` in one call: OK (decoded), NEED_CODES (then as after
        ``walk``), RELIST, TORN or -errno."""
        return self._lib.pw_sample(self._h, int(lenient))

    def needed_codes(self) -> list[tuple[int, bytes]]:
        """Code objects (address, header as read) Python must decode before ``decode``."""
        r = self._res
        n = r.n_need
        if not n:
            return []
        addrs = (ctypes.c_uint64 * n).from_address(r.need)
        heads = ctypes.string_at(r.need_heads, n * self.head_len)
        hl = self.head_len
        return [(addrs[i], heads[i * hl:(i + 1) * hl]) for i in range(n)]

    def set_code(self, addr: int, head: bytes, kind: int, firsttraceable: int) -> None:
        """kind: 1 a code object, 2 None (3.13 trampolines), 0 neither."""
        if self._lib.pw_set_code(self._h, addr, head, kind, firsttraceable) < 0:
            raise MemoryError("native walker")

    def decode(self, lenient: bool) -> int:
        return self._lib.pw_decode(self._h, int(lenient))

    def result(self) -> tuple[list[int], list[int], list[int]]:
        """After a decode: 6 words per thread (tstate, thread id, native id, flags,
        frames, new frames), 4 per new frame (frame, code, instruction pointer, owner)
        and every frame's first local as read with it (threads in order, innermost first)."""
        r = self._res
        if not r.n_words:
            return [], [], []
        view = self._words
        if view is None or r.cap_words != len(view) or r.words != self._words_at:
            buf = (ctypes.c_uint64 * r.cap_words).from_address(r.words)
            view = self._words = memoryview(buf).cast("B").cast("Q")
            self._words_at = r.words
        return split_words(view[:r.n_words].tolist(), r.n_threads)

    @property
    def message(self) -> str:
        return self._res.msg.decode(errors="replace")

    @property
    def reads(self) -> int:
        return self._res.reads

    @property
    def bytes_read(self) -> int:
        return self._res.bytes

    @property
    def unread(self) -> int:
        """Threads the last sample did not read (see ``set_gil``)."""
        return self._res.unread


def split_words(words: list[int], n_threads: int) -> tuple[list[int], list[int], list[int]]:
    """A decoded sample's words as (per thread, per new frame, first locals): see ``result``."""
    n = 6 * n_threads
    f = n + 4 * sum(words[5:n:6])
    return words[:n], words[n:f], words[f:]


@dataclass(slots=True)
class LoopSample:
    """One sample the paced loop took, copied out of its slot."""

    mono_ns: int
    epoch_ns: int
    done_ns: int  # CLOCK_MONOTONIC when its reads were done
    rc: int  # OK: ``words`` is the decoded sample; else what Python must finish (the loop is parked)
    attempts: int  # walks taken, 1 = no retry
    gen: int
    n_threads: int
    words: list[int]
    reads: int
    bytes_read: int
    unread: int  # threads not read: they cannot have run since their last sample
    message: str


class NativeLoop:
    """Samples a ``NativeWalk`` at a fixed rate on a C thread, into a ring that
    Python takes in batches (see ``_walk.c``). While it runs the walker is the
    loop's, except while it is parked on a sample that needs Python: the last
    sample ``take`` returns then has ``rc != OK``, and the walker is Python's
    until ``release``."""

    def __init__(self, walk: NativeWalk, period_ns: int, slots: int, batch: int, attempts: int,
                 nice: int | None, policy: int | None = None) -> None:
        """``nice`` and ``policy`` (``os.SCHED_*``) are the loop thread's; None leaves them."""
        self._lib = walk._lib  # noqa: SLF001 - the same library
        self._walk = walk  # the walker outlives its loop
        self._h = self._lib.pw_loop_start(walk._h, period_ns, slots, batch, attempts,  # noqa: SLF001
                                          int(nice is not None), nice or 0, -1 if policy is None else policy)
        if not self._h:
            raise MemoryError("native sampling loop")
        self._pub = self._lib.pw_loop_pub_of(self._h).contents
        self._first = ctypes.c_uint64()
        self._buf = (ctypes.c_uint64 * (1 << 14))()  # a batch's samples, packed (grown when short)
        self._view = memoryview(self._buf).cast("B").cast("Q")

    @property
    def tid(self) -> int:
        return self._pub.tid

    @property
    def cpu_s(self) -> float:
        """The loop thread's CPU time, as of the last batch it handed on; once stopped, all of it."""
        return self._pub.cpu_ns / 1e9

    @property
    def skipped(self) -> int:
        """Samples not taken because the ring was full (Python fell behind)."""
        return self._pub.skipped

    def take(self, timeout_s: float) -> tuple[int, list[LoopSample]]:
        """Wait up to ``timeout_s`` for a batch; the samples ready, oldest first, and
        the sequence number to ``release`` them with."""
        lib, h = self._lib, self._h
        n = lib.pw_loop_wait(h, int(timeout_s * 1e9), ctypes.byref(self._first))
        first = self._first.value
        if not n:
            return first, []
        got = lib.pw_loop_copy(h, first, n, self._buf, len(self._buf))
        if got < 0:  # grow once to what this batch needs (and some)
            self._buf = (ctypes.c_uint64 * (2 * -got))()
            self._view = memoryview(self._buf).cast("B").cast("Q")
            got = lib.pw_loop_copy(h, first, n, self._buf, len(self._buf))
        words = self._view[:got].tolist()
        out, at = [], 0
        for seq in range(first, first + n):
            mono, epoch, done, rc, attempts, gen, n_threads, n_words, reads, nbytes, unread = words[at:at + _SLOT_HEAD]
            at += _SLOT_HEAD
            if rc >= 1 << 63:
                rc -= 1 << 64
            message = lib.pw_loop_slot(h, seq).contents.msg.decode(errors="replace") if rc != OK else ""
            out.append(LoopSample(mono, epoch, done, rc, attempts, gen, n_threads, words[at:at + n_words],
                                  reads, nbytes, unread, message))
            at += n_words
        return first + n, out

    def release(self, upto: int) -> None:
        """Done with the samples before ``upto``; a parked loop goes on."""
        self._lib.pw_loop_release(self._h, upto)

    def reset(self) -> int:
        """Compare the next sample with nothing; returns the generation samples taken from then on carry."""
        return self._lib.pw_loop_reset(self._h)

    def stop(self) -> None:
        """Stop sampling; ``tid``, ``cpu_s`` and ``skipped`` keep their final values."""
        if self._h:
            last = _LoopPub()  # the loop's own fields are freed with it
            self._lib.pw_loop_stop(self._h, ctypes.byref(last))
            self._pub = last
            self._h = None

    def __del__(self) -> None:
        self.stop()


if __name__ == "__main__":
    print(build())
