"""Dynamic symbols of an ELF file, with the load bias a mapping applies."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from perfd.errors import NotPython


@dataclass(frozen=True)
class ElfImage:
    path: str
    first_load_vaddr: int  # p_vaddr of the first PT_LOAD, page-aligned down
    symbols: dict[str, tuple[int, int]]  # name -> (st_value, st_size), dynsym only

    def address(self, name: str, load_base: int) -> int | None:
        """Runtime address of ``name`` for an image whose offset 0 maps at ``load_base``."""
        sym = self.symbols.get(name)
        if sym is None:
            return None
        return load_base - self.first_load_vaddr + sym[0]


@lru_cache(maxsize=32)
def _load(file_id: tuple[int, int, int], path: str, wanted: frozenset[str] | None) -> ElfImage:
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
            first = min((s["p_vaddr"] for s in loads), default=0) & ~0xFFF
            symbols: dict[str, tuple[int, int]] = {}
            for section_name in (".dynsym", ".symtab"):
                section = elf.get_section_by_name(section_name)
                if section is None:
                    continue
                for sym in section.iter_symbols():
                    if sym["st_value"] and sym.name and (wanted is None or sym.name in wanted):
                        symbols.setdefault(sym.name, (sym["st_value"], sym["st_size"]))
    except (OSError, ELFError) as e:
        raise NotPython(f"cannot read ELF file {path}: {e}") from None
    return ElfImage(path=path, first_load_vaddr=first, symbols=symbols)


def load_elf(path: str, wanted: set[str] | None = None) -> ElfImage:
    """Parse ``path`` (cached per file); ``wanted`` limits which symbols are kept."""
    try:
        st = os.stat(path)
    except OSError as e:  # e.g. a 0700 directory without CAP_DAC_READ_SEARCH
        raise NotPython(f"cannot read ELF file {path}: {e.strerror}") from None
    # Keyed by the file, not its path: /proc/PID/root/... differs for every PID
    # of the same binary, and parsing libpython again costs most of a second.
    return _load((st.st_dev, st.st_ino, st.st_mtime_ns), path, frozenset(wanted) if wanted else None)
