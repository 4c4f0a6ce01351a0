"""Finding the target process: pid, pidfile, systemd unit, command-line regex.

Each selector that is configured is tried in that order and the first that
finds a live process wins; when none does, the answer says why for each, and
that text is what health reports while perfd waits. Everything here reads
/proc (and the pidfile) only, so it is cheap enough to poll a few times a
second and works the same inside a container as on the host.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from perfd.config import TargetConfig

PROC = Path("/proc")


@dataclass(frozen=True)
class Found:
    pid: int
    how: str  # e.g. "cmdline 'uvicorn app'" — for the log and the status line


@dataclass(frozen=True)
class NotFound:
    reason: str


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    start: int  # clock ticks since boot: orders processes by age


def _stat(pid: int) -> _Proc | None:
    """ppid and start time from /proc/PID/stat; None for a vanished or zombie process."""
    try:
        raw = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # comm may contain spaces and parentheses: fields start after the last ')'
    fields = raw[raw.rfind(b")") + 2:].split()
    if not fields or fields[0] in (b"Z", b"X"):
        return None
    return _Proc(pid=pid, ppid=int(fields[1]), start=int(fields[19]))


def _pids() -> list[int]:
    return [int(name) for name in os.listdir(PROC) if name.isdigit()]


def _self_and_ancestors() -> set[int]:
    """perfd and whatever launched it: their command lines name the pattern itself."""
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        proc = _stat(pid)
        if proc is None:
            break
        pid = proc.ppid
    return out


def _eldest(procs: list[_Proc]) -> _Proc:
    """The process the others descend from (a server, not its workers); oldest on ties."""
    pids = {p.pid for p in procs}
    roots = [p for p in procs if p.ppid not in pids] or procs
    return min(roots, key=lambda p: (p.start, p.pid))


def _eldest_where(file: str, test: Callable[[bytes], bool], skip: frozenset[int] | set[int] = frozenset()) -> _Proc | None:
    """The eldest live process whose ``/proc/PID/<file>`` passes ``test``."""
    matches = []
    for pid in _pids():
        if pid in skip:
            continue
        try:
            raw = (PROC / str(pid) / file).read_bytes()
        except OSError:
            continue
        if test(raw) and (proc := _stat(pid)) is not None:
            matches.append(proc)
    return _eldest(matches) if matches else None


def by_pid(pid: int) -> Found | NotFound:
    if _stat(pid) is None:
        return NotFound(f"PID {pid} is not running")
    return Found(pid, f"pid {pid}")


def by_pidfile(path: Path) -> Found | NotFound:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return NotFound(f"pidfile {path} does not exist")
    except OSError as e:
        return NotFound(f"pidfile {path} cannot be read: {e.strerror}")
    if not text.isdigit() or int(text) < 1:
        return NotFound(f"pidfile {path} does not hold a PID ({text[:20]!r})")
    pid = int(text)
    if _stat(pid) is None:
        return NotFound(f"pidfile {path} names PID {pid}, which is not running")
    return Found(pid, f"pidfile {path}")


def unit_name(unit: str) -> str:
    return unit if "." in unit else unit + ".service"


def by_systemd_unit(unit: str) -> Found | NotFound:
    """The unit's main process: the eldest process in the unit's cgroup.

    Read from /proc/PID/cgroup rather than asking systemd, so it works without
    D-Bus, under cgroup v1, v2 or hybrid, and inside a container.
    """
    name = unit_name(unit)
    eldest = _eldest_where("cgroup", lambda raw: any(
        name in line.rpartition(":")[2].split("/") for line in raw.decode(errors="replace").splitlines()))
    if eldest is None:
        return NotFound(f"no process runs in systemd unit {name}")
    return Found(eldest.pid, f"systemd unit {name}")


def by_cmdline(pattern: str) -> Found | NotFound:
    """Processes whose full command line (arguments joined by spaces) matches ``pattern``."""
    regex = re.compile(pattern)
    eldest = _eldest_where("cmdline", lambda raw: bool(raw) and regex.search(
        raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")) is not None, skip=_self_and_ancestors())
    if eldest is None:
        return NotFound(f"no process matches cmdline {pattern!r}")
    return Found(eldest.pid, f"cmdline {pattern!r}")


def find_target(target: TargetConfig) -> Found | NotFound:
    """First configured selector that finds a live process wins."""
    reasons = []
    for attempt in _attempts(target):
        result = attempt()
        if isinstance(result, Found):
            return result
        reasons.append(result.reason)
    return NotFound("; ".join(reasons) or "no target configured")


def _attempts(target: TargetConfig):
    if target.pid is not None:
        yield lambda: by_pid(target.pid)
    if target.pidfile is not None:
        yield lambda: by_pidfile(target.pidfile)
    if target.systemd_unit is not None:
        yield lambda: by_systemd_unit(target.systemd_unit)
    if target.cmdline is not None:
        yield lambda: by_cmdline(target.cmdline)
