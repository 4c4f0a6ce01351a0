"""Find the Open3D functions of ``open3d.toml`` in the library a target maps.

Matching works on mangled names, so no demangler is needed: a qualified name
``open3d::geometry::PointCloud::Crop`` is the Itanium nested name
``N6open3d8geometry10PointCloud4CropE`` (after optional cv/ref qualifiers),
which selects every overload and nothing with a longer name. Only an entry
that pins one overload by its parameter list needs ``c++filt``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from perfd.cpython.elf import load_elf
from perfd.cpython.maps import Mapping, host_path, read_maps
from perfd.errors import NotPython
from perfd.uprobes.spec import OpSpec

# Files that can hold Open3D's C++ code: the shared library, or the Python
# extension when Open3D was built statically into it.
_CANDIDATE = re.compile(r"^libOpen3D\.so|^pybind\.cpython-.*\.so$|^open3d.*\.so")


@dataclass(frozen=True)
class ProbePoint:
    op: str
    op_id: int  # index of the op in the spec, the id the backends report
    symbol: str  # mangled
    demangled: str
    vaddr: int  # st_value: what bcc takes for a shared library
    file_offset: int  # what tracefs uprobe_events takes


@dataclass
class Resolution:
    library: str | None  # path as the target sees it
    host_library: str | None  # the same file opened from perfd's namespace
    ops: list[str]  # op names by op_id
    points: list[ProbePoint] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # ops with no symbol found

    @property
    def found(self) -> bool:
        return bool(self.points)


def qualified_prefix(qualified: str) -> str:
    """Mangled nested-name body of ``a::b::c``: ``1a1b1c``."""
    return "".join(f"{len(part)}{part}" for part in qualified.split("::"))


def _split_entry(entry: str) -> tuple[str, str | None]:
    """``"ns::f(int) const"`` -> (``"ns::f"``, full entry); no parens -> (name, None)."""
    if "(" in entry:
        return entry[: entry.index("(")].strip(), entry.strip()
    return entry.strip(), None


def symbol_matches(mangled: str, qualified: str) -> bool:
    """Is ``mangled`` a (non-template) function named exactly ``qualified``?"""
    body = qualified_prefix(qualified)
    if "::" not in qualified:
        return mangled.startswith("_Z" + body) and not mangled[len(body) + 2 :].startswith("I")
    m = re.match(r"_ZN[rVKRO]*", mangled)
    if not m:
        return False
    rest = mangled[m.end() :]
    return rest.startswith(body + "E")


def demangle(names: list[str]) -> dict[str, str]:
    """Demangle with ``c++filt`` when present; otherwise names map to themselves."""
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    try:
        out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, timeout=10, check=True)
        lines = out.stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return {n: n for n in names}
    if len(lines) != len(names):
        return {n: n for n in names}
    return dict(zip(names, lines))


def _norm(sig: str) -> str:
    return re.sub(r"\s+", " ", sig).strip()


def _file_offset(load_segments: list[tuple[int, int, int]], vaddr: int) -> int | None:
    for p_vaddr, p_memsz, p_offset in load_segments:
        if p_vaddr <= vaddr < p_vaddr + p_memsz:
            return vaddr - p_vaddr + p_offset
    return None


def _load_segments(path: str) -> list[tuple[int, int, int]]:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        return [
            (s["p_vaddr"], s["p_memsz"], s["p_offset"])
            for s in elf.iter_segments()
            if s["p_type"] == "PT_LOAD" and s["p_flags"] & 1  # executable
        ]


def resolve_in_file(path: str, spec: list[OpSpec]) -> list[ProbePoint]:
    """Probe points of ``spec`` in one ELF file (``path`` readable by perfd)."""
    try:
        image = load_elf(path)
        segments = _load_segments(path)
    except (NotPython, OSError, ELFError):
        return []
    wanted: list[tuple[int, OpSpec, str, str | None]] = []
    for op_id, op in enumerate(spec):
        for entry in op.symbols:
            qualified, signature = _split_entry(entry)
            wanted.append((op_id, op, qualified, signature))
    hits: list[tuple[int, OpSpec, str, str | None]] = []
    for mangled in image.symbols:
        if not mangled.startswith("_Z"):
            continue
        for op_id, op, qualified, signature in wanted:
            if symbol_matches(mangled, qualified):
                hits.append((op_id, op, mangled, signature))
    names = demangle(sorted({h[2] for h in hits}))
    points: dict[tuple[int, int], ProbePoint] = {}
    for op_id, op, mangled, signature in hits:
        if signature is not None and _norm(names[mangled]) != _norm(signature):
            continue
        vaddr = image.symbols[mangled][0]
        offset = _file_offset(segments, vaddr)
        if offset is None:
            continue
        # Aliases (same address, two names) would double-count a call: keep one.
        points.setdefault((op_id, vaddr), ProbePoint(op.name, op_id, mangled, names[mangled], vaddr, offset))
    return sorted(points.values(), key=lambda p: (p.op_id, p.vaddr))


def open3d_candidates(maps: list[Mapping]) -> list[str]:
    """Mapped, executable files that may hold Open3D code, libOpen3D first."""
    seen: list[str] = []
    for m in maps:
        if "x" in m.perms and m.path.startswith("/") and _CANDIDATE.search(os.path.basename(m.path)):
            if "open3d" in m.path.lower() and m.path not in seen:
                seen.append(m.path)
    return sorted(seen, key=lambda p: not os.path.basename(p).startswith("libOpen3D"))


def resolve(pid: int, spec: list[OpSpec]) -> Resolution:
    """Resolve ``spec`` against the Open3D the target ``pid`` has mapped now."""
    ops = [op.name for op in spec]
    for path in open3d_candidates(read_maps(pid)):
        points = resolve_in_file(host_path(pid, path), spec)
        if points:
            found = {p.op_id for p in points}
            missing = [op.name for i, op in enumerate(spec) if i not in found]
            return Resolution(path, host_path(pid, path), ops, points, missing)
    return Resolution(None, None, ops, [], list(ops))
