"""The op table (``probes/open3d.toml``): which C++ functions make up each op."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib.resources import files

from perfd.errors import UsageError

DEFAULT_SPEC = "open3d.toml"


@dataclass(frozen=True)
class OpSpec:
    name: str  # what the Python caller called, e.g. "voxel_down_sample"
    symbols: tuple[str, ...]  # demangled C++ names, with or without a parameter list


def parse_spec(text: str) -> list[OpSpec]:
    """Ops in file order; a malformed table is a usage error, not a crash."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"bad Open3D probe spec: {e}") from None
    ops = doc.get("ops")
    if not isinstance(ops, dict) or not ops:
        raise UsageError("bad Open3D probe spec: no [ops.<name>] tables")
    out = []
    for name, table in ops.items():
        symbols = table.get("symbols") if isinstance(table, dict) else None
        if not symbols or not all(isinstance(s, str) and s for s in symbols):
            raise UsageError(f"bad Open3D probe spec: ops.{name}.symbols must be a list of names")
        out.append(OpSpec(name=name, symbols=tuple(symbols)))
    return out


def load_spec(resource: str = DEFAULT_SPEC) -> list[OpSpec]:
    """The spec shipped in package ``perfd.probes``."""
    return parse_spec(files("perfd.probes").joinpath(resource).read_text())
