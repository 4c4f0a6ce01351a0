"""Generator and coroutine objects of a live target: state, frame, what they await.

A suspended coroutine is not on any thread's stack; it is reachable only
through its object (``frame address - gi_iframe``). Its frame's value-stack
top is the object it is delegating to (``await``/``yield from``), which is how
an await chain is followed down to the innermost awaited object.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from perfd.cpython.layouts import Layout
from perfd.cpython.memory import ProcessMemory
from perfd.cpython.sample import Frame
from perfd.errors import MemoryReadError

if TYPE_CHECKING:
    from perfd.cpython.stacks import CodeInfo

_Q = struct.Struct("<Q")
_FRAME_READ = 80
STATES = ("created", "suspended", "running", "completed", "cleared")


@dataclass(frozen=True)
class GeneratorView:
    address: int
    state: str  # one of STATES, or "unknown"
    frame: Frame | None  # None once completed/cleared
    delegate: int  # object on the frame's stack top while suspended in await/yield from, else 0


class GeneratorReader:
    """Reads generator/coroutine objects with the interpreter's layout."""

    def __init__(self, mem: ProcessMemory, layout: Layout, code_info) -> None:  # noqa: ANN001 - StackReader.code_info
        self.mem = mem
        self.L = layout
        self._code_info = code_info
        L = layout
        self._states = {
            L.gen_state_created: "created",
            L.gen_state_suspended: "suspended",
            L.gen_state_executing: "running",
            L.gen_state_completed: "completed",
            L.gen_state_cleared: "cleared",
        }
        if L.get("gen.state_suspended_yield_from") is not None:
            self._states[L.gen_state_suspended_yield_from] = "suspended"

    def state_of_byte(self, value: int) -> str:
        signed = value - 256 if value > 127 else value
        return self._states.get(signed, "unknown")

    def states(self, addrs: list[int]) -> dict[int, str]:
        """State of many generators in one read ("gone" when unreadable)."""
        bufs = self.mem.read_many([(a + self.L.gen_frame_state, 1) for a in addrs])
        return {a: (self.state_of_byte(b[0]) if b is not None else "gone") for a, b in zip(addrs, bufs)}

    def frame(self, gen: int, hdr: bytes) -> tuple[Frame, CodeInfo] | None:
        """The frame embedded in generator ``gen``, decoded from its header bytes
        ``hdr`` (read from the frame's address), with its code; None if the code
        object is not valid."""
        L = self.L
        code_addr = _Q.unpack_from(hdr, L.frame_code)[0]
        code = self._code_info(code_addr)
        if code is None:
            return None
        offset = _Q.unpack_from(hdr, L.frame_instr)[0] - (code_addr + L.code_code_adaptive)
        return Frame(code.name, code.qualname, code.filename, code.line(offset), gen + L.gen_iframe, code_addr,
                     hdr[L.frame_owner], gen), code

    def view(self, gen: int) -> GeneratorView:
        """State, frame and delegate of one generator/coroutine. Raises ``MemoryReadError``."""
        L = self.L
        state_raw = self.mem.read(gen + L.gen_frame_state, 1)[0]
        state = self.state_of_byte(state_raw)
        if state in ("completed", "cleared", "unknown"):
            return GeneratorView(gen, state, None, 0)
        frame_addr = gen + L.gen_iframe
        hdr = self.mem.read(frame_addr, _FRAME_READ)
        found = self.frame(gen, hdr)
        if found is None:
            return GeneratorView(gen, "unknown", None, 0)
        frame, code = found
        delegate = 0
        if state == "suspended":
            stacktop = struct.unpack_from("<i", hdr, L.frame_stacktop)[0]
            if 0 < stacktop <= code.nlocalsplus + 4096:
                try:
                    delegate = _Q.unpack(self.mem.read(frame_addr + L.frame_localsplus + 8 * (stacktop - 1), 8))[0]
                except MemoryReadError:
                    delegate = 0
        return GeneratorView(gen, state, frame, delegate)
