"""Which of perfd's sources can run on this machine, and the exact fix for each that cannot.

Every check exercises the real facility the way perfd will use it (read a
process's memory, compile and fire a uprobe, register a tracefs probe, open a
packet socket, enter a network namespace) and undoes what it did, so a pass
means the source works, not merely that a file exists. Nothing here touches
perfd's own namespaces or leaves a probe, socket or process behind.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import pwd
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from perfd.cpython import native_walk
from perfd.cpython.discovery import SUPPORTED, locate_interpreter
from perfd.cpython.maps import find_mapped, host_path, read_maps
from perfd.capture.netns import NamespaceError, is_permission_error, run_in_netns, same_netns
from perfd.cpython.memory import ProcessMemory
from perfd.errors import (
    MemoryReadError,
    NoSuchProcess,
    NotPython,
    PermissionDenied,
    UnsupportedPython,
)
from perfd.uprobes.doctor import check_tracefs as check_tracefs_backend
from perfd.uprobes.tracefs import write_control

_ROOT_OR = "run perfd as root, or grant it"
FIX_PTRACE = (
    f"{_ROOT_OR} CAP_SYS_PTRACE (AmbientCapabilities=CAP_SYS_PTRACE, as systemd/perfd.service does)"
)
FIX_BPF = f"{_ROOT_OR} CAP_BPF and CAP_PERFMON (BPF programs and uprobe perf events; CAP_SYS_ADMIN implies both)"
FIX_TRACEFS_MOUNT = "mount -t tracefs nodev /sys/kernel/tracing"
FIX_TRACEFS_WRITE = ("run perfd as root (uid 0 owns tracefs, mode 0700) with /sys/kernel/tracing writable "
                     "(ReadWritePaths= in systemd/perfd.service)")
FIX_AF_PACKET = f"{_ROOT_OR} CAP_NET_RAW"
FIX_SETNS = f"{_ROOT_OR} CAP_SYS_ADMIN (setns into the target's network namespace)"
FIX_BCC_INSTALL = (
    "apt-get install python3-bpfcc, and run perfd from Debian's python3 or a venv made with "
    "`/usr/bin/python3 -m venv --system-site-packages .venv` (./dev does both)"
)
FIX_OPEN3D_LIBS = "apt-get install libusb-1.0-0 libgomp1"
FIX_DAC = (f"{_ROOT_OR} CAP_DAC_READ_SEARCH: the target's interpreter is in a directory perfd may not search "
           "(e.g. an app user's 0700 home)")

ETH_P_ALL = 0x0003
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
BCC_DIST = Path("/usr/lib/python3/dist-packages/bcc")


@dataclass(frozen=True)
class Check:
    """One facility: whether it works here, what was seen, and the command that fixes it."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None
    required: bool = True
    enables: str = ""  # the perfd source this facility serves


@dataclass
class Report:
    pid: int | None
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks if c.required)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def sources(self) -> dict[str, str | None]:
        """Per perfd source: the backend that can run here, or None."""
        passed = {c.name for c in self.checks if c.ok}
        stacks = {"ptrace-read"} | ({"python-target"} if self.pid else set())
        uprobes = None
        if {"bcc", "bpf-uprobe", "uprobe-program", "kernel-headers"} <= passed:
            uprobes = "bcc"
        elif {"tracefs", "uprobe-events", "tracefs-instance"} <= passed:
            uprobes = "tracefs"
        return {
            "stacks": "process_vm_readv" if stacks <= passed else None,
            "uprobes": uprobes,
            "capture": "af_packet" if {"af-packet", "setns"} <= passed else None,
        }

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "pid": self.pid,
            "kernel": platform.release(),
            "euid": os.geteuid(),
            "checks": [asdict(c) for c in self.checks],
            "sources": self.sources(),
        }

    def render(self) -> str:
        target = f"target PID {self.pid}" if self.pid else "no target PID (checks use a spawned process)"
        lines = [f"perfd doctor: kernel {platform.release()}, euid {os.geteuid()}, {target}"]
        width = max(len(c.name) for c in self.checks)
        for c in self.checks:
            mark = "ok" if c.ok else ("FAIL" if c.required else "warn")
            lines.append(f"  {mark:<5} {c.name:<{width}}  {c.detail}")
            if not c.ok and c.fix:
                lines.append(f"  {'':<5} {'':<{width}}  fix: {c.fix}")
        on = ", ".join(f"{k} {'on (' + v + ')' if v else 'OFF'}" for k, v in self.sources().items())
        lines.append(f"sources: {on}")
        return "\n".join(lines)


