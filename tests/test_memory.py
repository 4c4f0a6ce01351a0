"""ProcessMemory's multi-part reads: an unreadable part costs only itself.

The kernel stops a process_vm_readv at the first part it cannot read. A part
from a torn read (a garbage pointer) must not take the good parts batched
after it down with it: the Python walker once dropped every thread listed
after a torn one, because the code objects of those threads were read after
the torn thread's garbage in one batch.
"""

from __future__ import annotations

import ctypes
import mmap
import os

from perfd.cpython.memory import IOV_MAX, ProcessMemory


def _unmapped() -> int:
    """An address in no mapping of this process: a page mapped, then unmapped."""
    m = mmap.mmap(-1, mmap.PAGESIZE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    m.close()
    return addr


def test_parts_after_an_unreadable_one_are_read() -> None:
    words = [(ctypes.c_uint64 * 4)(k, k + 1, k + 2, k + 3) for k in range(0, 40, 4)]
    good = [(ctypes.addressof(w), 32) for w in words]
    bad = _unmapped()
    parts = [good[0], (bad, 8), good[1], (bad + 64, 16), (bad, 8), *good[2:], (bad, 8)]
    with ProcessMemory(os.getpid()) as mem:
        got = mem.read_many(parts)
    assert [g is None for g in got] == [False, True, False, True, True] + [False] * 8 + [True]
    assert [g for g in got if g is not None] == [bytes(w) for w in words]


def test_more_parts_than_one_call_takes_with_bad_ones_among_them() -> None:
    block = (ctypes.c_uint64 * (3 * IOV_MAX))(*range(3 * IOV_MAX))
    base, bad = ctypes.addressof(block), _unmapped()
    parts = [(bad, 8) if i % 97 == 5 else (base + 8 * i, 8) for i in range(3 * IOV_MAX)]
    with ProcessMemory(os.getpid()) as mem:
        got = mem.read_many(parts)
        again = mem.read_many(parts)  # the same plan, kept: the same answer
    want = [None if i % 97 == 5 else i.to_bytes(8, "little") for i in range(3 * IOV_MAX)]
    assert got == want and again == want
