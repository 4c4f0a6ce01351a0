"""Read-only access to another process's memory.

``process_vm_readv`` reads without stopping the target (no ptrace attach);
one call can gather many scattered parts, which is what makes sampling cheap.
``/proc/PID/mem`` is the fallback where the syscall is filtered (seccomp).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading

from perfd.errors import MemoryReadError, NoSuchProcess, PermissionDenied

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_process_vm_readv = _libc.process_vm_readv
_process_vm_readv.argtypes = [
    ctypes.c_int, ctypes.POINTER(_IOVec), ctypes.c_ulong,
    ctypes.POINTER(_IOVec), ctypes.c_ulong, ctypes.c_ulong,
]
_process_vm_readv.restype = ctypes.c_ssize_t

_MAX_ADDR = 1 << 63  # pread raises OverflowError above this; nothing valid lives there
IOV_MAX = 1024


class ProcessMemory:
    """Reads of one process's address space. Every failure is ``MemoryReadError``."""

    def __init__(self, pid: int, *, use_proc_mem: bool = False) -> None:
        self.pid = pid
        self._mem_fd: int | None = None
        self._use_proc_mem = use_proc_mem
        self.reads = 0  # syscalls issued; samplers report cost with it
        self._plans: dict[tuple[int, int, int], tuple] = {}  # (thread, batch start, parts) -> (parts, plan)

    def close(self) -> None:
        if self._mem_fd is not None:
            os.close(self._mem_fd)
            self._mem_fd = None

    def __enter__(self) -> "ProcessMemory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, addr: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``addr`` or ``MemoryReadError``."""
        if size <= 0:
            return b""
        if not 0 < addr < _MAX_ADDR:
            raise MemoryReadError(f"bad address {addr:#x}")
        if self._use_proc_mem:
            return self._pread(addr, size)
        buf = ctypes.create_string_buffer(size)
        local = _IOVec(ctypes.cast(buf, ctypes.c_void_p), size)
        remote = _IOVec(addr, size)
        self.reads += 1
        n = _process_vm_readv(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if n == size:
            return buf.raw
        if n < 0:
            err = ctypes.get_errno()
            if err == errno.ENOSYS or err == errno.EPERM and self._proc_mem_works(addr, size):
                self._use_proc_mem = True
                return self._pread(addr, size)
            raise read_error(self.pid, err, addr)
        raise MemoryReadError(f"short read at {addr:#x}: {n} of {size} bytes")

    def read_many(self, parts: list[tuple[int, int]]) -> list[bytes | None]:
        """Read several parts in as few syscalls as possible; an unreadable part
        comes back as None.

        The kernel stops a call at the first unreadable part: the parts after it
        are read by another call, so one bad pointer (a torn read's garbage) costs
        a syscall, never the good parts read with it.
        """
        out: list[bytes | None] = [None] * len(parts)
        if self._use_proc_mem:
            for i, (addr, size) in enumerate(parts):
                try:
                    out[i] = self.read(addr, size)
                except MemoryReadError:
                    pass
            return out
        for start in range(0, len(parts), IOV_MAX):
            chunk, base, keep = parts[start : start + IOV_MAX], start, True
            while chunk:
                failed = self._read_chunk(chunk, out, base, keep)
                if failed is None:
                    break
                chunk, base, keep = chunk[failed + 1:], base + failed + 1, False  # go on after it
        return out

    def _read_chunk(self, chunk: list[tuple[int, int]], out: list[bytes | None], base: int,
                    keep: bool = True) -> int | None:
        """Reads ``chunk`` into ``out[base:]`` with one call; returns the index in
        ``chunk`` of the part the kernel stopped at, None when every part was read.
        ``keep``: cache the iovecs (a sampler reads the same parts sample after sample)."""
        # per thread: a reader may be shared, and the plan's buffer is filled in place
        key = (threading.get_ident(), base, len(chunk))
        plan = self._plans.get(key) if keep else None
        if plan is None or plan[0] != chunk:
            plan = (chunk, *self._plan(chunk))
            if keep:
                if len(self._plans) > 64:
                    self._plans.clear()
                self._plans[key] = plan
        _chunk, valid, buf, local, remote = plan
        if not valid:
            return None
        self.reads += 1
        n = _process_vm_readv(self.pid, local, len(valid), remote, len(valid), 0)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.ESRCH, errno.EPERM, errno.ENOSYS):
                raise read_error(self.pid, err, valid[0][1])
            n = 0
        off = 0
        for i, _, size in valid:
            if off + size > n:
                return i
            out[base + i] = buf[off : off + size]  # a copy of this part only (not the whole buffer first)
            off += size
        return None

    @staticmethod
    def _plan(chunk: list[tuple[int, int]]) -> tuple[list[tuple[int, int, int]], ctypes.Array, ctypes.Array, ctypes.Array]:
        """The iovecs for these parts and the buffer they fill. A sampler reads the
        same parts sample after sample: the plan is kept and only the syscall repeats."""
        valid = [(i, a, s) for i, (a, s) in enumerate(chunk) if 0 < a < _MAX_ADDR and s > 0]
        buf = ctypes.create_string_buffer(max(1, sum(s for _, _, s in valid)))
        local = (_IOVec * len(valid))()
        remote = (_IOVec * len(valid))()
        base_addr = ctypes.addressof(buf)
        off = 0
        for k, (_, addr, size) in enumerate(valid):
            local[k].iov_base, local[k].iov_len = base_addr + off, size
            remote[k].iov_base, remote[k].iov_len = addr, size
            off += size
        return valid, buf, local, remote

    def _proc_mem_works(self, addr: int, size: int) -> bool:
        try:
            self._pread(addr, size)
            return True
        except MemoryReadError:
            return False

    def _pread(self, addr: int, size: int) -> bytes:
        if self._mem_fd is None:
            try:
                self._mem_fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY)
            except (FileNotFoundError, ProcessLookupError):  # ESRCH: it exited between lookup and open
                raise NoSuchProcess(f"process {self.pid} does not exist") from None
            except PermissionError:
                raise read_error(self.pid, errno.EPERM, addr) from None
        self.reads += 1
        try:
            data = os.pread(self._mem_fd, size, addr)
        except (OSError, OverflowError) as e:
            raise MemoryReadError(f"cannot read {size} bytes at {addr:#x}: {e}") from None
        if len(data) != size:
            raise MemoryReadError(f"short read at {addr:#x}: {len(data)} of {size} bytes")
        return data


def read_error(pid: int, err: int, addr: int) -> Exception:
    """The typed error for a failed read of process ``pid`` (errno ``err``)."""
    if err == errno.ESRCH:
        return NoSuchProcess(f"process {pid} exited")
    if err == errno.EPERM:
        return PermissionDenied(
            f"not permitted to read memory of process {pid}: run perfd as root or grant CAP_SYS_PTRACE"
        )
    return MemoryReadError(f"cannot read process {pid} at {addr:#x}: {os.strerror(err)}")