def run_checks(pid: int | None = None) -> Report:
    """All checks, against ``pid`` when given. Raises ``NoSuchProcess`` for a missing PID."""
    if pid is not None and not os.path.exists(f"/proc/{pid}"):
        raise NoSuchProcess(f"no process with PID {pid}")
    report = Report(pid)
    if pid is None:
        report.checks.append(check_ptrace_spawned())
    else:
        report.checks += [check_ptrace_pid(pid), check_python_target(pid)]
    report.checks.append(check_native_walker())
    report.checks += check_bcc()
    report.checks += [
        check_kernel_headers(),
        check_tracefs(),
        check_uprobe_events(),
        check_tracefs_instance(),
        check_af_packet(),
        check_setns(pid),
        check_open3d_libs(pid),
    ]
    return report


# --- reading target memory -------------------------------------------------


def check_native_walker() -> Check:
    """The stack reader's C core: without it stacks still work, at ~3x the CPU per sample."""
    status = native_walk.status()
    if status.available:
        return Check("native-walker", True, f"{native_walk.LIBRARY.name} loaded (stack walks in C)",
                     required=False, enables="stacks")
    return Check("native-walker", False, f"stacks are walked in Python (more CPU per sample): {status.reason}",
                 "apt-get install gcc libc6-dev, then `python3 -m perfd.cpython.native_walk` builds it"
                 " (./dev install does both)",
                 required=False, enables="stacks")


def check_ptrace_pid(pid: int) -> Check:
    """Read the first bytes of the target's first readable mapping."""
    name, enables = "ptrace-read", "stacks"
    try:
        region = next(m for m in read_maps(pid) if m.perms.startswith("r") and m.path.startswith("/"))
        with ProcessMemory(pid) as mem:
            mem.read(region.start, 16)
    except StopIteration:
        return Check(name, False, f"PID {pid} maps no readable file", None, enables=enables)
    except PermissionDenied as e:
        return Check(name, False, str(e), _ptrace_fix(), enables=enables)
    except MemoryReadError as e:
        return Check(name, False, f"cannot read PID {pid}: {e}", _ptrace_fix(), enables=enables)
    return Check(name, True, f"read PID {pid}'s memory at {region.start:#x} ({os.path.basename(region.path)})",
                 enables=enables)


def check_python_target(pid: int) -> Check:
    name, enables = "python-target", "stacks"
    supported = ", ".join(f"{a}.{b}" for a, b in SUPPORTED)
    try:
        interp = locate_interpreter(pid)
    except UnsupportedPython as e:
        return Check(name, False, str(e), f"run the server on CPython {supported}", enables=enables)
    except (NotPython, PermissionError) as e:  # PermissionError: elf.py's stat of an unsearchable path
        unreadable = _unreadable_image(pid)
        if unreadable:
            return Check(name, False, f"cannot open PID {pid}'s {unreadable}: permission denied", FIX_DAC,
                         enables=enables)
        return Check(name, False, str(e), "pass the PID of the Python server process (e.g. `pgrep -f uvicorn`)",
                     enables=enables)
    except PermissionDenied as e:
        return Check(name, False, str(e), _ptrace_fix(), enables=enables)
    exact = "" if interp.version_exact else " (from the library name)"
    return Check(name, True, f"CPython {interp.version}{exact}, supported; interpreter in "
                 f"{os.path.basename(interp.binary)}", enables=enables)


def _unreadable_image(pid: int) -> str | None:
    """A file the target maps that perfd may not open: a NotPython that is really EACCES."""
    try:
        paths = dict.fromkeys(m.path for m in read_maps(pid) if m.path.startswith("/"))
    except (PermissionDenied, NoSuchProcess):
        return None
    for path in paths:
        try:
            with open(host_path(pid, path), "rb"):
                pass
        except PermissionError:
            return path
        except OSError:
            continue
    return None


_DETACHED_CHILD = (
    "import os, sys\n"
    "if os.fork():\n"
    "    os._exit(0)\n"
    "print(os.getpid(), flush=True)\n"
    "sys.stdin.read()\n"
)


