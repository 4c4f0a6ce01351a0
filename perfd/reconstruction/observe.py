"""Find node calls and worker threads' nodes in one sample.

Node calls are node-entry coroutine frames (profile: qualname + file suffix)
found in the await chains of the target's tasks — where a call spends almost
all its life, suspended — or on a thread stack while it runs. Their node id,
node object and payload come from the frame's locals, read from the bytes the
chain follower already holds; decoded values are cached by object address
and re-checked by pointer, never trusted across calls.

Worker threads (``asyncio.to_thread``) are tied to a node when one of their
frames has a node object as ``self``: the node's own method is running there.
Those methods that also have the profile's points local are remembered
(``point_slots``): the Open3D op probe reads the call's points there.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import replace

from perfd.cpython.chains import AwaitChains, Chain, Level
from perfd.cpython.objects import Failure
from perfd.cpython.sample import Frame, Sample, ThreadStack
from perfd.cpython.stacks import StackReader
from perfd.errors import MemoryReadError
from perfd.profile import AppProfile
from perfd.reconstruction.app_state import point_count
from perfd.reconstruction.calls import CallObservation
from perfd.uprobes.events import SIZED_NDARRAY, SIZED_VAR

_Q = struct.Struct("<Q")
POINT_SLOTS_MAX = 1024  # the probe's map size
# Types whose len() the op probe can take: (module, name) -> how
POINT_TYPES = {("numpy", "ndarray"): SIZED_NDARRAY, ("builtins", "list"): SIZED_VAR, ("builtins", "tuple"): SIZED_VAR}


def point_types(stacks: StackReader) -> dict[int, int]:
    """Type object address -> SIZED_*, for the POINT_TYPES the target has imported."""
    return {addr: how for (module, name), how in POINT_TYPES.items() if (addr := stacks.module_global(module, name))}


class NodeCallFinder:
    def __init__(self, profile: AppProfile, stacks: StackReader) -> None:
        self.entry = profile.node_entry
        self.points_local = profile.node.points_local
        self.point_slots: dict[int, int] = {}  # code of a method (self first) -> index of its points local
        self.stacks = stacks
        self._is_entry: dict[int, bool] = {}  # code address -> node-entry?
        self._slots: dict[int, tuple[int, int, int]] = {}  # code address -> (id, node, payload) local indices
        self.levels: dict[tuple[int, int], Level] = {}  # call key -> the level it was read from
        self._strings: dict[int, str] = {}  # node-id str objects (immutable; owned by the registry)
        self._self_slot: dict[int, int | None] = {}  # code address -> index of a "self" local
        # the last thread_nodes read some self from the target itself (not all came with
        # the sample): its look at the threads ended then, not when the sample was read
        self.read_selves = False
        self._found: dict[int, tuple[int, list[CallObservation]]] = {}  # root -> (chain version, its calls)
        self._last: tuple[tuple, list[CallObservation]] = ((), [])  # (every chain's version, calls) of the last look

    def is_entry(self, frame: Frame) -> bool:
        known = self._is_entry.get(frame.code_addr)
        if known is None:
            known = frame.qualname == self.entry.qualname and frame.filename.endswith(self.entry.file_suffix)
            self._is_entry[frame.code_addr] = known
        return known

    # -- node calls ---------------------------------------------------------
    def calls(self, chains: dict[int, Chain]) -> list[CallObservation]:
        """Node calls in these chains, each with the node call awaiting it (its
        parent): the one above it in its chain, or — for a ``gather`` child's
        own task — the innermost node call of the chain that gathered it.

        Most looks find no chain walked since the last one: the last answer
        (a list its callers only read) is returned as it is."""
        versions = tuple([(root, chain.version) for root, chain in chains.items()])
        if versions == self._last[0]:
            return self._last[1]
        per_chain: dict[int, list[CallObservation]] = {}
        known = self._found
        for root, chain in chains.items():
            cached = known.get(root)
            if cached is not None and cached[0] == chain.version:
                per_chain[root] = cached[1]  # not walked since: same levels, same calls (versions are unique)
                continue
            found = []
            for level in chain.levels:
                if self.is_entry(level.frame):
                    obs = self._from_level(chain, level)
                    if obs is not None:
                        found.append(obs)
            per_chain[root] = found
            known[root] = (chain.version, found)
        if len(known) > len(chains):
            for gone in [r for r in known if r not in chains]:
                del known[gone]
        gathered_by: dict[int, tuple[int, int]] = {}
        for root, chain in chains.items():
            if chain.children and per_chain[root]:
                for child in chain.children:
                    gathered_by[child] = per_chain[root][-1].key
        out: list[CallObservation] = []
        for root, found in per_chain.items():
            parent = gathered_by.get(root)
            for obs in found:
                out.append(replace(obs, parent=parent))
                parent = obs.key
        if len(self.levels) > len(out):
            current = {o.key for o in out}
            self.levels = {k: v for k, v in self.levels.items() if k in current}
        self._last = (versions, out)
        return out

    def running_entry_gens(self, sample: Sample) -> set[int]:
        """Coroutines of node-entry frames running on a thread right now (not yet in any chain)."""
        return {f.gen_addr for t in sample.threads for f in t.frames if f.gen_addr and self.is_entry(f)}

    def _from_level(self, chain: Chain, level: Level) -> CallObservation | None:
        if level.state == "created":
            return None  # made (e.g. by gather) but not started: the call begins when it runs
        slots = self._local_slots(level.frame)
        if slots is None:
            return None
        id_ptr, node_ptr, payload_ptr = (chain.slot(level, i) for i in slots)
        if not id_ptr or not payload_ptr:
            return None  # locals not bound yet: the call has barely started
        node_id = self._string(id_ptr)
        if node_id is None:
            return None
        key = (level.gen, payload_ptr)
        self.levels[key] = level
        return CallObservation(key, node_id, None, node_ptr, chain.root)

    def point_count(self, key: tuple[int, int], chains: AwaitChains) -> int | None:
        """Points in the payload of call ``key``; read once, when it is born
        (payloads are per call). None when its frame moved on meanwhile: the
        payload may have been freed and its memory reused by another one."""
        points = point_count(self.stacks, key[1], self.entry.points_key)
        level = self.levels.get(key)
        return points if level is not None and chains.holds(level) else None

    def _local_slots(self, frame: Frame) -> tuple[int, int, int] | None:
        slots = self._slots.get(frame.code_addr)
        if slots is None:
            self.stacks.frame_locals_at(frame, 0)  # loads the code's local names
            code = self.stacks.code_info(frame.code_addr)
            names = code.local_names if code else None
            if not names:
                return None
            e = self.entry
            try:
                slots = (names.index(e.node_id_local), names.index(e.node_local), names.index(e.payload_local))
            except ValueError:
                return None
            self._slots[frame.code_addr] = slots
        return slots

    def _string(self, addr: int) -> str | None:
        s = self._strings.get(addr)
        if s is None:
            value = self.stacks.objects.string(addr)
            if isinstance(value, Failure):
                return None
            if len(self._strings) > 4096:
                self._strings.clear()
            s = self._strings[addr] = value
        return s

    # -- worker threads -------------------------------------------------------
    def thread_nodes(self, threads: Iterable[ThreadStack], node_addrs: frozenset[int] | set[int]) -> dict[int, int]:
        """native thread id -> node object address, for threads running a node's method.

        ``self`` is a method's first local: the native walker read it with each
        frame; for the Python walker's samples it is read now."""
        self.read_selves = False
        if not node_addrs:
            return {}
        out: dict[int, int] = {}
        wanted: list[tuple[int, int, int]] = []  # (native tid, frame addr, slot)
        for t in threads:
            firsts = t.first_locals
            if firsts is not None and len(firsts) == len(t.frames):
                ptr = next((p for f, p in zip(t.frames, firsts) if p in node_addrs and self._self_index(f) == 0), None)
                if ptr is not None:
                    out[t.native_thread_id] = ptr
                continue
            for f in t.frames:
                slot = self._self_index(f)
                if slot is not None:
                    wanted.append((t.native_thread_id, f.frame_addr, slot))
        if not wanted:
            return out
        off = self.stacks.layout.frame_localsplus
        self.read_selves = True
        try:
            bufs = self.stacks.mem.read_many([(fa + off + 8 * slot, 8) for _, fa, slot in wanted])
        except MemoryReadError:
            return out
        for (tid, _, _), buf in zip(wanted, bufs):
            if buf is not None and tid not in out:
                ptr = _Q.unpack(buf)[0]
                if ptr in node_addrs:
                    out[tid] = ptr
        return out

    def _self_index(self, frame: Frame) -> int | None:
        if frame.code_addr in self._self_slot:
            return self._self_slot[frame.code_addr]
        index = None
        code = self.stacks.code_info(frame.code_addr)
        if code is not None:
            if code.local_names is None:
                self.stacks.frame_locals_at(frame, 0)
            names = code.local_names or []
            if names and names[0] == "self":
                index = 0
                if self.points_local in names and len(self.point_slots) < POINT_SLOTS_MAX:
                    self.point_slots[frame.code_addr] = names.index(self.points_local)
        self._self_slot[frame.code_addr] = index
        return index
