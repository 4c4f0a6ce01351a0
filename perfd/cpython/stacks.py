"""Walk every thread's Python stack in a live target, cheaply and defensively.

One sample is normally one multi-part ``process_vm_readv``: the thread states,
the used part of each thread's datastack chunk (where thread-owned frames
live), and — speculatively, from the previous sample — the heap frames of
generators/coroutines, the ``_PyCFrame`` records (3.11/3.12) and the code
object headers. Whatever the speculation missed is fetched in follow-up
batches. Code objects are cached by address and re-validated every sample by
comparing their header bytes (addresses get reused); values are never cached.

The reads, walk and byte checks run in C (``native_walk``, same plan and the
same checks) when that core is built; the Python walk here is the fallback
where it is not, and the oracle its tests compare it with.
"""

from __future__ import annotations

import errno
import struct
import time
from dataclasses import dataclass, field, replace

from perfd.cpython import native_walk
from perfd.cpython.discovery import Interpreter
from perfd.cpython.layouts import Layout, layout_for
from perfd.cpython.linetable import line_for_offset
from perfd.cpython.memory import ProcessMemory, read_error
from perfd.cpython.objects import ObjectReader, Value
from perfd.cpython.sample import Frame, Sample, ThreadStack
from perfd.errors import MemoryReadError

MAX_DEPTH = 4096
# Walks per sample before giving up on a thread that keeps changing. On a target
# switching tasks every few µs (tests/targets/reader_churn.py), 3 leave 2.7-5.5% of
# samples with a suspect thread, 5 leave 0.8-1.7% (bench/torn_reads.py); retries
# cost only when a walk tore.
ATTEMPTS = 5
LOOP_RING_S = 0.5  # the paced loop's ring holds this much sampling before it skips samples
MAX_THREADS = 1024
_Q = struct.Struct("<Q")
_q = struct.Struct("<q")
_FRAME_READ = 80  # through localsplus[0]
_CHUNK_SLACK = 2048  # read this much past last sample's datastack top (room for new frames)
_CHUNK_MAX = 1 << 20
# How far down last sample's stack a changed thread's frame is looked for, to
# splice on the unchanged rest (StackReader._splice): the frames above it were
# popped. Deeper unwinds walk the whole stack, as any first sample does.
_SPLICE_DEPTH = 8
# Spliced frames keep the buffer they were read in alive; a stack that deepens a
# frame per sample would hold one buffer per frame. Every so many splices in a
# row a thread is walked whole again, which re-reads all its frames into one.
_SPLICE_REFRESH = 32
_FRAME_CACHE_MAX = 1 << 14


@dataclass(slots=True)
class CodeInfo:
    address: int
    header: bytes  # bytes [8:prefix) of the code object (refcount excluded) — the cache key, as read each sample
    name: str
    qualname: str
    filename: str
    firstlineno: int
    linetable: bytes
    firsttraceable: int
    nlocalsplus: int
    localsplusnames_addr: int
    localspluskinds_addr: int
    lines: dict[int, int | None] = field(default_factory=dict)
    local_names: list[str] | None = None
    local_kinds: bytes | None = None

    def line(self, byte_offset: int) -> int | None:
        line = self.lines.get(byte_offset, -1)
        if line == -1:
            line = line_for_offset(self.linetable, self.firstlineno, byte_offset)
            if len(self.lines) < 4096:
                self.lines[byte_offset] = line
        return line


class TornRead(Exception):
    """Internal: the target changed under a walk; the sample is walked again."""


@dataclass(slots=True)
class _Walk:
    tstate: int
    thread_id: int
    native_thread_id: int
    next_frame: int
    frames: list[tuple[int, bytes, int]] = field(default_factory=list)  # (frame addr, buffer, offset in it)
    done: bool = False
    suspect: bool = False
    ranges: list[tuple[int, int, bytes]] = field(default_factory=list)  # this thread's datastack chunks
    signature: tuple = ()
    reused: list[Frame] | None = None
    broken: bool = False  # last attempt only: this thread's chain could not be read; it alone is dropped
    prior: "_Memo | None" = None  # this thread's last sample, whose outer frames may be spliced on
    tail: int = -1  # position in prior.walk from which the prior's frames were spliced on, -1 if none


@dataclass(slots=True)
class _Memo:
    """One thread's last sample: enough to skip an unchanged thread, or to keep
    the unchanged outer part of a changed one."""

    signature: tuple
    frames: list[Frame]  # decoded, innermost first
    heap: list[tuple[int, bytes]]  # frames outside datastack chunks: (address, bytes)
    codes: dict[int, None]  # code objects the frames use
    walk: list[tuple[int, bytes, int]]  # (frame address, buffer, offset), innermost first
    ends: list[int]  # ends[k]: decoded frames from walk position k to the outermost
    ranges: list[tuple[int, int, bytes]]  # datastack chunks as read
    heap_at: list[int]  # walk positions of the heap frames
    splices: int = 0  # samples in a row that spliced on outer frames of an earlier one


