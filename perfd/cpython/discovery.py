"""Find the CPython interpreter inside a process and tell its version.

The interpreter lives in ``libpython3.X.so`` (shared builds) or in the
executable itself (static builds, e.g. Debian's /usr/bin/python3.11); either
exports ``_PyRuntime`` and, from 3.11, ``Py_Version`` — the exact
``PY_VERSION_HEX`` compiled into the running binary, which is more trustworthy
than any file name.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass

from perfd.cpython.elf import load_elf
from perfd.cpython.maps import Mapping, find_mapped, host_path, load_base, read_maps
from perfd.cpython.memory import ProcessMemory
from perfd.errors import (
    MemoryReadError,
    NoSuchProcess,
    NotPython,
    PermissionDenied,
    UnsupportedPython,
)

SUPPORTED = ((3, 10), (3, 11), (3, 12), (3, 13))
_SYMBOLS = {"_PyRuntime", "Py_Version"}
_LIBPYTHON = r"^libpython3\.(\d+)t?\.so"


@dataclass(frozen=True)
class PythonVersion:
    major: int
    minor: int
    micro: int
    releaselevel: str = "final"
    serial: int = 0

    @classmethod
    def from_hex(cls, value: int) -> "PythonVersion":
        level = {0xA: "alpha", 0xB: "beta", 0xC: "candidate", 0xF: "final"}.get((value >> 4) & 0xF, "final")
        return cls((value >> 24) & 0xFF, (value >> 16) & 0xFF, (value >> 8) & 0xFF, level, value & 0xF)

    @property
    def minor_tuple(self) -> tuple[int, int]:
        return (self.major, self.minor)

    def __str__(self) -> str:
        base = f"{self.major}.{self.minor}.{self.micro}"
        if self.releaselevel != "final":
            base += {"alpha": "a", "beta": "b", "candidate": "rc"}[self.releaselevel] + str(self.serial)
        return base


@dataclass(frozen=True)
class Interpreter:
    """Where a target's interpreter is and which version it is."""

    pid: int
    exe: str
    binary: str  # the mapped file that exports _PyRuntime (libpython or the exe)
    load_base: int
    runtime_addr: int  # address of _PyRuntime
    version: PythonVersion
    version_exact: bool  # False when read from a file name (3.10 has no Py_Version)


def locate_interpreter(pid: int, mem: ProcessMemory | None = None) -> Interpreter:
    """Find the interpreter in ``pid`` and check that perfd supports it.

    Raises ``NoSuchProcess``, ``PermissionDenied``, ``NotPython`` or
    ``UnsupportedPython`` with a one-line reason.
    """
    if not os.path.exists(f"/proc/{pid}"):
        raise NoSuchProcess(f"no process with PID {pid}")
    exe = _exe(pid)
    maps = read_maps(pid)
    binary = find_mapped(maps, _LIBPYTHON) or exe
    image_path = host_path(pid, binary)
    try:
        image = load_elf(image_path, _SYMBOLS)
    except NotPython:
        raise NotPython(f"PID {pid} ({exe}) is not a CPython process: cannot read {binary}") from None
    base = load_base(maps, binary)
    runtime = image.address("_PyRuntime", base) if base is not None else None
    if runtime is None:
        raise NotPython(f"PID {pid} ({exe}) is not a CPython process: no _PyRuntime in {binary}")
    own_mem = mem is None
    mem = mem or ProcessMemory(pid)
    try:
        version, exact = _version(pid, mem, image.address("Py_Version", base), binary)
    finally:
        if own_mem:
            mem.close()
    if version.minor_tuple not in SUPPORTED:
        supported = ", ".join(f"{a}.{b}" for a, b in SUPPORTED)
        raise UnsupportedPython(f"PID {pid} runs Python {version}; perfd supports CPython {supported}")
    return Interpreter(pid, exe, binary, base, runtime, version, exact)


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except FileNotFoundError:
        raise NoSuchProcess(f"no process with PID {pid}") from None
    except PermissionError:
        raise PermissionDenied(f"cannot inspect PID {pid}: run perfd as root or with CAP_SYS_PTRACE") from None
    except OSError as e:  # kernel threads have no exe
        raise NotPython(f"PID {pid} is not a CPython process ({e.strerror})") from None


def _version(pid: int, mem: ProcessMemory, addr: int | None, binary: str) -> tuple[PythonVersion, bool]:
    if addr is not None:
        try:
            (value,) = struct.unpack("<Q", mem.read(addr, 8))
        except MemoryReadError as e:
            raise PermissionDenied(f"cannot read memory of PID {pid}: {e}") from None
        return PythonVersion.from_hex(value & 0xFFFFFFFF), True
    # Before 3.11 there is no Py_Version; the library name still says 3.X.
    match = re.search(r"python(\d)\.(\d+)", os.path.basename(binary))
    if not match:
        raise NotPython(f"PID {pid}: cannot tell the Python version of {binary}")
    # Prove we can read its memory at all, so permission problems show now.
    try:
        mem.read(load_base(read_maps(pid), binary) or 0, 4)
    except MemoryReadError as e:
        raise PermissionDenied(f"cannot read memory of PID {pid}: {e}") from None
    return PythonVersion(int(match.group(1)), int(match.group(2)), 0), False


__all__ = ["Interpreter", "PythonVersion", "locate_interpreter", "Mapping"]
