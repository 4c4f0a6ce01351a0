"""Shared test plumbing: real target processes and the privilege policy.

Tests that need a kernel facility call ``require(...)``: it skips when the
facility is missing, except under ``PERFD_REQUIRE_PRIVILEGED=1`` (CI), where a
missing facility is a failure — a skip there would hide a broken machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGETS = Path(__file__).resolve().parent / "targets"
SCHEMA_PATH = ROOT / "perfd" / "snapshot.schema.json"  # a copy of the contract; test_contract checks it
PYENV_ROOT = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
TARGET_VERSIONS = ("3.11", "3.12", "3.13")


def privileged_required() -> bool:
    return os.environ.get("PERFD_REQUIRE_PRIVILEGED") == "1"


def require(facility: str, available: bool | Callable[[], bool], why: str = "") -> None:
    """Skip (or, under PERFD_REQUIRE_PRIVILEGED=1, fail) when ``facility`` is unavailable."""
    ok = available() if callable(available) else available
    if ok:
        return
    msg = f"{facility} unavailable{': ' + why if why else ''}"
    if privileged_required():
        pytest.fail(msg + " (PERFD_REQUIRE_PRIVILEGED=1)")
    pytest.skip(msg)


def python_for(version: str) -> str:
    """Interpreter for ``3.X`` from pyenv; a missing one is a broken machine, not a skip."""
    matches = sorted(PYENV_ROOT.glob(f"versions/{version}.*/bin/python{version}"))
    if not matches:
        require(f"CPython {version} (pyenv)", False, f"no {PYENV_ROOT}/versions/{version}.*")
    return str(matches[-1])


class Target:
    """A real Python process started for a test; always reaped."""

    def __init__(self, argv: list[str], env: dict | None = None, ready_line: str | None = "READY") -> None:
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.pid = self.proc.pid
        if ready_line is not None:
            line = self.proc.stdout.readline()
            if ready_line not in line:
                self.stop()
                raise RuntimeError(f"target did not start: {line!r} {self.proc.stderr.read()!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def __enter__(self) -> "Target":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Target]]:
    """``spawn(script, version="3.12", *args)`` runs ``tests/targets/<script>``."""
    started: list[Target] = []

    def _spawn(script: str, *args: str, version: str | None = None, env: dict | None = None) -> Target:
        exe = python_for(version) if version else sys.executable
        t = Target([exe, str(TARGETS / script), *args], env=env)
        started.append(t)
        return t

    yield _spawn
    for t in started:
        t.stop()


@pytest.fixture(scope="session", autouse=True)
def no_probes_left_behind() -> Iterator[None]:
    """After the run no perfd uprobe or tracefs instance may remain: every
    perfd a test started detached, or the test swept up after the one it killed."""
    yield
    from perfd.uprobes.stale import remove_stale

    try:
        left = remove_stale()
    except OSError:  # no tracefs here: nothing can have been left in it
        return
    assert not (left.events or left.instances), f"left behind by the tests: {left}"


@pytest.fixture(scope="session")
def snapshot_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.05):
    """Poll until ``predicate()`` is truthy; return it or fail with a clear message."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(interval)
