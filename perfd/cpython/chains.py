"""Await chains kept current at sampling rate, at the cost of one read.

Enumerating asyncio tasks is expensive (a WeakSet walk and type checks, tens
of ms on a busy app); following a chain level by level is a few reads per
level. Neither fits a 250 Hz budget. But between two samples almost every
chain is unchanged, and a level is unchanged exactly when its generator's
state, instruction pointer, stack depth and the object on its stack top (what
it awaits) are — all of which lie in one contiguous span per level (the
generator's state byte, its embedded frame header and the frame's slots).
So every sample reads all known levels of all chains in ONE multi-part
``process_vm_readv``, and only the levels below the first difference are
walked again. Roots are task coroutines (from a slow enumeration) and the
children of a ``gather`` found at a chain's leaf.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field

from perfd.cpython.generators import GeneratorReader
from perfd.cpython.memory import ProcessMemory
from perfd.cpython.objects import Failure
from perfd.cpython.sample import Frame
from perfd.cpython.stacks import StackReader
from perfd.cpython.tasks import TaskLayout
from perfd.errors import MemoryReadError

_Q = struct.Struct("<Q")
_I = struct.Struct("<i")
MAX_DEPTH = 256
MAX_SLOTS = 512  # frames with more locals+stack than this are not followed (bounded reads)
_COROUTINE_TYPES = ("coroutine", "generator", "async_generator")
GATHER_TYPE = "._GatheringFuture"  # asyncio.tasks._GatheringFuture, by its type name
_VERSIONS = itertools.count(1)  # chain versions, unique across chains: (root, version) names one walk


class _Unreadable(Exception):
    """A coroutine level could not be read consistently this time."""


@dataclass(slots=True)
class Level:
    """One coroutine of a chain, with the bytes that say whether it moved."""

    gen: int
    frame: Frame
    state: str
    instr: int
    stacktop: int
    delegate: int
    slots: bytes  # localsplus[0:stacktop] as read (locals, then the value stack)


@dataclass
class Chain:
    root: int
    levels: list[Level] = field(default_factory=list)
    leaf: int = 0  # innermost awaited non-coroutine object (a future), 0 if none
    children: tuple[int, ...] = ()  # coroutines of a gather at the leaf
    # False when the last walk stopped on a read that failed or caught an object
    # mid-change: the levels below are unknown (not absent), and the next check
    # walks on from the innermost level read instead of trusting it unchanged
    complete: bool = True
    version: int = 0  # new on every walk: derived results keyed by it stay valid while it holds
    running: bool = False  # a level is running (on a thread's stack): set by each walk

    def slot(self, level: Level, index: int) -> int:
        """Pointer in ``localsplus[index]`` of ``level`` (0 if unset or out of range)."""
        if 0 <= index and 8 * (index + 1) <= len(level.slots):
            return _Q.unpack_from(level.slots, 8 * index)[0]
        return 0


class AwaitChains:
    """Follows the await chains of a changing set of root coroutines."""

    def __init__(self, stacks: StackReader, tasks: TaskLayout) -> None:
        self.stacks = stacks
        self.objects = stacks.objects
        self.mem = stacks.mem
        self.tl = tasks
        L = stacks.layout
        self.L = L
        self.gens = GeneratorReader(stacks.mem, L, stacks.code_info)
        self._start = min(L.gen_frame_state, L.gen_iframe)
        self._state_at = L.gen_frame_state - self._start
        self._frame_at = L.gen_iframe - self._start
        self._slots_at = self._frame_at + L.frame_localsplus
        self.chains: dict[int, Chain] = {}
        self.rewalks = 0  # levels walked again (cost accounting for tests and benches)

    # -- public -----------------------------------------------------------
    def refresh(self, roots: set[int]) -> dict[int, Chain]:
        """Bring the chains of ``roots`` (and of gather children under them) up to date."""
        wanted = set(roots) | self.child_roots()
        for gone in [r for r in self.chains if r not in wanted]:
            del self.chains[gone]
        self._check(list(self.chains.values()))
        # new roots, then gather children found at leaves (walked now, not a sample later)
        for _ in range(2):
            for root in (set(roots) | self.child_roots()) - self.chains.keys():
                chain = Chain(root)
                self._walk(chain, root)
                self.chains[root] = chain
        return self.chains

    def child_roots(self) -> set[int]:
        return {child for c in self.chains.values() for child in c.children}

    # -- steady state: one read per sample ------------------------------------
    def _part(self, level: Level) -> tuple[int, int]:
        return (level.gen + self._start, self._slots_at + 8 * max(level.stacktop, 0))

    def _check(self, chains: list[Chain]) -> None:
        """Read each chain's innermost level; re-read and re-walk only chains where it moved.

        An outer coroutine cannot move while the one it awaits stays suspended
        (resuming it means sending into the whole chain), so an unchanged
        innermost level proves the chain unchanged: the steady state is one
        part per chain in one syscall.
        """
        for c in chains:
            if not c.levels:
                self._walk(c, c.root)
        live = [c for c in chains if c.levels]
        if not live:
            return
        bufs = self.mem.read_many([self._part(c.levels[-1]) for c in live])
        moved = [c for c, buf in zip(live, bufs)
                 if not c.complete or buf is None or not self._same(c.levels[-1], buf)]
        if not moved:
            return
        bufs = self.mem.read_many([self._part(lv) for c in moved for lv in c.levels])
        i = 0
        for chain in moved:
            depths = len(chain.levels)
            changed_at = next((d for d in range(depths)
                               if bufs[i + d] is None or not self._same(chain.levels[d], bufs[i + d])), depths - 1)
            i += depths
            start = chain.levels[changed_at].gen
            del chain.levels[changed_at:]
            chain.leaf, chain.children = 0, ()
            self._walk(chain, start)

    def _head(self, buf: bytes) -> tuple[str, int, int]:
        """(state, instruction, stack depth) from a level's header bytes as read
        from ``gen + self._start``: what says whether a coroutine moved."""
        L = self.L
        return (self.gens.state_of_byte(buf[self._state_at]),
                _Q.unpack_from(buf, self._frame_at + L.frame_instr)[0],
                _I.unpack_from(buf, self._frame_at + L.frame_stacktop)[0])

    def _same(self, level: Level, buf: bytes) -> bool:
        return self._head(buf) == (level.state, level.instr, level.stacktop) and buf[self._slots_at:] == level.slots

    # -- walking ----------------------------------------------------------
    def _walk(self, chain: Chain, obj: int) -> None:
        chain.complete = True
        chain.version = next(_VERSIONS)
        seen = {lv.gen for lv in chain.levels}
        while obj and obj not in seen and len(chain.levels) < MAX_DEPTH:
            seen.add(obj)
            kind = self.objects.type_name(obj)
            if isinstance(kind, Failure):
                chain.complete = False
                break
            if kind in _COROUTINE_TYPES:
                try:
                    level = self._level(obj)
                except _Unreadable:
                    chain.complete = False
                    break
                if level is None:
                    break  # finished: whatever awaited it resumes next
                chain.levels.append(level)
                obj = level.delegate
                continue
            if kind == self.tl.future_iter_type:
                fut = self.objects.pointer(obj + self.tl.future_iter_future)
                obj = fut if isinstance(fut, int) else 0
            chain.leaf = obj
            chain.children = self._gather_children(obj) if obj else ()
            break
        chain.running = any(lv.state == "running" for lv in chain.levels)
        self.rewalks += 1

    def _level(self, gen: int) -> Level | None:
        """One coroutine level, its state and stack depth from ONE read of its
        header (separate reads tear: a coroutine that starts running between
        them shows "suspended" with the executing frame's stack depth of -1).

        None when it has finished; raises ``_Unreadable`` when it cannot be read
        consistently now (a later look will).
        """
        try:
            head = self.mem.read(gen + self._start, self._slots_at)
        except MemoryReadError:
            raise _Unreadable from None
        state, instr, stacktop = self._head(head)
        if state in ("completed", "cleared"):
            return None
        if state == "unknown":
            raise _Unreadable
        frame_hdr = head[self._frame_at:]
        found = self.gens.frame(gen, frame_hdr)
        if found is None:
            raise _Unreadable
        frame, code = found
        if state != "suspended" or stacktop < 0:
            # running (a frame's saved stack depth is stale while it executes):
            # its locals are always current, so read exactly those
            state = "running" if state == "suspended" else state
            stacktop = code.nlocalsplus
        if not 0 <= stacktop <= MAX_SLOTS:
            raise _Unreadable
        try:
            slots = self.mem.read(gen + self._start + self._slots_at, 8 * stacktop) if stacktop else b""
            # A suspended coroutine may resume, finish and free its locals between
            # the two reads: its slots are then stale pointers (to objects whose
            # memory is already reused). Still suspended at the same instruction
            # after the slots were read means they were its live locals.
            if state == "suspended" and not self._still(gen, instr, stacktop):
                raise _Unreadable
        except MemoryReadError:
            raise _Unreadable from None
        delegate = _Q.unpack_from(slots, 8 * (stacktop - 1))[0] if state == "suspended" and stacktop else 0
        return Level(gen, frame, state, instr, stacktop, delegate, slots)

    def holds(self, level: Level) -> bool:
        """Whether ``level`` still holds the locals it was read with: objects
        reached through them since are then known to have been alive."""
        try:
            if level.state == "suspended":
                return self._still(level.gen, level.instr, level.stacktop)
            return self.gens.states([level.gen])[level.gen] in ("running", "suspended")
        except MemoryReadError:
            return False

    def _still(self, gen: int, instr: int, stacktop: int) -> bool:
        """Whether ``gen`` is suspended at ``instr`` with ``stacktop`` slots now."""
        return self._head(self.mem.read(gen + self._start, self._slots_at)) == ("suspended", instr, stacktop)

    def _gather_children(self, fut: int) -> tuple[int, ...]:
        kind = self.objects.type_name(fut)
        if isinstance(kind, Failure) or not kind.endswith(GATHER_TYPE):
            return ()
        children = self.objects.attribute(fut, "_children")
        if isinstance(children, Failure):
            return ()
        tasks = self.objects.sequence(children)
        if isinstance(tasks, Failure):
            return ()
        return tuple(task_coroutines(self.mem, self.tl, tasks[:MAX_DEPTH]))


def task_coroutines(mem: ProcessMemory, layout: TaskLayout, tasks: list[int]) -> list[int]:
    """The coroutines these C Tasks drive, in one read (unreadable ones left out)."""
    bufs = mem.read_many([(t + layout.coro, 8) for t in tasks])
    return [c for c in (_Q.unpack(b)[0] for b in bufs if b is not None) if c]
