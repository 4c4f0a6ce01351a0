"""Where libc functions sit in a test target: plain C symbols, which perfd's
Open3D resolver (C++ names only) does not look up. Shared by the uprobe tests
that use libc calls as exact ground truth."""

from __future__ import annotations

from perfd.cpython.elf import load_elf
from perfd.cpython.maps import find_mapped, host_path, read_maps
from perfd.uprobes.symbols import _file_offset, _load_segments


def libc_functions(pid: int, names: list[str]) -> tuple[str, str, dict[str, tuple[int, int]]]:
    """(libc path as ``pid`` sees it, the same file from here, name -> (vaddr, file offset))."""
    library = find_mapped(read_maps(pid), r"^libc\.so")
    path = host_path(pid, library)
    image = load_elf(path, set(names))
    segments = _load_segments(path)
    return library, path, {n: (image.symbols[n][0], _file_offset(segments, image.symbols[n][0])) for n in names}