def check_ptrace_spawned() -> Check:
    """Read a Python process that is *not* our descendant, like a real target.

    A double fork re-parents it, so Yama's ptrace_scope=1 (descendants only)
    applies as it will to a server started by someone else; as root it also
    runs as another user (nobody), so reading it needs what a real target needs.
    """
    name, enables = "ptrace-read", "stacks"
    try:
        proc, user = _spawn_detached()
    except OSError as e:
        return Check(name, False, f"could not spawn a process to read: {e}", None, enables=enables)
    child = None
    try:
        line = proc.stdout.readline().strip()
        proc.wait(timeout=10)
        if not line.isdigit():
            return Check(name, False, "could not spawn a Python process to read", None, enables=enables)
        child = int(line)
        read = check_ptrace_pid(child)
    finally:
        proc.stdin.close()  # the detached child exits on EOF
        proc.stdout.close()
        if child is not None:
            _kill_quietly(child)
    if not read.ok:
        return Check(name, False, f"spawned PID {child} (as {user}): {read.detail}", read.fix, enables=enables)
    note = ""
    if user == "our own user" and not _has_capability(CAP_SYS_PTRACE):
        note = "; another user's target also needs CAP_SYS_PTRACE"
    return Check(name, True, f"read spawned PID {child}'s memory (running as {user}) with process_vm_readv{note}",
                 enables=enables)


def _spawn_detached() -> tuple[subprocess.Popen, str]:
    argv = [os.path.realpath(sys.executable), "-I", "-c", _DETACHED_CHILD]
    kwargs = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
    if os.geteuid() == 0:
        try:
            nobody = pwd.getpwnam("nobody")
            return subprocess.Popen(argv, user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[], **kwargs), \
                "user nobody"
        except (KeyError, PermissionError):
            pass  # no such user, or no CAP_SETUID (e.g. under the unit's bounding set)
    return subprocess.Popen(argv, **kwargs), "our own user"


def _ptrace_fix() -> str:
    scope = _read_text("/proc/sys/kernel/yama/ptrace_scope")
    if scope == "3":
        return "kernel.yama.ptrace_scope=3 forbids all reads until reboot: set it to 1 at boot (sysctl.d), then " \
            + FIX_PTRACE
    return FIX_PTRACE


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


# --- BPF through bcc -------------------------------------------------------

# Runs in a child: bcc prints compiler errors on fd 2, and a broken libbcc must
# not take the doctor down. The trivial uprobe fires on the child's own
# getpid(); then perfd's own probe program must compile and pass the verifier.
_BCC_PROBE = r'''
import json, os
out = {"imported": False}
try:
    import bcc
except Exception as e:
    out["error"] = f"{type(e).__name__}: {e}"
else:
    out.update(imported=True, path=os.path.dirname(bcc.__file__))
    try:
        b = bcc.BPF(text="""
BPF_ARRAY(hits, u64, 1);
int hit(void *ctx) { int k = 0; u64 *v = hits.lookup(&k); if (v) __sync_fetch_and_add(v, 1); return 0; }
""")
        out["compiled"] = True
        try:
            # through perfd's own entry point: bcc's attach_uprobe passes stack
            # garbage as the USDT semaphore offset (see perfd.uprobes.bcc_backend)
            from perfd.uprobes.bcc_backend import _attach_uprobe_fn
            path, offset = bcc.BPF._check_path_symbol(b"c", b"getpid", None, os.getpid())
            fn = b.load_func(b"hit", bcc.BPF.KPROBE)
            ev_name = f"perfd_doctor_{os.getpid()}".encode()
            fd = _attach_uprobe_fn()(fn.fd, 0, ev_name, path, offset, os.getpid(), 0)
            if fd < 0:
                raise OSError(f"attaching a uprobe at {path.decode()}:{offset:#x} failed")
            b._add_uprobe_fd(ev_name, fd)
            out["attached"] = True
            for _ in range(3):
                os.getpid()
            out["hits"] = b["hits"][0].value
        finally:
            b.cleanup()
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    try:
        from perfd.uprobes.doctor import check_bcc
        r = check_bcc()
        out["program"] = [r.works, r.detail.split(" \u2014 fix: ")[0]]
    except Exception as e:
        out["program"] = [False, f"{type(e).__name__}: {e}"]
print(json.dumps(out), flush=True)
'''

_BCC_CHECKS = ("bcc", "bpf-uprobe", "uprobe-program")


