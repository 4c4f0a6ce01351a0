"""Which uprobe backend works here, and the fix for each that does not.

For ``perfd doctor``: each check does the real thing on a small scale (compile
and load the BPF program; create and remove a tracefs instance), because
"module importable" says nothing about kernel headers or privileges.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from perfd.cpython.layouts import frame_walk, generated_layout, supported_minors
from perfd.uprobes.bcc_backend import BccError, compile_program, load_functions
from perfd.uprobes.tracefs import TracefsError, instance_name, remove_instance, tracefs_root


@dataclass(frozen=True)
class BackendCheck:
    backend: str  # "bcc" | "tracefs"
    works: bool
    detail: str  # what was checked, or the exact fix


def check_bcc() -> BackendCheck:
    """With the frame walk of the newest supported CPython: the variant with
    the most for the verifier to accept."""
    walk = frame_walk(generated_layout(supported_minors()[-1]))
    try:
        bpf = compile_program(0, [0], walk)
        try:
            load_functions(bpf, [0])
        finally:
            bpf.cleanup()
    except BccError as e:
        fix = "apt install python3-bpfcc linux-headers-$(uname -r); run as root or with CAP_BPF+CAP_PERFMON"
        return BackendCheck("bcc", False, f"{e} — fix: {fix}")
    return BackendCheck("bcc", True, "probe program (with its Python frame walk) compiles and passes the verifier")


def check_tracefs() -> BackendCheck:
    try:
        root = tracefs_root()
    except TracefsError as e:
        return BackendCheck("tracefs", False, str(e))
    if not os.access(root / "uprobe_events", os.W_OK):
        return BackendCheck("tracefs", False, f"{root}/uprobe_events not writable — fix: run as root")
    probe = root / "instances" / instance_name(os.getpid(), 0)
    try:
        os.mkdir(probe)
        remove_instance(probe)
    except (OSError, TracefsError) as e:
        return BackendCheck("tracefs", False, f"cannot create a tracefs instance under {root}/instances: {e}")
    return BackendCheck("tracefs", True, f"uprobe_events and instances usable at {root}")


def check_backends() -> list[BackendCheck]:
    """bcc first: that is what ``--uprobes-backend auto`` tries first."""
    return [check_bcc(), check_tracefs()]
