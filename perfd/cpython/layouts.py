"""The one owner of per-version CPython struct layouts.

3.11 and 3.12 come from ``layouts_generated`` (compiled from the internal
headers by tools/gen_layouts.py). On 3.13+ the target itself carries
``_Py_DebugOffsets`` at the start of ``_PyRuntime``; every field it has wins
over the generated value, so a 3.13.x patch release that moved a field is
still read correctly. Nothing outside this module spells an offset.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from perfd.cpython.discovery import Interpreter
from perfd.cpython.layouts_generated import LAYOUTS
from perfd.cpython.memory import ProcessMemory
from perfd.errors import MemoryReadError, UnsupportedPython

_DEBUG_COOKIE = b"xdebugpy"


@dataclass
class Layout:
    """Offsets (bytes) and constants for one interpreter, keyed like ``"frame.owner"``.

    Hot paths read attributes: ``layout.frame_owner`` is ``offsets["frame.owner"]``.
    """

    minor: tuple[int, int]
    offsets: dict[str, int]
    from_debug_offsets: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for key, value in self.offsets.items():
            setattr(self, key.replace(".", "_"), value)

    def get(self, key: str, default: int | None = None) -> int | None:
        return self.offsets.get(key, default)

    def __getattr__(self, name: str) -> int:  # only reached for fields this version lacks
        raise AttributeError(f"CPython {self.minor[0]}.{self.minor[1]} layout has no {name!r}")


def supported_minors() -> list[str]:
    return sorted(LAYOUTS)


def layout_for(interp: Interpreter, mem: ProcessMemory | None = None) -> Layout:
    """Layout of ``interp``; on 3.13+ refined from the target's ``_Py_DebugOffsets``."""
    minor = f"{interp.version.major}.{interp.version.minor}"
    generated = LAYOUTS.get(minor)
    if generated is None:
        raise UnsupportedPython(
            f"PID {interp.pid} runs Python {interp.version}; the stack reader supports CPython "
            + ", ".join(supported_minors())
        )
    offsets = _plain(generated)
    debug = {k[len("debug:"):]: int(v) for k, v in generated.items() if k.startswith("debug:")}
    used: list[str] = []
    if debug and mem is not None:
        used = _apply_debug_offsets(offsets, debug, interp, mem)
    return Layout((interp.version.major, interp.version.minor), offsets, used)


def _plain(generated: dict) -> dict[str, int]:
    return {k: int(v) for k, v in generated.items() if not k.startswith(("_", "debug:"))}


def generated_layout(minor: str) -> Layout:
    """The generated layout of ``"3.X"`` without a target (checks, tools)."""
    major, _, low = minor.partition(".")
    return Layout((int(major), int(low)), _plain(LAYOUTS[minor]))


def _apply_debug_offsets(offsets: dict[str, int], where: dict[str, int], interp: Interpreter,
                         mem: ProcessMemory) -> list[str]:
    size = where.pop("size")
    version_at = where.pop("version")
    free_threaded_at = where.pop("free_threaded", None)
    try:
        raw = mem.read(interp.runtime_addr, size)
    except MemoryReadError:
        return []
    if raw[:8] != _DEBUG_COOKIE:
        return []
    (version,) = struct.unpack_from("<Q", raw, version_at)
    if (version >> 16) != ((interp.version.major << 8) | interp.version.minor):
        return []  # a struct from another minor: its field order is not ours
    if free_threaded_at is not None and struct.unpack_from("<Q", raw, free_threaded_at)[0]:
        # no GIL, other object headers: nothing of this reader's holds there
        raise UnsupportedPython(f"PID {interp.pid} runs a free-threaded CPython {interp.version} (no GIL); "
                                "perfd reads the default (GIL) builds only")
    used = []
    for key, at in where.items():
        (value,) = struct.unpack_from("<Q", raw, at)
        offsets[key] = value
        used.append(key)
    return used


@dataclass(frozen=True)
class FrameWalk:
    """What a probe running on a target thread needs to walk its Python frames:
    from the thread's state to its innermost frame, then frame to caller, and
    each frame's first local (``self`` of a method) and owner byte."""

    tstate_to_frame: tuple[int, ...]  # offsets dereferenced in turn from a thread state
    previous: int
    localsplus: int
    owner: int
    owner_cstack: int  # owner value of C-stack shim frames (no locals); -1: this version has none
    code: int = -1  # the frame's code object
    object_type: int = 8  # ob_type
    var_size: int = 16  # ob_size of a variable-size object (list, tuple)
    tstate_native_tid: int = -1  # the thread state's OS thread id
    # Absolute address of the main GIL's holder (a PyThreadState*) in the target;
    # 0: unknown. A probe that cannot look up its own thread's state (no code to
    # run, no TLS) can start from it, checking the holder's thread id is its own.
    gil_holder_addr: int = 0


def frame_walk(layout: Layout, runtime_addr: int = 0) -> FrameWalk:
    """Frame offsets for ``layout``; with ``runtime_addr`` (the target's
    ``_PyRuntime``) also where the GIL's holder is."""
    if layout.get("tstate.current_frame") is not None:  # 3.13+
        path: tuple[int, ...] = (layout.tstate_current_frame,)
    else:  # 3.11/3.12: through the thread's current C frame
        path = (layout.tstate_cframe, layout.cframe_current_frame)
    holder = layout.get("runtime.gil_last_holder")
    return FrameWalk(path, layout.frame_previous, layout.frame_localsplus, layout.frame_owner,
                     layout.get("frame.owner_cstack", -1), layout.frame_code, layout.object_type,
                     layout.var_size, layout.tstate_native_thread_id,
                     runtime_addr + holder if runtime_addr and holder is not None else 0)