def check_bcc(python: str | None = None) -> list[Check]:
    """``bcc`` importable; a trivial uprobe compiled, attached, fired and detached; perfd's program verified."""
    python = python or sys.executable
    try:
        proc = subprocess.run([python, "-c", _BCC_PROBE], capture_output=True, text=True, timeout=120)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as e:
        why = f"bcc probe process failed: {e!r}"
        return [Check(n, False, why, FIX_BCC_INSTALL, enables="uprobes") for n in _BCC_CHECKS]
    if not result.get("imported"):
        err, fix = result.get("error", "import failed"), _bcc_import_fix(python)
        return [Check("bcc", False, f"cannot import bcc in {python}: {err}", fix, enables="uprobes"),
                *(Check(n, False, "skipped: bcc is not importable", fix, enables="uprobes") for n in _BCC_CHECKS[1:])]
    stderr = proc.stderr.strip()
    checks = [Check("bcc", True, f"imported from {result['path']}", enables="uprobes")]
    if result.get("hits", 0) > 0:
        checks.append(Check("bpf-uprobe", True, f"compiled a BPF program, attached a uprobe to libc getpid, "
                            f"saw {result['hits']} hits, detached", enables="uprobes"))
    else:
        stage = "attach the uprobe" if result.get("compiled") else "compile/load the BPF program"
        if result.get("attached"):
            stage = "see the uprobe fire"
        err = result.get("error", "")
        first = next((ln for ln in stderr.splitlines() if ln.strip()), "")
        detail = f"cannot {stage}: {err}" + (f" ({first})" if first else "")
        checks.append(Check("bpf-uprobe", False, detail, _bpf_fix(err + "\n" + stderr), enables="uprobes"))
    ok, detail = result.get("program", [False, "not run"])
    if ok:
        checks.append(Check("uprobe-program", True, f"perfd's Open3D {detail}", enables="uprobes"))
    else:
        checks.append(Check("uprobe-program", False, detail, _bpf_fix(detail + "\n" + stderr), enables="uprobes"))
    return checks


def _bcc_import_fix(python: str) -> str:
    """Why ``python`` cannot see Debian's bcc, as a command."""
    if not BCC_DIST.is_dir():
        return FIX_BCC_INSTALL
    prefix = Path(python).parent.parent
    cfg = _read_text(str(prefix / "pyvenv.cfg"))
    if cfg is not None and not re.search(r"include-system-site-packages\s*=\s*true", cfg):
        return (f"bcc is installed but the venv {prefix} hides system packages: recreate it with "
                f"`/usr/bin/python3 -m venv --system-site-packages {prefix}`")
    return (f"bcc is in {BCC_DIST.parent}, which {python} does not search: run perfd from Debian's "
            "/usr/bin/python3 or a venv made from it with --system-site-packages")


def _bpf_fix(text: str) -> str:
    denied = any(w in text for w in ("Operation not permitted", "EPERM", "Permission denied"))
    admin = _has_capability(CAP_SYS_ADMIN)
    if denied or not (admin or _has_capability(CAP_BPF) and _has_capability(CAP_PERFMON)):
        return FIX_BPF
    if not kernel_build_dir().joinpath("include").is_dir() or "linux/" in text and "not found" in text:
        return "install kernel headers: " + kernel_headers_fix()
    return "see the error above; `perfd doctor` as root on a kernel with CONFIG_BPF_SYSCALL and CONFIG_UPROBES"


# --- kernel headers --------------------------------------------------------


def kernel_build_dir(release: str | None = None) -> Path:
    return Path("/lib/modules") / (release or platform.release()) / "build"


def check_kernel_headers(release: str | None = None) -> Check:
    release = release or platform.release()
    build = kernel_build_dir(release)
    source = build.parent / "source"
    config = build / "include" / "generated" / "autoconf.h"
    # Debian splits headers: arch-specific (generated config) and -common (the rest).
    common = [p / "include" / "linux" / "kconfig.h" for p in (build, source)]
    if config.is_file() and any(p.is_file() for p in common):
        return Check("kernel-headers", True, f"{build} -> {build.resolve()}", enables="uprobes")
    seen = "missing" if not build.exists() else f"incomplete ({build.resolve()})"
    return Check("kernel-headers", False, f"{build} {seen}; bcc needs it to compile probes",
                 kernel_headers_fix(release), enables="uprobes")


def kernel_headers_fix(release: str | None = None) -> str:
    """The exact commands that give bcc headers for the running kernel.

    Debian's package for the running kernel is best; a kernel Debian does not
    ship (a cloud/VM kernel) gets the distribution headers symlinked in, which
    is what bcc's simple probes need.
    """
    release = release or platform.release()
    if _apt_has(f"linux-headers-{release}"):
        return f"apt-get install linux-headers-{release}"
    arch = _dpkg_arch()
    ver = _installed_headers_version(arch) or _apt_headers_version(arch) or "<version>"
    mods = f"/lib/modules/{release}"
    return (f"apt-get install linux-headers-{arch} && mkdir -p {mods} && "
            f"ln -sfn /usr/src/linux-headers-{ver}-{arch} {mods}/build && "
            f"ln -sfn /usr/src/linux-headers-{ver}-common {mods}/source")


