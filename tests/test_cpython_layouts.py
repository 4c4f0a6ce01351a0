"""The layouts module: generated offsets are current, 3.13 debug offsets agree,
location-table decoding matches each CPython's own ``co_lines()``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from perfd.cpython.discovery import locate_interpreter
from perfd.cpython.layouts import layout_for
from perfd.cpython.layouts_generated import LAYOUTS
from perfd.cpython.linetable import line_for_offset
from perfd.cpython.memory import ProcessMemory
from conftest import ROOT, TARGET_VERSIONS, python_for


def test_committed_layouts_match_the_headers(tmp_path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    out = tmp_path / "layouts.py"
    subprocess.run([sys.executable, str(ROOT / "tools/gen_layouts.py"), "--out", str(out)], check=True,
                   capture_output=True)
    assert out.read_text() == (ROOT / "perfd/cpython/layouts_generated.py").read_text()


def test_layout_knows_what_the_reader_needs() -> None:
    for minor, fields in LAYOUTS.items():
        for key in ("tstate.next", "frame.previous", "frame.code", "frame.instr", "frame.owner", "code.linetable",
                    "code.code_adaptive", "gen.iframe", "gen.frame_state", "dict.keys", "str.state"):
            assert key in fields, (minor, key)
    assert "tstate.cframe" in LAYOUTS["3.12"] and "tstate.current_frame" in LAYOUTS["3.13"]


def test_313_reads_debug_offsets_from_the_target(spawn) -> None:
    target = spawn("idle.py", version="3.13")
    interp = locate_interpreter(target.pid)
    with ProcessMemory(target.pid) as mem:
        layout = layout_for(interp, mem)
    assert "tstate.current_frame" in layout.from_debug_offsets and len(layout.from_debug_offsets) > 30
    for key in layout.from_debug_offsets:  # the target's struct agrees with its headers
        assert layout.offsets[key] == LAYOUTS["3.13"][key], key


_DUMP_LINES = r"""
import json, inspect, asyncio, json.decoder, email.message, os, threading
out = []
for mod in (json.decoder, asyncio.tasks, asyncio.base_events, email.message, os, threading, inspect):
    for obj in vars(mod).values():
        cos = [obj.__code__] if inspect.isfunction(obj) else (
            [f.__code__ for f in vars(obj).values() if inspect.isfunction(f)] if inspect.isclass(obj) else [])
        for co in cos:
            out.append([co.co_linetable.hex(), co.co_firstlineno, list(co.co_lines())])
print(json.dumps(out))
"""


@pytest.mark.parametrize("version", TARGET_VERSIONS)
def test_location_tables_match_co_lines(version: str) -> None:
    data = json.loads(subprocess.run([python_for(version), "-c", _DUMP_LINES], capture_output=True,
                                     text=True, check=True).stdout)
    checked = 0
    for table_hex, first, lines in data:
        table = bytes.fromhex(table_hex)
        for start, end, line in lines:
            for off in range(start, end, 2):
                assert line_for_offset(table, first, off) == line
                checked += 1
    assert checked > 10_000
