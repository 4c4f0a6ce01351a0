"""``perfd dump`` against py-spy as the oracle, on a stopped target.

With the target SIGSTOPped both tools see the same memory, so they must agree
frame for frame (qualname, file, line) on every thread, and on every local
whose value is a str/int/float/bool/None.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TARGET_VERSIONS

PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))


def perfd_dump(pid: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perfd", "dump", str(pid), *args],
                          capture_output=True, text=True, timeout=60)


_OPAQUE = re.compile(r"^<[\w.]+ (at|len=|size=|shape=).*0x[0-9a-f]+>$|^<[\w.]+ len=\d+>$")


def _is_shim(frame: dict) -> bool:
    """3.13's cleanup shim under a specialised __init__ call: py-spy shows it (line 0,
    no file); perfd skips it like every other frame that runs no Python source."""
    return frame["line"] == 0 and not frame["filename"].endswith(".py")


def _simple(value: object) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _pyspy_value(r: str) -> object:
    """py-spy's repr of a simple value back to a Python value (None when not simple)."""
    if r in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[r]
    if len(r) >= 2 and r[0] == r[-1] and r[0] in "'\"":
        return r[1:-1]
    for conv in (int, float):
        try:
            return conv(r)
        except ValueError:
            pass
    return NotImplemented


@pytest.mark.parametrize("version", TARGET_VERSIONS)
def test_dump_matches_py_spy_frame_for_frame(spawn, version: str) -> None:
    if not os.path.exists(PY_SPY):
        pytest.skip("py-spy not installed")
    target = spawn("reader_stacks.py", version=version)
    os.kill(target.pid, signal.SIGSTOP)
    try:
        spy = subprocess.run([PY_SPY, "dump", "--nonblocking", "--json", "--locals", "--pid", str(target.pid)],
                             capture_output=True, text=True, timeout=60)
        ours = perfd_dump(target.pid, "--json", "--locals")
    finally:
        os.kill(target.pid, signal.SIGCONT)
    assert spy.returncode == 0, spy.stderr
    assert ours.returncode == 0, ours.stderr
    expected = {t["thread_id"]: t for t in json.loads(spy.stdout)}
    got = {t["thread_id"]: t for t in json.loads(ours.stdout)}
    assert set(got) == set(expected)
    compared_locals = 0
    for tid, spy_thread in expected.items():
        mine = got[tid]
        assert mine["native_thread_id"] == spy_thread["os_thread_id"]
        assert mine["name"] == spy_thread["thread_name"]
        spy_frames = [f for f in spy_thread["frames"] if not _is_shim(f)]
        assert [(f["name"], f["filename"], f["line"]) for f in mine["frames"]] == [
            (f["name"], f["filename"], f["line"]) for f in spy_frames
        ], f"thread {spy_thread['thread_name']}"
        for my_frame, spy_frame in zip(mine["frames"], spy_frames):
            for local in spy_frame.get("locals") or []:
                value = _pyspy_value(local["repr"])
                if value is NotImplemented or local["name"] not in my_frame["locals"]:
                    continue
                mine_value = my_frame["locals"][local["name"]]
                if _simple(mine_value) and not _OPAQUE.match(str(mine_value)):
                    assert mine_value == value, (spy_frame["name"], local["name"])
                    compared_locals += 1
    assert len(got) == 8
    built = next(t for t in got.values() if t["name"] == "t-construct")
    assert [f["name"] for f in built["frames"][:2]] == ["Built.__init__", "construct"]
    deep = next(t for t in got.values() if t["name"] == "t-recurse")
    assert len(deep["frames"]) > 300
    assert compared_locals > 300  # n/label of every recursion level, plus the planted scalars


@pytest.mark.parametrize("version", TARGET_VERSIONS)
def test_dump_reads_planted_locals_without_stopping(spawn, version: str) -> None:
    target = spawn("reader_stacks.py", version=version)
    result = perfd_dump(target.pid, "--json", "--locals")
    assert result.returncode == 0, result.stderr
    threads = {t["name"]: t for t in json.loads(result.stdout)}
    blocked = threads["t-blocked_in_c"]["frames"][0]
    assert blocked["name"] == "blocked_in_c"
    assert {k: blocked["locals"][k] for k in ("count", "ratio", "flag", "nothing", "text")} == {
        "count": 42, "ratio": -2.5, "flag": True, "nothing": None, "text": "ascii text"}
    assert blocked["locals"]["a"].startswith("<socket.socket at 0x")
    closure = threads["t-größe_berechnen"]["frames"][0]
    assert closure["name"] == "größe_berechnen.<locals>.inner_closure"
    assert closure["locals"]["wert"] == "größe – 長さ – \U0001f600"
    assert closure["locals"]["länge"] == 7
    gen = threads["t-drive_generator"]["frames"][0]
    assert (gen["name"], gen["locals"]) == ("generator_body", {"n": 10, "i": 1})


def test_dump_of_missing_process_is_exit_2() -> None:
    result = perfd_dump(2 ** 22 + 12345)
    assert result.returncode == 2
    assert "no process" in result.stderr


@pytest.mark.parametrize("version", ["3.10", "3.9"])
def test_dump_of_unsupported_python_is_exit_2(spawn, version: str) -> None:
    target = spawn("idle.py", version=version)
    result = perfd_dump(target.pid)
    assert result.returncode == 2
    assert "supports CPython" in result.stderr and "3.11" in result.stderr


def test_dump_text_lists_every_thread_innermost_first(spawn) -> None:
    target = spawn("reader_stacks.py", version="3.13")
    result = perfd_dump(target.pid, "--locals")
    assert result.returncode == 0, result.stderr
    blocks = result.stdout.split("Thread 0x")[1:]
    assert len(blocks) == 8
    blocked = next(b for b in blocks if "'t-blocked_in_c'" in b.splitlines()[0])
    lines = blocked.splitlines()
    assert lines[1].strip().startswith("blocked_in_c (") and lines[1].rstrip().endswith("reader_stacks.py:34)")
    assert "        count = 42" in lines
