"""A free-threaded CPython (3.13t: no GIL, other object headers) is refused
with a clear reason, from the flag its own ``_Py_DebugOffsets`` carries.

No free-threaded build is installed here, so the target's first bytes are
built from the generated layout: the same bytes a 3.13t ``_PyRuntime`` starts
with (cookie, version, the flag), the rest zeros.
"""

from __future__ import annotations

import struct

import pytest

from perfd.cpython.discovery import Interpreter, PythonVersion
from perfd.cpython.layouts import layout_for
from perfd.cpython.layouts_generated import LAYOUTS
from perfd.errors import UnsupportedPython

RUNTIME = 0x7F0000000000


class _RuntimeBytes:
    """Memory holding only a ``_PyRuntime`` that starts with these debug offsets."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def read(self, addr: int, size: int) -> bytes:
        assert addr == RUNTIME and size <= len(self.raw)
        return self.raw[:size]


def _runtime(free_threaded: int) -> _RuntimeBytes:
    where = LAYOUTS["3.13"]
    raw = bytearray(where["debug:size"])
    raw[:8] = b"xdebugpy"
    struct.pack_into("<Q", raw, where["debug:version"], 0x030D00F0)  # 3.13.0 final
    struct.pack_into("<Q", raw, where["debug:free_threaded"], free_threaded)
    return _RuntimeBytes(bytes(raw))


def _interp() -> Interpreter:
    return Interpreter(4242, "/x/python3.13t", "/x/libpython3.13t.so", RUNTIME - 0x100000, RUNTIME,
                       PythonVersion(3, 13, 0), True)


def test_a_free_threaded_build_is_refused() -> None:
    with pytest.raises(UnsupportedPython, match="free-threaded"):
        layout_for(_interp(), _runtime(1))


def test_a_gil_build_is_read() -> None:
    layout = layout_for(_interp(), _runtime(0))
    assert "tstate.thread_id" in layout.from_debug_offsets