def _apt_has(package: str) -> bool:
    out = _run(["apt-cache", "policy", package])
    return bool(re.search(r"Candidate:\s*(?!\(none\))\S", out))


def _dpkg_arch() -> str:
    return _run(["dpkg", "--print-architecture"]).strip() or {"x86_64": "amd64", "aarch64": "arm64"}.get(
        platform.machine(), platform.machine())


def _installed_headers_version(arch: str) -> str | None:
    suffix = f"-{arch}"
    found = [p.name[len("linux-headers-"):-len(suffix)] for p in Path("/usr/src").glob(f"linux-headers-*{suffix}")
             if (p.parent / (p.name[:-len(suffix)] + "-common")).is_dir()]
    return max(found, key=_version_key) if found else None


def _apt_headers_version(arch: str) -> str | None:
    m = re.search(rf"Depends: linux-headers-(\S+)-{arch}\b", _run(["apt-cache", "depends", f"linux-headers-{arch}"]))
    return m.group(1) if m else None


def _version_key(v: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", v)]


# --- tracefs ---------------------------------------------------------------


def tracefs_mount() -> Path | None:
    """Where tracefs is mounted, preferring /sys/kernel/tracing."""
    mounts = _read_text("/proc/mounts") or ""
    points = [ln.split()[1] for ln in mounts.splitlines() if len(ln.split()) > 2 and ln.split()[2] == "tracefs"]
    for preferred in TRACEFS_DIRS:
        if preferred in points:
            return Path(preferred)
    return Path(points[0]) if points else None


def check_tracefs() -> Check:
    root = tracefs_mount()
    if root is None:
        return Check("tracefs", False, "tracefs is not mounted", FIX_TRACEFS_MOUNT, enables="uprobes")
    return Check("tracefs", True, f"mounted at {root}", enables="uprobes")


def check_uprobe_events() -> Check:
    """Register (never enable) a uprobe on libc getpid through tracefs, then remove it."""
    name = "uprobe-events"
    root = tracefs_mount()
    if root is None:
        return Check(name, False, "tracefs is not mounted", FIX_TRACEFS_MOUNT, enables="uprobes")
    events = root / "uprobe_events"
    libc = find_mapped(read_maps(os.getpid()), r"^libc[.-]")
    offset = _file_offset(libc, "getpid") if libc else None
    if offset is None:
        return Check(name, False, "cannot find libc's getpid to probe", None, enables="uprobes")
    probe = f"perfd_doctor/p{os.getpid()}"
    try:
        write_control(events, f"p:{probe} {libc}:{offset:#x}", append=True)
    except OSError as e:
        return Check(name, False, f"cannot register a probe in {events}: {e.strerror}", FIX_TRACEFS_WRITE,
                     enables="uprobes")
    try:
        write_control(events, f"-:{probe}", append=True)
    except OSError as e:
        return Check(name, False, f"registered {probe} but cannot remove it: {e.strerror}",
                     f"echo '-:{probe}' >> {events}", enables="uprobes")
    return Check(name, True, f"registered and removed a uprobe via {events}", enables="uprobes")


def _file_offset(path: str, symbol: str) -> int | None:
    """File offset of ``symbol``'s code, which is what uprobe_events wants."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            table = elf.get_section_by_name(".dynsym")
            syms = table.get_symbol_by_name(symbol) if table else None
            if not syms:
                return None
            vaddr = syms[0]["st_value"]
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_memsz"]:
                    return vaddr - seg["p_vaddr"] + seg["p_offset"]
    except (OSError, ELFError):
        return None
    return None


def check_tracefs_instance() -> Check:
    """The tracefs backend enables and reads its probes in a private instance: creating one is its own test."""
    result = check_tracefs_backend()
    if result.works:
        return Check("tracefs-instance", True, result.detail, enables="uprobes")
    fix = FIX_TRACEFS_MOUNT if tracefs_mount() is None else FIX_TRACEFS_WRITE
    return Check("tracefs-instance", False, result.detail.split(" \u2014 fix: ")[0], fix, enables="uprobes")


# --- packet capture --------------------------------------------------------


def check_af_packet() -> Check:
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    except PermissionError as e:
        return Check("af-packet", False, f"socket(AF_PACKET) denied: {e.strerror}", FIX_AF_PACKET, enables="capture")
    except OSError as e:
        return Check("af-packet", False, f"socket(AF_PACKET) failed: {e.strerror}",
                     "use a kernel with CONFIG_PACKET (modprobe af_packet)", enables="capture")
    sock.close()
    return Check("af-packet", True, "opened and closed a raw AF_PACKET socket", enables="capture")


def check_setns(pid: int | None) -> Check:
    """Open a packet socket inside the target's network namespace, the way capture does.

    ``perfd.capture.netns`` enters the namespace on a helper thread, so
    perfd's own never changes. Without a PID the namespace is a fresh one
    held by a helper process (``unshare --net``), which needs the same
    capability as entering the target's.
    """
    if pid is None:
        return _check_fresh_netns()
    try:
        if same_netns(pid):
            return Check("setns", True, f"PID {pid} shares perfd's network namespace: capture needs no setns",
                         enables="capture")
        inode = run_in_netns(pid, _packet_socket_netns)
    except OSError as e:
        return _netns_failure(e)
    return Check("setns", True, f"opened a packet socket inside PID {pid}'s network namespace net:[{inode}]",
                 enables="capture")


_NETNS_HELPER = "import sys; print('READY', flush=True); sys.stdin.read()"


def _check_fresh_netns() -> Check:
    if shutil.which("unshare") is None:
        return Check("setns", False, "unshare (util-linux) not found", "apt-get install util-linux", enables="capture")
    helper = subprocess.Popen(["unshare", "--net", "--", os.path.realpath(sys.executable), "-I", "-c", _NETNS_HELPER],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if "READY" not in helper.stdout.readline():
            err = helper.stderr.read().strip()
            fix = FIX_SETNS if "not permitted" in err.lower() else None
            return Check("setns", False, f"cannot make a network namespace to enter: {err}", fix, enables="capture")
        inode = run_in_netns(helper.pid, _packet_socket_netns)
    except OSError as e:
        return _netns_failure(e)
    finally:
        helper.kill()
        helper.wait()
        for stream in (helper.stdin, helper.stdout, helper.stderr):
            stream.close()
    return Check("setns", True, f"opened a packet socket inside a fresh network namespace net:[{inode}]",
                 enables="capture")


def _packet_socket_netns() -> int:
    """Open (and close) a packet socket here; the inode of the namespace it was opened in."""
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)).close()
    return os.stat("/proc/thread-self/ns/net").st_ino


def _netns_failure(e: OSError) -> Check:
    if isinstance(e, NamespaceError):
        detail, fix = e.strerror, FIX_SETNS if is_permission_error(e) else None
    elif e.filename:  # opening /proc/PID/ns/net is a ptrace-read access check
        detail, fix = f"open {e.filename}: {e.strerror}", _ptrace_fix() if is_permission_error(e) else None
    else:
        detail = f"socket(AF_PACKET) inside the namespace: {e.strerror}"
        fix = FIX_AF_PACKET if is_permission_error(e) else None
    return Check("setns", False, detail, fix, enables="capture")


# --- Open3D (the demo and Open3D targets) ----------------------------------


def check_open3d_libs(pid: int | None) -> Check:
    """libOpen3D needs libusb and libgomp at load time; the demo cannot start without them."""
    missing = []
    for soname in ("libusb-1.0.so.0", "libgomp.so.1"):
        try:
            ctypes.CDLL(soname)
        except OSError:
            missing.append(soname)
    why = "needed by the demo's Open3D"
    if pid is not None:
        try:
            lib = find_mapped(read_maps(pid), r"^libOpen3D")
        except (PermissionDenied, NoSuchProcess):
            lib = None
        if lib:
            why = f"PID {pid} uses {os.path.basename(lib)}"
    if missing:
        return Check("open3d-runtime", False, f"missing {', '.join(missing)} ({why})", FIX_OPEN3D_LIBS,
                     required=False, enables="demo")
    return Check("open3d-runtime", True, f"libusb-1.0 and libgomp load ({why})", required=False, enables="demo")


# --- helpers ---------------------------------------------------------------


def _has_capability(cap: int) -> bool:
    eff = re.search(r"^CapEff:\s*([0-9a-f]+)", _read_text("/proc/self/status") or "", re.M)
    return bool(eff and int(eff.group(1), 16) >> cap & 1)


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _run(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return ""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


__all__ = ["Check", "Report", "run_checks", "kernel_headers_fix", "tracefs_mount"]
