"""``./dev`` and ``.ci/run``: idempotent set-up, quiet when done, and the fixes it applies really work."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

from conftest import ROOT, require

DEV = ROOT / "dev"
CI = ROOT / ".ci" / "run"


def run(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, **env})


def require_root() -> None:
    require("root", os.geteuid() == 0, "./dev installs system packages")


def test_second_install_is_silent_and_never_calls_pip():
    require_root()
    first = run([str(DEV), "install"])
    assert first.returncode == 0, first.stderr
    # No index at all: if pip ran (an editable install needs setuptools from
    # the index for build isolation) this would fail.
    again = run([str(DEV), "install"], PIP_NO_INDEX="1", PIP_INDEX_URL="http://127.0.0.1:9/")
    assert again.returncode == 0, again.stderr
    assert again.stdout == "" and again.stderr == ""


def test_venv_sees_debian_bcc():
    require_root()
    assert run([str(DEV), "install"]).returncode == 0
    cfg = (ROOT / ".venv" / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in cfg
    proc = run([str(ROOT / ".venv" / "bin" / "python"), "-c", "import bcc, perfd; print(bcc.__file__)"])
    assert proc.returncode == 0 and proc.stdout.startswith("/usr/lib/python3/dist-packages/bcc/"), proc.stderr


def test_install_links_kernel_headers_and_mounts_tracefs():
    """On a machine missing both (a private mount namespace: the host keeps its own)."""
    require_root()
    script = textwrap.dedent(f"""\
        mount -t tmpfs none /lib/modules
        umount /sys/kernel/debug/tracing 2>/dev/null || true
        umount /sys/kernel/tracing
        ! grep -qw tracefs /proc/mounts
        {DEV} install
        readlink /lib/modules/$(uname -r)/build /lib/modules/$(uname -r)/source
        {ROOT}/.venv/bin/perfd doctor --json
    """)
    proc = run(["unshare", "--mount", "--propagation", "private", "--", "bash", "-ec", script])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dev: linking /lib/modules/" in proc.stderr and "dev: mount tracefs" in proc.stderr
    build, source = proc.stdout.splitlines()[:2]
    assert Path(build).name.startswith("linux-headers-") and build.endswith(
        subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip())
    assert source == build.rsplit("-", 1)[0] + "-common"
    report = json.loads("\n".join(proc.stdout.splitlines()[2:]))
    assert report["ok"], report
    assert Path("/lib/modules", os.uname().release, "build").resolve().is_dir()  # host untouched


def test_dev_test_runs_pytest_with_its_arguments_and_leaves_no_temp_files(tmp_path):
    require_root()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = run([str(DEV), "test", "-q", "-p", "no:cacheprovider", "tests/test_doctor.py", "-k", "missing_pid"],
               TMPDIR=str(tmp))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    assert list(tmp.iterdir()) == []


def test_ci_run_requires_privileged_facilities(tmp_path):
    require_root()
    probe = tmp_path / "test_ci_env.py"
    probe.write_text("import os\n\ndef test_env():\n    assert os.environ['PERFD_REQUIRE_PRIVILEGED'] == '1'\n")
    proc = run([str(CI), "-q", "-p", "no:cacheprovider", str(probe)], PERFD_REQUIRE_PRIVILEGED="0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


def test_unknown_command_prints_usage():
    proc = run([str(DEV), "frobnicate"])
    assert proc.returncode == 2
    assert "./dev test [PYTEST ARGS]" in proc.stderr
