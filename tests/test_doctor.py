"""``perfd doctor``: real checks against real processes, and real failures that print their fix."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import psutil
import pytest

from perfd import doctor
from conftest import ROOT, TARGET_VERSIONS, TARGETS, python_for, require

PERFD = [sys.executable, "-m", "perfd"]
KERNEL_CHECKS = ("bpf-uprobe", "uprobe-events", "af-packet", "setns")


def run_doctor(*args: str, user: str | None = None) -> subprocess.CompletedProcess:
    argv = [*PERFD, "doctor", *args]
    if user:
        argv = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/",
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def as_json(proc: subprocess.CompletedProcess) -> dict:
    data = json.loads(proc.stdout)
    data["by_name"] = {c["name"]: c for c in data["checks"]}
    return data


def netns_inode(pid: int | str = "self") -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def require_root() -> None:
    require("root", os.geteuid() == 0, "doctor's checks pass only with perfd's privileges")


def test_every_check_passes_here_as_root():
    require_root()
    proc = run_doctor("--json")
    report = as_json(proc)
    failed = {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}
    assert proc.returncode == 0 and report["ok"], failed
    assert not failed
    assert report["sources"] == {"stacks": "process_vm_readv", "uprobes": "bcc", "capture": "af_packet"}
    assert "hits" in report["by_name"]["bpf-uprobe"]["detail"]


def test_text_output_lists_each_check_and_sources():
    require_root()
    proc = run_doctor()
    assert proc.returncode == 0, proc.stdout
    for name in ("ptrace-read", "native-walker", "bcc", "bpf-uprobe", "uprobe-program", "kernel-headers", "tracefs", "uprobe-events",
                 "tracefs-instance", "af-packet", "setns", "open3d-runtime"):
        assert re.search(rf"^  ok\s+{name}\s", proc.stdout, re.M), proc.stdout
    assert "sources: stacks on" in proc.stdout


@pytest.mark.parametrize("version", TARGET_VERSIONS)
def test_against_a_python_target_reports_its_version(spawn, version):
    require_root()
    target = spawn("idle.py", version=version)
    exact = subprocess.run([python_for(version), "-c", "import platform; print(platform.python_version())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    proc = run_doctor(str(target.pid), "--json")
    report = as_json(proc)
    assert proc.returncode == 0, report
    assert report["pid"] == target.pid
    py = report["by_name"]["python-target"]
    assert py["ok"] and f"CPython {exact}," in py["detail"]
    assert f"PID {target.pid} shares perfd's network namespace" in report["by_name"]["setns"]["detail"]
    assert target.proc.poll() is None  # the doctor never harms the target


def test_unsupported_python_fails_with_the_supported_versions(spawn):
    require_root()
    target = spawn("idle.py", version="3.9")
    proc = run_doctor(str(target.pid), "--json")
    check = as_json(proc)["by_name"]["python-target"]
    assert proc.returncode == 1
    assert not check["ok"] and "3.9" in check["detail"]
    assert check["fix"] == "run the server on CPython 3.10, 3.11, 3.12, 3.13"


def test_non_python_pid_fails_python_target_only():
    require_root()
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        report = as_json(proc := run_doctor(str(sleeper.pid), "--json"))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert proc.returncode == 1
    failed = [c["name"] for c in report["checks"] if not c["ok"]]
    assert failed == ["python-target"]
    assert "not a CPython process" in report["by_name"]["python-target"]["detail"]
    assert "pgrep" in report["by_name"]["python-target"]["fix"]


def test_missing_pid_is_exit_2_with_one_line():
    proc = run_doctor("999999999")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["perfd: error: no process with PID 999999999"]


def test_enters_a_target_in_another_network_namespace():
    require_root()
    require("unshare --net", shutil.which("unshare") is not None)
    target = subprocess.Popen(["unshare", "--net", "--", python_for("3.12"), str(TARGETS / "idle.py")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert "READY" in target.stdout.readline()
        own = netns_inode()
        theirs = netns_inode(target.pid)
        assert theirs != own
        check = doctor.check_setns(target.pid)
        assert check.ok, check
        assert check.detail == f"opened a packet socket inside PID {target.pid}'s network namespace net:[{theirs}]"
        assert netns_inode() == own
        assert os.stat("/proc/thread-self/ns/net").st_ino == own
    finally:
        target.kill()
        target.wait()


def test_setns_leaves_perfds_own_namespace_untouched():
    require_root()
    own = netns_inode()
    check = doctor.check_setns(None)
    assert check.ok, check
    assert f"net:[{own}]" not in check.detail  # a fresh namespace, not ours
    assert netns_inode() == own and os.stat("/proc/thread-self/ns/net").st_ino == own


def test_nothing_is_left_behind():
    require_root()
    report = doctor.run_checks()
    assert report.ok, report.render()
    spawned = int(re.search(r"spawned PID (\d+)", report.check("ptrace-read").detail).group(1))
    assert not Path(f"/proc/{spawned}").exists() or _is_zombie(spawned)
    assert "perfd_doctor" not in (doctor.tracefs_mount() / "uprobe_events").read_text()
    assert not [t for t in threading.enumerate() if t.name.startswith("perfd-netns")]
    assert not [c for c in psutil.Process().children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _require_setpriv() -> None:
    require_root()
    require("setpriv", shutil.which("setpriv") is not None, "needed to drop privileges")


def test_unprivileged_run_fails_each_kernel_check_with_its_fix():
    _require_setpriv()
    proc = run_doctor("--json", user="nobody")
    report = as_json(proc)
    assert proc.returncode == 1 and report["euid"] != 0
    expected = {
        "bpf-uprobe": doctor.FIX_BPF,
        "uprobe-program": doctor.FIX_BPF,
        "uprobe-events": doctor.FIX_TRACEFS_WRITE,
        "tracefs-instance": doctor.FIX_TRACEFS_WRITE,
        "af-packet": doctor.FIX_AF_PACKET,
        "setns": doctor.FIX_SETNS,
    }
    for name, fix in expected.items():
        check = report["by_name"][name]
        assert not check["ok"], check
        assert check["fix"] == fix
    assert report["sources"]["uprobes"] is None and report["sources"]["capture"] is None


def test_unprivileged_run_cannot_read_a_root_target(spawn):
    _require_setpriv()
    target = spawn("idle.py", version="3.12")
    proc = run_doctor(str(target.pid), user="nobody")
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    fail = next(i for i, ln in enumerate(lines) if re.match(r"\s+FAIL\s+ptrace-read\s", ln))
    assert lines[fail + 1].strip() == f"fix: {doctor.FIX_PTRACE}"
    assert "stacks OFF" in lines[-1]


def test_without_ptrace_capability_another_users_process_is_unreadable():
    """No PID: the spawned process runs as nobody, so root without CAP_SYS_PTRACE fails as it would on a real target."""
    _require_setpriv()
    proc = subprocess.run(["setpriv", "--bounding-set=-sys_ptrace", *PERFD, "doctor", "--json"], capture_output=True,
                          text=True, timeout=120, cwd="/", env={**os.environ, "PYTHONPATH": str(ROOT)})
    check = as_json(proc)["by_name"]["ptrace-read"]
    assert proc.returncode == 1
    assert not check["ok"] and "as user nobody" in check["detail"]
    assert check["fix"] == doctor.FIX_PTRACE


def test_bcc_hidden_by_a_venv_without_system_site_packages(tmp_path):
    require("Debian python3-bpfcc", doctor.BCC_DIST.is_dir())
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    bcc, uprobe, program = doctor.check_bcc(python=str(venv / "bin" / "python"))
    assert not bcc.ok and "ModuleNotFoundError" in bcc.detail
    assert bcc.fix == (f"bcc is installed but the venv {venv} hides system packages: recreate it with "
                       f"`/usr/bin/python3 -m venv --system-site-packages {venv}`")
    assert not uprobe.ok and not program.ok


def test_missing_kernel_headers_fix_creates_working_links():
    """The printed fix, run as printed (minus the apt step already done here), makes the check pass."""
    require_root()
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    installed = sorted(Path("/usr/src").glob(f"linux-headers-*-{arch}"))
    require("Debian kernel headers in /usr/src", bool(installed))
    release = f"0.0.0-perfd-test-{uuid.uuid4().hex[:8]}"
    check = doctor.check_kernel_headers(release)
    assert not check.ok and f"/lib/modules/{release}/build missing" in check.detail
    apt = f"apt-get install linux-headers-{arch} && "
    assert check.fix.startswith(apt)
    version = doctor._installed_headers_version(arch)
    assert f"ln -sfn /usr/src/linux-headers-{version}-{arch} /lib/modules/{release}/build" in check.fix
    assert f"ln -sfn /usr/src/linux-headers-{version}-common /lib/modules/{release}/source" in check.fix
    try:
        subprocess.run(["sh", "-ec", check.fix[len(apt):]], check=True)
        assert doctor.check_kernel_headers(release).ok
    finally:
        shutil.rmtree(f"/lib/modules/{release}", ignore_errors=True)


_TRACEFS_STATE = "from perfd import doctor; c = doctor.check_tracefs(); print(c.ok, c.fix)"


def test_unmounted_tracefs_fails_and_its_fix_mounts_it():
    """In a private mount namespace (the host keeps its tracefs): unmount, check, run the fix, check."""
    require_root()
    require("tracefs", doctor.tracefs_mount() is not None)
    py = f"{sys.executable} -c '{_TRACEFS_STATE}'"
    script = (f"umount /sys/kernel/debug/tracing 2>/dev/null || true; umount /sys/kernel/tracing; {py}; "
              f"{doctor.FIX_TRACEFS_MOUNT}; {py}")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec", script],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    before, after = proc.stdout.splitlines()
    assert before == f"False {doctor.FIX_TRACEFS_MOUNT}"
    assert after == "True None"
    assert doctor.check_tracefs().ok  # ours untouched
