"""``/proc/PID/maps`` and paths as the target sees them.

Files are opened through ``/proc/PID/root`` so a target in a container (its
own mount namespace) resolves to the binary it actually mapped.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from perfd.errors import NoSuchProcess, PermissionDenied


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str

    def contains(self, addr: int) -> bool:
        return self.start <= addr < self.end


def read_maps(pid: int) -> list[Mapping]:
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.read().splitlines()
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: it exited between lookup and open
        raise NoSuchProcess(f"no process with PID {pid}") from None
    except PermissionError:
        raise PermissionDenied(f"cannot read /proc/{pid}/maps: run perfd as root") from None
    out = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 5:
            continue
        lo, _, hi = parts[0].partition("-")
        out.append(
            Mapping(
                start=int(lo, 16),
                end=int(hi, 16),
                perms=parts[1],
                offset=int(parts[2], 16),
                inode=int(parts[4]),
                path=parts[5].strip() if len(parts) > 5 else "",
            )
        )
    return out


def host_path(pid: int, path: str) -> str:
    """The target's ``path`` opened from perfd's mount namespace."""
    root = f"/proc/{pid}/root"
    candidate = root + path
    return candidate if os.path.exists(candidate) else path


def find_mapped(maps: list[Mapping], pattern: str) -> str | None:
    """First mapped file whose basename matches ``pattern`` (a regex)."""
    rx = re.compile(pattern)
    for m in maps:
        if m.path.startswith("/") and rx.search(os.path.basename(m.path)):
            return m.path
    return None


def load_base(maps: list[Mapping], path: str) -> int | None:
    """Address where ``path``'s file offset 0 is mapped."""
    starts = [m.start for m in maps if m.path == path and m.offset == 0]
    return min(starts) if starts else None
