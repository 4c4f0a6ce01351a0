"""A changed thread's unchanged outer frames are kept from the last sample
(``StackReader._splice``): the result must be exactly what a full walk reads.

The target is stopped for each comparison, so both readers see the same
memory; between stops it runs on, so every thread's stack has changed inside
while its outer part stayed — the case the splice exists for.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Iterator

import pytest

from conftest import TARGET_VERSIONS
from perfd.cpython.discovery import locate_interpreter
from perfd.cpython.stacks import StackReader


def _stop(pid: int) -> None:
    """SIGSTOP and wait until every thread is stopped (delivery is asynchronous:
    a thread may run on for a moment after ``kill`` returns)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        if all(s in "Tt" for s in states):
            return
        time.sleep(0.0002)
    raise AssertionError("target did not stop")


def _stacks(reader: StackReader) -> dict[int, list[tuple]]:
    return {t.native_thread_id: [(f.qualname, f.filename, f.line, f.frame_addr, f.gen_addr) for f in t.frames]
            for t in reader.sample().threads}


def stopped_comparisons(pid: int, interp, continuous: StackReader, rounds: int,
                        read: Callable[[StackReader], object]) -> Iterator[tuple[object, object]]:
    """At ``rounds`` random moments, stop the target and ``read`` its stacks with
    the ``continuous`` reader (which remembers earlier samples) and with a fresh
    Python reader (which remembers nothing: walks every frame); yields both
    answers with the target running again."""
    for _ in range(rounds):
        time.sleep(random.uniform(0.0005, 0.004))
        _stop(pid)
        try:
            got = read(continuous)
            fresh = StackReader(interp, walker="python")
            try:
                want = read(fresh)
            finally:
                fresh.close()
        finally:
            os.kill(pid, signal.SIGCONT)
        yield got, want


@pytest.mark.parametrize("version", TARGET_VERSIONS)
def test_spliced_stacks_equal_full_walks(spawn, version: str) -> None:
    target = spawn("stack_splice.py", version=version)
    interp = locate_interpreter(target.pid)
    continuous = StackReader(interp, walker="python")  # the native walker: test_stack_native.py
    compared = 0
    try:
        for spliced, full in stopped_comparisons(target.pid, interp, continuous, 150, _stacks):
            assert spliced == full
            compared += 1
    finally:
        continuous.close()
    assert compared == 150
    # the splice was taken, and for most of each changed stack (threads ~35-65 frames deep)
    assert continuous.spliced_frames > 150 * 30
