"""``--tasks``: every asyncio task and its await chain, checked against the
target's own report (asyncio.all_tasks() + cr_await chains, printed before READY)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from perfd.cpython.discovery import locate_interpreter
from perfd.cpython.stacks import StackReader
from perfd.cpython.tasks import TaskReader, calibrate
from conftest import TARGET_VERSIONS, Target, python_for, TARGETS


def _has_module(exe: str, module: str) -> bool:
    return subprocess.run([exe, "-c", f"import {module}"], capture_output=True).returncode == 0


@pytest.fixture
def tasks_target(request):
    version, loop = request.param
    exe = python_for(version)
    if loop == "uvloop" and not _has_module(exe, "uvloop"):
        pytest.skip(f"uvloop is not installed for CPython {version}")
    t = Target([exe, str(TARGETS / "reader_tasks.py"), loop], ready_line=None)
    report = json.loads(t.proc.stdout.readline())
    assert "READY" in t.proc.stdout.readline()
    yield t, report
    t.stop()


CASES = [(v, loop) for v in TARGET_VERSIONS for loop in ("asyncio", "uvloop")]


@pytest.mark.parametrize("tasks_target", CASES, indirect=True, ids=[f"{v}-{l}" for v, l in CASES])
def test_every_task_with_its_await_chain(tasks_target) -> None:
    target, report = tasks_target
    reader = StackReader(locate_interpreter(target.pid))
    chains = {c.task_addr: c for c in TaskReader(reader).tasks()}
    assert len(report) == 51
    assert set(chains) == {r["task"] for r in report}
    for r in report:
        got = chains[r["task"]]
        assert got.name == r["name"]
        if r["current"]:
            continue  # the reporting task itself moved on to its final await
        assert [[f.qualname, f.line] for f in got.frames] == r["chain"], r["name"]
        assert got.state == "suspended"
        if r["waiter"]:
            assert got.awaited_addr == r["waiter"], r["name"]
            assert got.awaited and ("Future" in got.awaited or "Task" in got.awaited)
    routed = [c for c in chains.values() if (c.name or "").startswith("to-thread")]
    assert len(routed) == 10
    assert [f.qualname for f in routed[0].frames] == ["route", "send_to_node", "to_thread"]


@pytest.mark.parametrize("version", TARGET_VERSIONS)
def test_perfd_dump_tasks_json(spawn, version: str) -> None:
    exe = python_for(version)
    t = Target([exe, str(TARGETS / "reader_tasks.py"), "asyncio"], ready_line=None)
    try:
        t.proc.stdout.readline()
        t.proc.stdout.readline()
        out = subprocess.run([sys.executable, "-m", "perfd", "dump", str(t.pid), "--tasks", "--json", "--locals"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert len(data["tasks"]) == 51 and len(data["threads"]) >= 2
        routed = next(x for x in data["tasks"] if x["name"] == "to-thread-3")
        assert [f["name"] for f in routed["awaits"]] == ["route", "send_to_node", "to_thread"]
        assert routed["awaits"][0]["locals"]["n"] == 3
        assert routed["awaited"].startswith("<_asyncio.Future at 0x")
    finally:
        t.stop()


def test_calibration_is_per_binary() -> None:
    layouts = {v: calibrate(0, python_for(v)) for v in TARGET_VERSIONS}
    assert all(l.task_type == "_asyncio.Task" for l in layouts.values())
    assert layouts["3.13"].coro != layouts["3.12"].coro  # 3.13 dropped fields before task_coro
