"""Decode CPython 3.11+ location tables (``co_linetable``) to line numbers.

Format (Objects/locations.md): entries start with a byte that has bit 7 set;
bits 3-6 are the code, bits 0-2 the length in code units minus one. Code 15
means "no location", 14 is the long form (signed line delta + 3 varints),
13 has no columns (signed line delta), 10-12 are one-line forms (line delta
``code - 10`` + 2 column bytes), 0-9 short forms (same line, 1 byte).
The table never raises: garbage in gives ``None`` out.
"""

from __future__ import annotations


def _varint(table: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = table[i]
        i += 1
        value |= (b & 63) << shift
        shift += 6
        if not b & 64:
            return value, i


def _svarint(table: bytes, i: int) -> tuple[int, int]:
    value, i = _varint(table, i)
    return (-(value >> 1) if value & 1 else value >> 1), i


def line_for_offset(table: bytes, firstlineno: int, byte_offset: int) -> int | None:
    """Line of the instruction at ``byte_offset`` from the code start (``None``: no line).

    A negative offset (frame not started yet) is the function's first line,
    as ``PyCode_Addr2Line`` reports it.
    """
    if byte_offset < 0:
        return firstlineno
    target = byte_offset // 2
    line = firstlineno
    addr = 0
    i = 0
    n = len(table)
    try:
        while i < n:
            first = table[i]
            if not first & 0x80:
                return None  # lost sync: not a location table
            code = (first >> 3) & 15
            length = (first & 7) + 1
            i += 1
            this_line: int | None = line
            if code == 15:
                this_line = None
            elif code == 14:
                delta, i = _svarint(table, i)
                line += delta
                this_line = line
                for _ in range(3):
                    _, i = _varint(table, i)
            elif code == 13:
                delta, i = _svarint(table, i)
                line += delta
                this_line = line
            elif code >= 10:
                line += code - 10
                this_line = line
                i += 2
            else:
                i += 1
            if addr <= target < addr + length:
                return this_line
            addr += length
    except IndexError:
        return None
    return None
