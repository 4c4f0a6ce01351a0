"""The one event type both backends produce, and entry/return pairing.

An event is one completed call of a probed function on one thread. Pairing
matches a return to its entry by stack pointer (a function returns with
``sp == entry sp + 8`` on x86-64), so a call whose return was never seen — a
C++ exception unwinding through it, a probe attached mid-call — is discarded
instead of shifting every later pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

RETURN_SP_DELTA = 8  # the return address popped by ``ret``
SCAN_FRAMES = 8  # frames below the top searched for a return's entry (as the BPF side)


@dataclass(frozen=True, slots=True)
class OpEvent:
    tid: int
    op: str
    start_ns: int  # CLOCK_MONOTONIC
    duration_ns: int
    depth: int  # probed calls already open on this thread (0 = outermost)
    owner: int = 0  # watched object (a node) found in the thread's Python frames at entry; 0: none/not walked
    points: int | None = None  # len() of the owner's points local at entry (bcc); None: not read


SIZED_NDARRAY = 1  # counted by its first dimension
SIZED_VAR = 2  # counted by ob_size (list, tuple)


@dataclass(frozen=True)
class FrameWatch:
    """What the entry probe looks for in the calling thread's Python frames."""

    tstates: Mapping[int, int] = field(default_factory=dict)  # native thread id -> PyThreadState
    owners: frozenset[int] = frozenset()  # objects whose methods' op calls name them (DAG nodes)
    point_slots: Mapping[int, int] = field(default_factory=dict)  # code object -> index of its points local
    point_types: Mapping[int, int] = field(default_factory=dict)  # type object -> SIZED_NDARRAY / SIZED_VAR


@dataclass
class _Frame:
    op_id: int
    sp: int
    start_ns: int
    owner: int = 0


@dataclass
class PairingStats:
    unmatched_returns: int = 0  # return with no entry seen (probe attached mid-call)
    abandoned_entries: int = 0  # entry whose return never came (unwound)
    lost_events: int = 0  # dropped by the kernel: perfd read too slowly (buffer full)


@dataclass
class CallPairer:
    """Per-thread stacks of open probed calls (sans-IO: fed entries and returns)."""

    ops: list[str]
    max_depth: int = 32
    stats: PairingStats = field(default_factory=PairingStats)
    _stacks: dict[int, list[_Frame]] = field(default_factory=dict)

    def entry(self, tid: int, op_id: int, sp: int, ts_ns: int, owner: int = 0) -> None:
        stack = self._stacks.setdefault(tid, [])
        # A frame at or below this call's stack pointer cannot be a live caller
        # (stacks grow down): its return was lost. Drop it (as the BPF side does).
        while stack and stack[-1].sp <= sp:
            stack.pop()
            self.stats.abandoned_entries += 1
        if len(stack) >= self.max_depth:
            stack.pop(0)
            self.stats.abandoned_entries += 1
        stack.append(_Frame(op_id, sp, ts_ns, owner))

    def ret(self, tid: int, sp: int, ts_ns: int) -> OpEvent | None:
        stack = self._stacks.get(tid)
        want = sp - RETURN_SP_DELTA
        if stack:
            for i in range(len(stack) - 1, max(-1, len(stack) - 1 - SCAN_FRAMES), -1):
                if stack[i].sp == want:
                    frame = stack[i]
                    self.stats.abandoned_entries += len(stack) - 1 - i
                    del stack[i:]
                    return OpEvent(tid, self.ops[frame.op_id], frame.start_ns, max(0, ts_ns - frame.start_ns), i,
                                   frame.owner)
        self.stats.unmatched_returns += 1
        return None

    def open_calls(self) -> int:
        return sum(len(s) for s in self._stacks.values())
