"""The systemd unit verifies, is hardened, grants exactly perfd's capabilities; the example config parses."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT, TARGETS, require
from perfd import doctor

UNIT = ROOT / "systemd" / "perfd.service"
CONFIG = ROOT / "systemd" / "perfd.toml"
INSTALLED_PERFD = "/usr/local/bin/perfd"
CAPS = {"CAP_SYS_PTRACE", "CAP_BPF", "CAP_PERFMON", "CAP_NET_RAW", "CAP_SYS_ADMIN", "CAP_DAC_READ_SEARCH"}


def directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture
def unit_with_real_perfd(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at the perfd this checkout installed (verify needs it to exist)."""
    perfd = shutil.which("perfd", path=str(Path(sys.executable).parent))
    require("installed perfd console script", perfd is not None)
    copy = tmp_path / "perfd.service"
    copy.write_text(UNIT.read_text().replace(INSTALLED_PERFD, perfd))
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess:
    require("systemd-analyze", shutil.which("systemd-analyze") is not None)
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60)


def test_unit_passes_systemd_analyze_verify(unit_with_real_perfd):
    proc = analyze("verify", str(unit_with_real_perfd))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""


@pytest.mark.parametrize("good, bad, complaint", [
    ("ProtectSystem=strict", "ProtectSystem=strictest", "Failed to parse protect system value"),
    ("ExecStart=/", "ExecStart=/nonexistent/", "/nonexistent/"),
])
def test_verify_catches_a_broken_unit(unit_with_real_perfd, good, bad, complaint):
    """The pass above can fail: a bad value (only warned about) or a missing binary is reported."""
    unit_with_real_perfd.write_text(unit_with_real_perfd.read_text().replace(good, bad))
    proc = analyze("verify", str(unit_with_real_perfd))
    assert complaint in proc.stderr


def test_execstart_runs_perfd_serve_with_the_config():
    d = directives(UNIT)
    assert d["ExecStart"] == [f"{INSTALLED_PERFD} serve --config /etc/perfd/perfd.toml"]
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["Restart"] == ["on-failure"]
    assert re.fullmatch(r"\d+s", d["WatchdogSec"][0])


def test_hardening_directives():
    d = directives(UNIT)
    for key, value in {
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ProtectHome": "read-only",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "net",
        "SystemCallArchitectures": "native",
    }.items():
        assert d.get(key) == [value], key
    assert set(d["ReadWritePaths"][0].split()) >= {"-/sys/kernel/tracing"}
    assert set(d["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_PACKET", "AF_NETLINK"}


def test_capabilities_are_exactly_perfds_and_each_is_justified():
    d = directives(UNIT)
    assert set(d["CapabilityBoundingSet"][0].split()) == CAPS
    assert set(d["AmbientCapabilities"][0].split()) == CAPS
    text = UNIT.read_text()
    for cap in CAPS:
        assert re.search(rf"^#\s+(CAP_\w+, )*{cap}(, CAP_\w+)*\s+\S+", text, re.M), f"{cap} not justified"


def test_security_exposure_is_ok(unit_with_real_perfd):
    """systemd's own scoring of the sandbox: 'OK' (< 4.0 of 10), despite CAP_SYS_ADMIN/ptrace/BPF."""
    proc = analyze("security", "--offline=true", "--no-pager", str(unit_with_real_perfd))
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", proc.stdout)
    assert match, proc.stdout[-500:] + proc.stderr
    assert float(match.group(1)) < 4.0 and match.group(2) == "OK", match.group(0)


def test_example_config_parses_with_the_documented_sections():
    cfg = tomllib.loads(CONFIG.read_text())
    assert set(cfg) == {"target", "server", "sampling", "sources"}
    assert cfg["target"]["pidfile"].startswith("/")
    assert cfg["server"] == {"host": "127.0.0.1", "port": 9105, "insecure": False, "broadcast_hz": 1.0}
    assert cfg["sampling"]["rate_hz"] == 250
    assert cfg["sources"] == {"uprobes": True, "uprobes_backend": "auto", "capture": True}
    commented = re.findall(r"^# (\w+) = ", CONFIG.read_text(), re.M)
    assert {"pid", "systemd_unit", "cmdline", "token", "profile"} <= set(commented)


# --- the capability set, exercised: perfd doctor under exactly the unit's bounding set ----------


@pytest.fixture(scope="module")
def foreign_target():
    """A CPython target as another user would run it: uid nobody, interpreter in a 0700 directory, own netns.

    Debian's python3.11 is a static build (the interpreter lives in the executable), so a copy runs anywhere.
    """
    require("root", os.geteuid() == 0, "starting a target as another user")
    require("setpriv and unshare", shutil.which("setpriv") is not None and shutil.which("unshare") is not None)
    home = Path(tempfile.mkdtemp(prefix="perfd-app-", dir="/tmp"))
    exe = home / "python3.11"
    shutil.copy2("/usr/bin/python3.11", exe)
    script = home / "idle.py"
    shutil.copy2(TARGETS / "idle.py", script)
    shutil.chown(home, "nobody", "nogroup")
    for p in (exe, script):
        shutil.chown(p, "nobody", "nogroup")
    home.chmod(0o700)
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    proc = subprocess.Popen(["unshare", "--net", "--", *as_nobody, str(exe), str(script)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd="/")
    try:
        assert "READY" in proc.stdout.readline()
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(home, ignore_errors=True)


def unit_caps() -> list[str]:
    return directives(UNIT)["CapabilityBoundingSet"][0].split()


def doctor_with_caps(caps: list[str], pid: int) -> dict:
    bounding = ",".join(["-all", *("+" + c.removeprefix("CAP_").lower() for c in caps)])
    proc = subprocess.run(["setpriv", f"--bounding-set={bounding}", sys.executable, "-m", "perfd", "doctor",
                           str(pid), "--json"], capture_output=True, text=True, timeout=120, cwd="/",
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    report = json.loads(proc.stdout)
    report["failed"] = {c["name"]: c["fix"] for c in report["checks"] if not c["ok"]}
    return report


def test_the_units_capabilities_are_enough_for_every_source(foreign_target):
    report = doctor_with_caps(unit_caps(), foreign_target)
    assert report["failed"] == {}
    setns = next(c for c in report["checks"] if c["name"] == "setns")
    assert setns["detail"].startswith(f"opened a packet socket inside PID {foreign_target}'s network namespace")
    assert all(report["sources"].values()), report["sources"]


@pytest.mark.parametrize("cap, failures", [
    ("CAP_SYS_PTRACE", {"ptrace-read": doctor.FIX_PTRACE, "python-target": doctor.FIX_PTRACE,
                        "setns": doctor.FIX_PTRACE}),
    ("CAP_DAC_READ_SEARCH", {"python-target": doctor.FIX_DAC}),
    ("CAP_NET_RAW", {"af-packet": doctor.FIX_AF_PACKET, "setns": doctor.FIX_AF_PACKET}),
    # uprobes need only CAP_BPF + CAP_PERFMON (CAP_SYS_ADMIN would imply both)
    ("CAP_SYS_ADMIN", {"setns": doctor.FIX_SETNS}),
    ("CAP_SYS_ADMIN CAP_BPF CAP_PERFMON", {"setns": doctor.FIX_SETNS, "bpf-uprobe": doctor.FIX_BPF,
                                           "uprobe-program": doctor.FIX_BPF}),
])
def test_each_capability_is_needed_and_its_absence_names_the_fix(foreign_target, cap, failures):
    report = doctor_with_caps([c for c in unit_caps() if c not in cap.split()], foreign_target)
    assert report["failed"] == failures