class StackReader:
    """Samples the Python stacks of one interpreter (the main one and subinterpreters)."""

    def __init__(self, interp: Interpreter, mem: ProcessMemory | None = None, *, walker: str = "auto",
                 gil_gated: bool = True) -> None:
        """``walker``: "auto" (native when built and reading a live process), "native"
        (raise ``NativeWalkerUnavailable`` if it cannot be) or "python". ``gil_gated``:
        the native walker does not read threads that have not held the GIL since
        their last sample (False: every thread, every sample)."""
        self.interp = interp
        self.mem = mem or ProcessMemory(interp.pid)
        self.layout: Layout = layout_for(interp, self.mem)
        self.objects = ObjectReader(self.mem, self.layout)
        L = self.layout
        self._v313 = L.minor >= (3, 13)
        self._code_head = L.code_qualname  # bytes [8, qualname+8): the refcount, which always changes, is not read
        self._code_read = max(L.code_size, L.code_code_adaptive)
        self._owner_gen = L.frame_owner_generator
        self._owner_cstack = L.get("frame.owner_cstack", -1)
        self._owner_frame_obj = L.frame_owner_frame_object
        self._entry_flag = L.get("frame.is_entry", -1)
        self._root_cframe = L.get("tstate.root_cframe", -1)
        self._codes: dict[int, CodeInfo] = {}
        self._code_type = 0  # address of the code type, learned from the first code object
        self._interp_addrs: list[int] = []
        self._tstates: list[int] = []
        self._cframes: dict[int, int] = {}  # tstate -> last cframe address (3.11/3.12)
        self._chunks: dict[int, tuple[int, int]] = {}  # tstate -> (chunk start, bytes to read)
        self._chunk_sizes: dict[int, int] = {}
        self._heap_frames: list[int] = []  # frames outside datastack chunks seen last sample
        self._last_codes: list[int] = []
        self._codes_changed = False  # last sample: a code object in use was new or changed
        # Frame records reused while (frame, code, instruction, owner) and the code stay the same
        self._frame_cache: dict[tuple[int, int, int, int], Frame] = {}
        self._memo: dict[int, _Memo] = {}  # tstate -> its last sample
        self.torn = 0  # samples that needed a retry
        self._had_stack: dict[int, bool] = {}  # survives retries, unlike the speculation state
        self.torn_threads = 0  # threads given up as suspect on the last attempt
        self.reused_threads = 0  # thread walks skipped because nothing changed
        self.spliced_frames = 0  # frames of changed threads kept from the last sample (not walked again)
        self.reads_last = 0  # syscalls used by the last sample
        self.bytes_read = 0  # by the native walker's samples, in all
        self.unread_threads = 0  # threads not read: they had not held the GIL since their last sample
        # The walk in C when it is built and the memory is a live process read by
        # process_vm_readv; else (and if the kernel refuses it later) in Python.
        live = type(self.mem) is ProcessMemory
        self._native = native_walk.NativeWalk.create(interp.pid, L) if live and walker != "python" else None
        if walker == "native" and self._native is None:
            raise native_walk.NativeWalkerUnavailable(
                native_walk.status().reason or "the native walker does not read this memory")
        holder, switches = L.get("runtime.gil_last_holder"), L.get("runtime.gil_switch_number")
        if gil_gated and self._native is not None and holder is not None and switches is not None:
            self._native.set_gil(interp.runtime_addr + holder, switches - holder)
        self._native_stacks: dict[int, ThreadStack] = {}  # tstate -> its last native sample
        self._loop_gen = 0  # the paced loop's generation this reader's stacks belong to

    @property
    def walker(self) -> str:
        """Which walker samples: "native" or "python"."""
        return "native" if self._native is not None else "python"

    def close(self) -> None:
        if self._native is not None:
            self._native.close()
        self.mem.close()

    # -- thread list ------------------------------------------------------
    def _read_thread_list(self) -> list[int]:
        L = self.layout
        interps = []
        addr = _Q.unpack(self.mem.read(self.interp.runtime_addr + L.runtime_interpreters_head, 8))[0]
        while addr and len(interps) < 64:
            interps.append(addr)
            addr = _Q.unpack(self.mem.read(addr + L.interp_next, 8))[0]
        tstates: list[int] = []
        for ia in interps:
            t = _Q.unpack(self.mem.read(ia + L.interp_threads_head, 8))[0]
            while t and len(tstates) < MAX_THREADS:
                if t in tstates:
                    raise TornRead("thread list loops")
                tstates.append(t)
                t = _Q.unpack(self.mem.read(t + L.tstate_next, 8))[0]
        self._interp_addrs = interps
        return tstates

    def thread_states(self) -> list[int]:
        """Addresses of every live PyThreadState (fresh read)."""
        self._tstates = self._read_thread_list()
        return list(self._tstates)

    # -- sampling ---------------------------------------------------------
    def sample(self, *, with_locals: bool = False) -> Sample:
        """Every thread's stack. Walks again (up to ATTEMPTS) when the target moved under the walk;
        the last walk drops only the threads that still tear, marked ``suspect``.

        Raises ``MemoryReadError`` (incl. ``NoSuchProcess``) when the target is unreadable.
        """
        mono, epoch = time.monotonic_ns(), time.time_ns()
        threads, retried = self._walk_attempts(0, None)
        if with_locals:  # copies: frame records and unchanged stacks are shared between samples
            threads = [replace(t, frames=[replace(f, locals=self.frame_locals(f)) for f in t.frames])
                       for t in threads]
        return Sample(mono, epoch, threads, retried=retried, read_done_ns=time.monotonic_ns())

    def _walk_attempts(self, first: int, rc: int | None) -> tuple[list[ThreadStack], bool]:
        """Walks from attempt ``first`` on; ``rc``: what the native walker already
        returned for that attempt (the paced loop hands such a sample over)."""
        retried = first > 0
        for attempt in range(first, ATTEMPTS):
            last = attempt == ATTEMPTS - 1
            try:
                return self._sample_once(lenient=last, rc=rc), retried
            except TornRead as e:
                rc = None
                self.torn += 1
                retried = True
                self._forget_speculation()
                if last:
                    raise MemoryReadError(f"stack changed during {ATTEMPTS} walks: {e}") from None
        raise AssertionError("unreachable")

    # -- the paced loop (native walker only) ------------------------------------
    def start_loop(self, rate_hz: float, batch_s: float, nice: int | None, policy: int | None = None) -> bool:
        """Sample at ``rate_hz`` on a C thread from now on (``loop_samples`` takes the
        samples); False when this reader walks in Python. ``sample()`` must not be
        called while the loop runs."""
        if self._native is None:
            return False
        period_ns = max(1, int(1e9 / rate_hz))
        slots = min(8192, max(16, int(rate_hz * LOOP_RING_S)))
        batch = max(1, int(rate_hz * batch_s))
        self._native.start_loop(period_ns, slots, batch, ATTEMPTS, nice, policy)
        self._loop_gen = 0
        return True

    @property
    def loop(self) -> native_walk.NativeLoop | None:
        return self._native.loop if self._native is not None else None

    def stop_loop(self) -> None:
        if self._native is not None:
            self._native.stop_loop()

    def loop_samples(self, timeout_s: float) -> list[Sample | Exception]:
        """The samples the loop took since the last call (waits up to ``timeout_s``
        for a batch), oldest first; a sample that could not be finished is its error
        (``MemoryReadError`` and its kin; anything else is a bug, returned all the same).
        The loop stops when the walker falls back to Python (e.g. the kernel refused
        process_vm_readv): ``loop`` is None then."""
        loop = self.loop
        if loop is None:
            return []
        upto, taken = loop.take(timeout_s)
        out: list[Sample | Exception] = []
        try:
            for ls in taken:
                try:
                    out.append(self._sample_of(ls))
                except Exception as e:  # noqa: BLE001 - handed on: one sample's failure, not the batch's
                    out.append(MemoryReadError(f"torn: {e}") if isinstance(e, TornRead) else e)
                    if ls.rc == native_walk.OK and self.loop is loop:
                        self._reset_loop(loop)
        finally:
            if self.loop is loop:  # not stopped by a fall back to Python
                loop.release(upto)
        return out

    def _sample_of(self, ls: native_walk.LoopSample) -> Sample:
        if ls.gen != self._loop_gen:
            raise TornRead("taken before the walker started afresh")
        self.torn += ls.attempts - 1
        if ls.rc != native_walk.OK:  # the loop is parked: the walker is ours until release
            threads, retried = self._walk_attempts(ls.attempts - 1, ls.rc)
            return Sample(ls.mono_ns, ls.epoch_ns, threads, retried=retried, read_done_ns=time.monotonic_ns())
        info, raw, firsts = native_walk.split_words(ls.words, ls.n_threads)
        threads = self._threads_of(info, raw, firsts, set())
        self.reads_last = ls.reads
        self.bytes_read += ls.bytes_read
        self.unread_threads += ls.unread
        return Sample(ls.mono_ns, ls.epoch_ns, threads, retried=ls.attempts > 1, read_done_ns=ls.done_ns)

    def _reset_loop(self, loop: native_walk.NativeLoop) -> None:
        """Python's frame records and the loop's last sample disagree: both start afresh."""
        self._native_stacks = {}
        self._loop_gen = loop.reset()

    def _forget_speculation(self) -> None:
        if self._native is not None:
            self._native.forget()
            self._native_stacks = {}
        self._tstates = []
        self._cframes.clear()
        self._chunks.clear()
        self._heap_frames = []
        self._memo = {}

    def _sample_once(self, relisted: bool = False, lenient: bool = False, rc: int | None = None) -> list[ThreadStack]:
        if self._native is not None:
            return self._sample_native(relisted, lenient, rc)
        L = self.layout
        mem = self.mem
        reads0 = mem.reads
        if not self._tstates:
            self._tstates = self._read_thread_list()
        tstates = self._tstates
        head_parts = [(a + L.interp_threads_head, 8) for a in self._interp_addrs]
        parts: list[tuple[int, int]] = list(head_parts)
        parts += [(t, L.tstate_size) for t in tstates]
        chunk_parts = [(i, a, n) for i, t in enumerate(tstates) for a, n in self._chunks.get(t, ())]
        parts += [(a, n) for _, a, n in chunk_parts]
        cframe_parts = [(c, 16) for c in self._cframes.values()] if not self._v313 else []
        parts += cframe_parts
        frame_parts = [(f, _FRAME_READ) for f in self._heap_frames]
        parts += frame_parts
        code_parts = [(c + 8, self._code_head) for c in self._last_codes]
        parts += code_parts
        bufs = mem.read_many(parts)

        # 1. thread list still valid? (heads and next pointers from this same read)
        n_heads = len(head_parts)
        tbufs = bufs[n_heads:n_heads + len(tstates)]
        if None in bufs[:n_heads + len(tstates)]:
            raise TornRead("thread state unreadable")
        heads = [_Q.unpack(b)[0] for b in bufs[:n_heads]]
        at_next = L.tstate_next
        expected = [_Q.unpack_from(b, at_next)[0] for b in tbufs]
        if not self._thread_list_matches(heads, tstates, expected):
            if relisted:
                raise TornRead("thread list keeps changing")
            self._tstates = self._read_thread_list()
            return self._sample_once(relisted=True, lenient=lenient)

        # 2. regions fetched this round
        exact: dict[int, bytes] = {}
        ranges: list[list[tuple[int, int, bytes]]] = [[] for _ in tstates]
        k = n_heads + len(tstates)
        for (i, addr, _size), b in zip(chunk_parts, bufs[k:k + len(chunk_parts)]):
            if b is not None:
                ranges[i].append((addr, addr + len(b), b))
        k += len(chunk_parts)
        cframes: dict[int, bytes] = {}
        for (addr, _size), b in zip(cframe_parts, bufs[k:k + len(cframe_parts)]):
            if b is not None:
                cframes[addr] = b
        k += len(cframe_parts)
        for (addr, _size), b in zip(frame_parts, bufs[k:k + len(frame_parts)]):
            if b is not None:
                exact[addr] = b
        k += len(frame_parts)
        code_heads: dict[int, bytes] = {}
        for (addr, _size), b in zip(code_parts, bufs[k:k + len(code_parts)]):
            if b is not None:
                code_heads[addr - 8] = b

        # 3. current frame of each thread
        walks: list[_Walk] = []
        need_cframe: list[tuple[_Walk, int]] = []
        unplanned: list[tuple[_Walk, list[tuple[int, int]]]] = []  # threads whose chunks were not read this round
        root_cframe = self._root_cframe
        v313, memos, unpack = self._v313, self._memo, _Q.unpack_from
        at_tid, at_ntid = L.tstate_thread_id, L.tstate_native_thread_id
        at_cframe = 0 if v313 else L.tstate_cframe
        reused = 0
        for t, b, rng in zip(tstates, tbufs, ranges):
            w = _Walk(t, unpack(b, at_tid)[0], unpack(b, at_ntid)[0], 0, ranges=rng)
            walks.append(w)
            cf = 0 if v313 else unpack(b, at_cframe)[0]
            cfbuf = cframes.get(cf, b"") if cf else b""
            # Unchanged bytes (thread state, its chunks, its C frame, its heap frames) = unchanged stack.
            w.signature = signature = (b, cfbuf, tuple([r[2] for r in rng]))
            memo = memos.get(t)
            if (memo is not None and memo.signature == signature and (cfbuf or not cf)
                    and (not memo.heap or all(exact.get(a) == hb for a, hb in memo.heap))):
                w.reused = memo.frames
                w.done = True
                reused += 1
                continue  # same bytes: same chunk plan and C frame as last time
            w.prior = memo if memo is not None and memo.splices < _SPLICE_REFRESH else None
            chunk = _Q.unpack_from(b, L.tstate_datastack_chunk)[0]
            top = _Q.unpack_from(b, L.tstate_datastack_top)[0]
            self._chunks[t] = plan = self._chunk_plan(chunk, top, rng)
            if plan and not rng:
                unplanned.append((w, plan))
            if self._v313:
                w.next_frame = _Q.unpack_from(b, L.tstate_current_frame)[0]
            else:
                self._cframes[t] = cf
                if cfbuf:
                    w.next_frame = _Q.unpack_from(cfbuf, L.cframe_current_frame)[0]
                elif cf:
                    need_cframe.append((w, cf))
        self.reused_threads += reused
        if unplanned:
            # Read their chunks now (one call) rather than walk frame by frame: a deep
            # stack would take a round trip per frame, and a slow walk is a torn walk.
            got = mem.read_many([part for _, plan in unplanned for part in plan])
            it = iter(got)
            for w, plan in unplanned:
                for (addr, _size), b in zip(plan, it):
                    if b is not None:
                        w.ranges.append((addr, addr + len(b), b))
        if need_cframe:
            got = mem.read_many([(cf + L.cframe_current_frame, 8) for _, cf in need_cframe])
            for (w, _cf), b in zip(need_cframe, got):
                if b is None:
                    raise TornRead("cframe unreadable")
                w.next_frame = _Q.unpack(b)[0]

        for w in walks:
            if w.reused is not None or w.next_frame:
                continue
            # 3.11/3.12: a thread outside Python sits on its root C frame; a NULL current
            # frame on any other C frame is a C frame caught before it was filled in.
            half_made = root_cframe >= 0 and self._cframes.get(w.tstate) not in (0, w.tstate + root_cframe)
            if half_made or self._had_stack.get(w.tstate):
                # had a stack a moment ago, none now: usually a frame record caught mid-update
                if not lenient:
                    raise TornRead("current frame vanished")
                w.suspect = True

        # 4. walk frames, batching whatever is not in hand yet
        heap_frames: list[int] = [a for w in walks if w.reused is not None for a, _ in self._memo[w.tstate].heap]
        pending = [w for w in walks if w.next_frame]
        rounds = 0
        while pending:
            missing: dict[int, None] = {}
            for w in pending:
                self._advance(w, exact, missing, heap_frames)
            pending = [w for w in pending if not w.done]
            if not pending:
                break
            rounds += 1
            if rounds > MAX_DEPTH:
                if not lenient:
                    raise TornRead("frame chain does not end")
                for w in pending:
                    w.broken = w.done = True
                break
            addrs = list(missing)
            got = mem.read_many([(a, _FRAME_READ) for a in addrs])
            unreadable = set()
            for a, b in zip(addrs, got):
                if b is None:
                    if not lenient:
                        raise TornRead(f"frame {a:#x} unreadable")
                    unreadable.add(a)
                else:
                    exact[a] = b
            for w in pending:
                if w.next_frame in unreadable:  # a pointer read mid-update: give up on this thread only
                    w.broken = w.done = True
            pending = [w for w in pending if not w.done]
        self._heap_frames = heap_frames[-512:]

        # 5. code objects: validate cached headers, decode new ones
        code_addrs: dict[int, None] = {}
        code_at = L.frame_code
        for w in walks:
            if w.reused is not None:
                code_addrs.update(self._memo[w.tstate].codes)
            elif w.tail >= 0:
                code_addrs.update(w.prior.codes)  # a superset of the spliced frames' codes
            for _addr, buf, off in w.frames:
                code_addrs[_Q.unpack_from(buf, off + code_at)[0]] = None
        missing_codes = [c for c in code_addrs if c not in code_heads]
        if missing_codes:
            for c, b in zip(missing_codes, mem.read_many([(c + 8, self._code_head) for c in missing_codes])):
                if b is not None:
                    code_heads[c] = b
        self._last_codes = list(code_addrs)

        valid_codes = {c: self._code(c, code_heads.get(c)) for c in code_addrs}
        self._codes_changed = None in valid_codes.values()
        if len(self._frame_cache) > _FRAME_CACHE_MAX:
            self._frame_cache = {}
        out: list[ThreadStack] = []
        memo: dict[int, _Memo] = {}
        for w in walks:
            try:
                if w.broken:
                    raise TornRead("frame chain unreadable")
                if w.reused is not None:
                    if self._codes_changed and any(valid_codes.get(c) is None for c in self._memo[w.tstate].codes):
                        raise TornRead("a code object changed under an unchanged stack")
                    frames = w.reused
                else:
                    frames, ends = self._frames_of(w, valid_codes, lenient)
            except TornRead:
                if not lenient:
                    raise
                self.torn_threads += 1
                out.append(ThreadStack(w.thread_id, w.native_thread_id, w.tstate, [], suspect=True))
                continue
            if w.reused is None:
                memo[w.tstate] = self._remember(w, frames, ends, exact)
            else:
                memo[w.tstate] = self._memo[w.tstate]
            out.append(ThreadStack(w.thread_id, w.native_thread_id, w.tstate, frames, suspect=w.suspect))
        self._memo = memo
        self._had_stack = {t.tstate_addr: bool(t.frames) if not t.suspect else self._had_stack.get(t.tstate_addr, True)
                           for t in out}
        self.reads_last = mem.reads - reads0
        return out

    def _sample_native(self, relisted: bool, lenient: bool, rc: int | None = None) -> list[ThreadStack]:
        """``_sample_once`` with the reads, walk and byte checks in C: Python only
        lists threads, decodes code objects C has not seen, and builds frame
        records for frames that differ from the thread's last sample. ``rc``:
        the walker's answer for this walk, when it already sampled."""
        nw = self._native
        reads0 = self.mem.reads
        if rc is None:
            if not self._tstates:
                self._tstates = self._read_thread_list()
                nw.set_threads(self._interp_addrs, self._tstates)
            rc = nw.sample(lenient)
        if rc == native_walk.RELIST:
            if relisted:
                raise TornRead("thread list keeps changing")
            self._tstates = []
            return self._sample_native(True, lenient)
        if rc < 0:
            if -rc in (errno.EPERM, errno.ENOSYS):
                # process_vm_readv refused (e.g. seccomp): this read raises the typed error
                # unless /proc/PID/mem works, and then the Python walker reads through it
                self.mem.read(self.interp.runtime_addr, 8)
                self._native = None
                nw.close()  # stops its loop, if any
                return self._sample_once(relisted, lenient)
            raise read_error(self.interp.pid, -rc, self.interp.runtime_addr)
        fresh: set[int] = set()
        if rc == native_walk.NEED_CODES:
            for addr, head in nw.needed_codes():
                info = self._code(addr, head)
                if info is not None:
                    nw.set_code(addr, head, 1, info.firsttraceable)
                else:
                    none = self._v313 and self.objects.type_name(addr) == "NoneType"
                    nw.set_code(addr, head, 2 if none else 0, 0)
                fresh.add(addr)
            rc = nw.decode(lenient)
        if rc == native_walk.TORN:
            raise TornRead(nw.message)
        if rc < 0:
            raise MemoryReadError(f"native walker: {errno.errorcode.get(-rc, -rc)}")
        info, raw, firsts = nw.result()
        out = self._threads_of(info, raw, firsts, fresh)
        self.reads_last = nw.reads + self.mem.reads - reads0
        self.bytes_read += nw.bytes_read
        self.unread_threads += nw.unread
        return out

    def _threads_of(self, info: list[int], raw: list[int], firsts: list[int], fresh: set[int]) -> list[ThreadStack]:
        """Thread stacks from a decoded sample's words (``NativeWalk.result``): frames
        equal to the thread's last sample are kept, the rest built (``fresh``: code
        objects decoded again this sample, whose cached records are stale)."""
        if len(self._frame_cache) > _FRAME_CACHE_MAX:
            self._frame_cache = {}
        last, kept = self._native_stacks, {}
        out: list[ThreadStack] = []
        pos = at = 0
        words = iter(info)
        for tstate, tid, ntid, flags, n, new in zip(words, words, words, words, words, words):
            prev = last.get(tstate)
            if flags & native_walk.SAME:  # nothing differs: the last sample's stack object again
                if prev is None or prev.suspect:
                    if n:
                        raise TornRead("native walker out of step with its frame records")
                    prev = ThreadStack(tid, ntid, tstate, [], first_locals=[])
                self.reused_threads += 1
                kept[tstate] = prev
                out.append(prev)
                continue
            if flags & native_walk.DROPPED:
                self.torn_threads += 1
                out.append(ThreadStack(tid, ntid, tstate, [], suspect=True))
                continue
            prev_frames = prev.frames if prev is not None else None
            keep = n - new
            if keep and (prev_frames is None or len(prev_frames) < keep):
                raise TornRead("native walker out of step with its frame records")
            if flags & native_walk.FIRSTS_KEPT:
                first_locals, at = firsts[at:at + new], at + new
                if keep:
                    kept_firsts = prev.first_locals if prev is not None else None
                    if kept_firsts is None or len(kept_firsts) < keep:
                        raise TornRead("native walker out of step with its first locals")
                    first_locals += kept_firsts[len(kept_firsts) - keep:]
            else:
                first_locals, at = firsts[at:at + n], at + n
            if not new and prev_frames is not None and len(prev_frames) == n:
                frames = prev_frames
                self.reused_threads += 1
            else:
                frames = self._frames_of_raw(raw, pos, new, fresh)
                pos += 4 * new
                if keep:
                    frames += prev_frames[len(prev_frames) - keep:]
                    self.spliced_frames += keep
            stack = ThreadStack(tid, ntid, tstate, frames, suspect=bool(flags & native_walk.SUSPECT),
                                first_locals=first_locals)
            kept[tstate] = stack
            out.append(stack)
        self._native_stacks = kept
        return out

    def _frames_of_raw(self, raw: list[int], pos: int, n: int, fresh: set[int]) -> list[Frame]:
        """Frame records for ``n`` frames the native walker checked, 4 words each from ``pos``."""
        cache, codes = self._frame_cache, self._codes
        out: list[Frame] = []
        for k in range(pos, pos + 4 * n, 4):
            addr, code_addr, instr, owner = key = (raw[k], raw[k + 1], raw[k + 2], raw[k + 3])
            frame = cache.get(key) if code_addr not in fresh else None
            if frame is None:
                code = codes.get(code_addr) or self.code_info(code_addr)
                if code is None:
                    raise TornRead(f"code object {code_addr:#x} gone")
                frame = cache[key] = self._new_frame(code, addr, code_addr, instr, owner)
            out.append(frame)
        return out

    def _new_frame(self, code: CodeInfo, addr: int, code_addr: int, instr: int, owner: int) -> Frame:
        L = self.layout
        offset = instr - (code_addr + L.code_code_adaptive)
        gen = addr - L.gen_iframe if owner == self._owner_gen else 0
        return Frame(code.name, code.qualname, code.filename, code.line(offset), addr, code_addr, owner, gen)

    def _chunk_plan(self, chunk: int, top: int, fetched: list[tuple[int, int, bytes]]) -> list[tuple[int, int]]:
        """Parts to read next sample for a thread's frames: the used part of the
        current chunk (+ slack) and the used part of every earlier chunk."""
        if not chunk or top <= chunk:
            return []
        size = self._chunk_size(chunk)
        if not size:
            return []
        plan = [(chunk, min(top - chunk + _CHUNK_SLACK, size, _CHUNK_MAX))]
        L = self.layout
        have = {lo: buf for lo, _hi, buf in fetched}
        head = have.get(chunk)
        prev = _Q.unpack_from(head, L.chunk_previous)[0] if head is not None else 0
        while prev and len(plan) < 32:
            head = have.get(prev)
            if head is None or len(head) < L.chunk_data:
                try:
                    head = self.mem.read(prev, L.chunk_data)
                except MemoryReadError:
                    break
            used = _Q.unpack_from(head, L.chunk_top)[0]  # index in PyObject* units, saved on chunk switch
            csize = _Q.unpack_from(head, L.chunk_size)[0]
            nbytes = L.chunk_data + 8 * used
            if not 0 < nbytes <= csize <= _CHUNK_MAX * 64:
                break
            plan.append((prev, nbytes))
            prev = _Q.unpack_from(head, L.chunk_previous)[0]
        return plan

    def _chunk_size(self, chunk: int) -> int:
        """Allocated size of a datastack chunk (read once: chunks never resize)."""
        size = self._chunk_sizes.get(chunk)
        if size is None:
            try:
                size = _Q.unpack(self.mem.read(chunk + self.layout.chunk_size, 8))[0]
            except MemoryReadError:
                return 0
            if not 0 < size <= 1 << 30:
                return 0
            if len(self._chunk_sizes) > 4096:
                self._chunk_sizes.clear()
            self._chunk_sizes[chunk] = size
        return size

    @staticmethod
    def _thread_list_matches(heads: list[int], tstates: list[int], nexts: list[int]) -> bool:
        # tstates is the concatenation of each interpreter's list: every list
        # starts at a head and each entry's next is the following entry or 0.
        i = 0
        for h in heads:
            if not h:
                continue
            if i >= len(tstates) or tstates[i] != h:
                return False
            while True:
                nxt = nexts[i]
                i += 1
                if not nxt:
                    break
                if i >= len(tstates) or tstates[i] != nxt:
                    return False
        return i == len(tstates)

    def _advance(self, w: _Walk, exact: dict[int, bytes],
                 missing: dict[int, None], heap: list[int]) -> None:
        prev_off = self.layout.frame_previous
        frames = w.frames
        ranges = w.ranges
        addr = w.next_frame
        while addr:
            for lo, hi, buf in ranges:
                if lo <= addr and addr + _FRAME_READ <= hi:
                    off = addr - lo
                    break
            else:
                buf = exact.get(addr)
                if buf is None:
                    missing[addr] = None
                    w.next_frame = addr
                    return
                heap.append(addr)
                off = 0
            if w.prior is not None and w.tail < 0 and len(frames) < _SPLICE_DEPTH:
                prior_walk = w.prior.walk
                j = next((k for k in range(min(_SPLICE_DEPTH, len(prior_walk))) if prior_walk[k][0] == addr), -1)
                if j >= 0:
                    _a, pbuf, poff = prior_walk[j]
                    if buf[off:off + _FRAME_READ] == pbuf[poff:poff + _FRAME_READ]:
                        if self._splice(w, j, exact):
                            w.tail = j  # this frame and all outer ones: as last sample
                            heap.extend(a for k, (a, _) in zip(w.prior.heap_at, w.prior.heap) if k >= j)
                            break
                        w.prior = None  # the outer frames moved: walk them
            frames.append((addr, buf, off))
            if len(frames) > MAX_DEPTH:
                w.suspect = True
                break
            addr = _Q.unpack_from(buf, off + prev_off)[0]
        w.next_frame = 0
        w.done = True

    def _splice(self, w: _Walk, j: int, exact: dict[int, bytes]) -> bool:
        """Whether the frames outer of frame ``j`` of the thread's last sample (whose
        header the caller found unchanged) are byte for byte as they were: then they
        would walk and decode the same.

        Every datastack chunk must match up to the innermost of those frames it
        holds (outer frames lie below in a chunk); every heap frame among them must
        match its fresh read.
        """
        prior = w.prior
        n = len(prior.walk)
        fresh = {lo: b for lo, _hi, b in w.ranges}
        limits: dict[int, int] = {}  # chunk start -> bytes that must match
        for lo, hi, _b in prior.ranges:
            k = j
            while k < n and not (prior.walk[k][2] and lo <= prior.walk[k][0] < hi):
                k += 1  # the innermost spliced frame in this chunk (chunk frames have offset > 0)
            if k < n:
                limits[lo] = prior.walk[k][0] - lo + _FRAME_READ
        for lo, _hi, old in prior.ranges:
            limit = limits.get(lo)
            if limit is None:
                continue
            new = fresh.get(lo)
            if new is None or len(new) < limit or new[:limit] != old[:limit]:
                return False
        for k, (a, hb) in zip(prior.heap_at, prior.heap):
            if k >= j and exact.get(a) != hb:
                return False
        return True

    def _remember(self, w: _Walk, frames: list[Frame], ends: list[int], exact: dict[int, bytes]) -> _Memo:
        walk = w.frames
        heap_at = [k for k, (a, buf, off) in enumerate(walk) if not off and exact.get(a) == buf]
        prior = w.prior if w.tail >= 0 else None
        if prior is not None:
            j, shift = w.tail, len(walk) - w.tail
            heap_at += [k + shift for k in prior.heap_at if k >= j]
            walk = walk + prior.walk[j:]
        heap = [(walk[k][0], exact[walk[k][0]]) for k in heap_at]
        if prior is not None and len(prior.codes) <= len(frames) + 64:
            codes = dict(prior.codes)  # a superset of the spliced frames' codes
            codes.update((f.code_addr, None) for f in frames[:len(frames) - prior.ends[w.tail]])
        else:
            codes = dict.fromkeys(f.code_addr for f in frames)
        return _Memo(w.signature, frames, heap, codes, walk, ends, w.ranges, heap_at,
                     prior.splices + 1 if prior is not None else 0)

    def _frames_of(self, w: _Walk, valid_codes: dict[int, CodeInfo | None],
                   lenient: bool = False) -> tuple[list[Frame], list[int]]:
        """Decoded frames, innermost first, and for each walk position the number of
        decoded frames from there to the outermost (what a later splice needs)."""
        tail: list[Frame] = []
        tail_ends: list[int] = []
        if w.tail >= 0:
            prior = w.prior
            if not self._codes_changed or all(valid_codes.get(c) is not None for c in prior.codes):
                tail_ends = prior.ends[w.tail:]  # never empty: the splice point is a walk position
                tail = prior.frames[len(prior.frames) - tail_ends[0]:]
                self.spliced_frames += len(tail)
            else:  # a code object changed: decode the outer frames again (their bytes are in hand)
                w.frames.extend(prior.walk[w.tail:])
                w.tail = -1
        L = self.layout
        owner_at, code_at, instr_at = L.frame_owner, L.frame_code, L.frame_instr
        code_base = L.code_code_adaptive
        owner_gen, owner_cstack, owner_fo = self._owner_gen, self._owner_cstack, self._owner_frame_obj
        cache = self._frame_cache
        out: list[Frame] = []
        starts: list[int] = []
        last_owner = -1
        unpack = _Q.unpack_from
        for addr, buf, off in w.frames:
            starts.append(len(out))
            owner = buf[off + owner_at]
            if owner == owner_cstack:
                continue
            code_addr = unpack(buf, off + code_at)[0]
            instr = unpack(buf, off + instr_at)[0]
            key = (addr, code_addr, instr, owner)
            frame = cache.get(key)
            if frame is not None and valid_codes.get(code_addr) is not None:
                out.append(frame)
                last_owner = owner
                continue
            if owner == owner_fo or owner > 3:
                raise TornRead(f"frame {addr:#x} has owner {owner}")
            code = valid_codes.get(code_addr)
            if code is None:
                if self._v313 and owner != owner_gen and self.objects.type_name(code_addr) == "NoneType":
                    continue  # 3.13 trampoline frames execute None, not a code object
                raise TornRead(f"frame {addr:#x} does not point at a code object")
            offset = instr - (code_addr + code_base)
            if owner != owner_gen and offset < 2 * code.firsttraceable:
                continue  # not started yet (_PyFrame_IsIncomplete)
            if offset > 1 << 24:
                raise TornRead(f"frame {addr:#x} instruction pointer outside its code")
            frame = cache[key] = self._new_frame(code, addr, code_addr, instr, owner)
            out.append(frame)
            last_owner = owner
        if w.tail >= 0:  # the outer frames were checked when they were walked
            total = len(out) + len(tail)
            return out + tail, [total - k for k in starts] + tail_ends
        if last_owner == owner_gen and not w.suspect:
            # a thread's outermost frame is never a coroutine's: a coroutine suspended mid-walk
            raise TornRead("chain ends on a coroutine frame")
        if w.frames and not out and not w.suspect:
            raise TornRead("only entry frames: caught between an entry frame and its first Python frame")
        if w.frames and not w.suspect:
            # Every thread's stack starts where C entered the eval loop: an entry frame
            # (3.12+: owned by the C stack; 3.11: flagged is_entry). Anything else means
            # a frame's `previous` was read mid-update and the chain is cut short.
            _addr, buf, off = w.frames[-1]
            if self._entry_flag >= 0:
                entry = buf[off + self._entry_flag] != 0
            else:
                entry = buf[off + owner_at] == owner_cstack
            if not entry:
                raise TornRead("chain does not end at an entry frame")
        total = len(out)
        return out, [total - k for k in starts]

    def _code(self, addr: int, head: bytes | None) -> CodeInfo | None:
        if head is None:
            return None
        info = self._codes.get(addr)
        if info is not None and info.header == head:
            return info
        return self._load_code(addr, head)

    def _load_code(self, addr: int, head: bytes) -> CodeInfo | None:
        L = self.layout
        type_addr = _Q.unpack_from(head, L.object_type - 8)[0]
        if self._code_type and type_addr != self._code_type:
            return None
        if not self._code_type:
            if self.objects.type_name(type_addr) != "type" and self.objects.type_name(addr) != "code":
                return None
            if self.objects.type_name(addr) != "code":
                return None
            self._code_type = type_addr
        try:
            raw = self.mem.read(addr, self._code_read)
        except MemoryReadError:
            return None
        if raw[8:8 + len(head)] != head:
            return None  # changed between the two reads

        def s(off: int) -> str:
            v = self.objects.string(_Q.unpack_from(raw, off)[0])
            return v if isinstance(v, str) else "<?>"

        table_addr = _Q.unpack_from(raw, L.code_linetable)[0]
        table = self.objects.decode(table_addr, 0)
        info = CodeInfo(
            address=addr,
            header=head,
            name=s(L.code_name),
            qualname=s(L.code_qualname),
            filename=s(L.code_filename),
            firstlineno=struct.unpack_from("<i", raw, L.code_firstlineno)[0],
            linetable=table if isinstance(table, bytes) else b"",
            firsttraceable=struct.unpack_from("<i", raw, L.code_firsttraceable)[0],
            nlocalsplus=struct.unpack_from("<i", raw, L.code_nlocalsplus)[0],
            localsplusnames_addr=_Q.unpack_from(raw, L.code_localsplusnames)[0],
            localspluskinds_addr=_Q.unpack_from(raw, L.code_localspluskinds)[0],
        )
        if len(self._codes) > 65536:
            self._codes.clear()
        self._codes[addr] = info
        return info

    def code_info(self, addr: int) -> CodeInfo | None:
        """Code object metadata at ``addr`` (validated), or None."""
        try:
            head = self.mem.read(addr + 8, self._code_head)
        except MemoryReadError:
            return None
        return self._code(addr, head)

    # -- locals -----------------------------------------------------------
    def frame_locals_at(self, frame: Frame, depth: int = 0) -> dict[str, Value]:
        """Locals of a frame known only by address (e.g. a suspended coroutine)."""
        if frame.code_addr not in self._codes:
            self.code_info(frame.code_addr)
        return self.frame_locals(frame, depth)

    def frame_locals(self, frame: Frame, depth: int = 0) -> dict[str, Value]:
        """Decoded locals of a frame (cells dereferenced; unset slots left out).

        Values are read now, not at sample time: locals of a running frame change.
        """
        L = self.layout
        code = self._codes.get(frame.code_addr)
        if code is None or not 0 <= code.nlocalsplus <= 4096:
            return {}
        if code.local_names is None:
            names = self.objects.sequence(code.localsplusnames_addr)
            kinds = self.objects.decode(code.localspluskinds_addr, 0)
            if not isinstance(names, list) or not isinstance(kinds, bytes):
                return {}
            code.local_names = [n if isinstance(n, str) else "?" for n in (self.objects.string(a) for a in names)]
            code.local_kinds = kinds
        try:
            raw = self.mem.read(frame.frame_addr + L.frame_localsplus, 8 * code.nlocalsplus) if code.nlocalsplus else b""
        except MemoryReadError:
            return {}
        out: dict[str, Value] = {}
        for i, name in enumerate(code.local_names[:code.nlocalsplus]):
            ptr = _Q.unpack_from(raw, 8 * i)[0]
            if not ptr:
                continue
            value = self.objects.decode(ptr, depth)
            out[name] = value
        return out

    # -- thread names -----------------------------------------------------
    def thread_names(self) -> dict[int, str]:
        """``threading`` names by thread ident, read from the target's ``threading._active``."""
        active = self.module_global("threading", "_active")
        if not isinstance(active, int):
            return {}
        items = self.objects.dict_items(active)
        if not isinstance(items, list):
            return {}
        out = {}
        for k, v in items:
            ident = self.objects.decode(k, 0)
            name_addr = self.objects.attribute(v, "_name")
            if isinstance(ident, int) and isinstance(name_addr, int):
                name = self.objects.string(name_addr)
                if isinstance(name, str):
                    out[ident] = name
        return out

    # -- modules ----------------------------------------------------------
    def modules_dict(self) -> int | None:
        """Address of ``sys.modules`` of the main interpreter."""
        if not self._interp_addrs:
            try:
                self._read_thread_list()
            except (MemoryReadError, TornRead):
                return None
        if not self._interp_addrs:
            return None
        p = self.objects.pointer(self._interp_addrs[-1] + self.layout.interp_modules)
        return p if isinstance(p, int) and p else None

    def module(self, name: str) -> int | None:
        mods = self.modules_dict()
        if mods is None:
            return None
        found = self.objects.item(mods, name)
        return found if isinstance(found, int) else None

    def module_global(self, module: str, name: str) -> int | None:
        mod = self.module(module)
        if mod is None:
            return None
        found = self.objects.attribute(mod, name)
        return found if isinstance(found, int) else None
