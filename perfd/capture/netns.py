"""Run one call inside the target's network namespace, leaving perfd's untouched.

``setns(CLONE_NEWNET)`` moves only the calling thread, so the call runs on a
short-lived dedicated thread that enters ``/proc/PID/ns/net``, does its work
(open a packet socket: a socket stays bound to the namespace it was created
in) and returns to perfd's namespace before it ends.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading
from typing import Callable, TypeVar

from perfd.errors import NoSuchProcess

T = TypeVar("T")
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class NamespaceError(OSError):
    """Entering the namespace failed; ``errno`` says why (EPERM: missing CAP_SYS_ADMIN)."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NamespaceError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


def same_netns(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/thread-self/ns/net").st_ino
    except FileNotFoundError:
        raise NoSuchProcess(f"process {pid} does not exist") from None


def run_in_netns(pid: int, fn: Callable[[], T]) -> T:
    """``fn()`` with the network namespace of ``pid``; its exceptions propagate."""
    if same_netns(pid):
        return fn()
    result: dict[str, object] = {}

    def body() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            try:
                target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            except FileNotFoundError:
                raise NoSuchProcess(f"process {pid} does not exist") from None
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                result["value"] = fn()
            finally:
                _setns(own)
        except BaseException as e:  # handed to the caller's thread
            result["error"] = e
        finally:
            os.close(own)

    thread = threading.Thread(target=body, name=f"perfd-netns-{pid}", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]


def is_permission_error(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.EPERM, errno.EACCES)
