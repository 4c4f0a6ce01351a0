"""Backend without a compiler: tracefs ``uprobe_events`` read from a private instance.

Probe definitions are global (``uprobe_events``) but enabling and reading are
per instance, so perfd's events never show up in (or steal from) the system
trace buffer. Names carry the owning perfd's PID — group
``perfd_<perfd pid>_<target pid>``, instance ``perfd-<perfd pid>-<target pid>``
— so probes left behind by a killed perfd can be recognised and removed
(see ``perfd.uprobes.stale``).

The kernel filters events to the target's threads (``set_event_pid`` with
``event-fork``, which follows new threads); the tgid recorded on every line is
checked again here.

A tracefs probe runs no code, but its fetch arguments can follow pointers in
the target. Given the target's frame offsets (``perfd.cpython.layouts.frame_walk``),
each entry fetches the GIL holder's thread id and, from the holder's thread
state, the first local of each of its innermost frames: when the holder is the
calling thread (an Open3D op is called with the GIL held), the first of those
locals that is a watched node names the node calling the op — as the bcc
probe's walk does, but only as deep as the kernel lets one argument reach.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from perfd.cpython.layouts import FrameWalk
from perfd.uprobes.events import CallPairer, FrameWatch, OpEvent, PairingStats
from perfd.uprobes.symbols import ProbePoint, Resolution

log = logging.getLogger(__name__)

TRACEFS_ROOTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
GROUP_PREFIX = "perfd_"
INSTANCE_PREFIX = "perfd-"
NS_PER_US = 1000
READ_INTERVAL_S = 0.1
BUSY_READ_INTERVAL_S = 0.01  # after a drain of BUSY_BYTES or more: the buffer fills fast
BUSY_BYTES = 256 << 10
FRAMES_BUFFER_KB = 4096  # per CPU, when entries carry frames (up to 26 more values each)
# What the kernel takes in one fetch argument (kernel/trace/trace_probe.h):
# MAX_ARGSTR_LEN characters, and a bounded program — on 6.1 a dereference
# chain of 12, counting ``@ADDR`` as two. Probed here: one frame deeper fails.
MAX_ARG_CHARS = 63
MAX_DEREFS = 12
MAX_FRAMES = 12  # as the bcc walk


class TracefsError(OSError):
    """tracefs is missing or refused a write."""


def tracefs_root() -> Path:
    for root in TRACEFS_ROOTS:
        if os.path.exists(os.path.join(root, "uprobe_events")):
            return Path(root)
    raise TracefsError(errno.ENOENT, "tracefs with uprobe_events not mounted (mount -t tracefs nodev /sys/kernel/tracing)")


def group_name(perfd_pid: int, target_pid: int) -> str:
    return f"{GROUP_PREFIX}{perfd_pid}_{target_pid}"


def instance_name(perfd_pid: int, target_pid: int) -> str:
    return f"{INSTANCE_PREFIX}{perfd_pid}-{target_pid}"


def write_control(path: Path, text: str, append: bool = False) -> None:
    """One ``write(2)`` per command, as tracefs parses each write separately.
    (Python's append mode seeks to the end first, which tracefs refuses.)"""
    flags = os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC)
    try:
        fd = os.open(path, flags)
        try:
            os.write(fd, (text + "\n").encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise TracefsError(e.errno, f"writing {text!r} to {path}: {e.strerror}") from None


# --- frame fetch arguments ---------------------------------------------------------


def frame_args(walk: FrameWalk | None, max_frames: int = MAX_FRAMES) -> list[str]:
    """Fetch arguments for an entry probe: the GIL holder's thread id before
    (``ht``) and after (``hu``) the frames, and for each innermost frame its
    address (``f<i>``), first local (``l<i>``) and, where the version has
    C-stack shims, owner byte (``o<i>``); none when not even one frame fits.
    The addresses say where the chain ends: an argument whose fetch faults is
    left holding stale buffer bytes."""
    if walk is None or not walk.gil_holder_addr or walk.tstate_native_tid < 0:
        return []
    holder = f"@{walk.gil_holder_addr:#x}"  # @ADDR fetches the word at ADDR: the holder's PyThreadState*
    tid = f"+{walk.tstate_native_tid}({holder}):u32"
    args = [f"ht={tid}"]
    frame = holder
    for off in walk.tstate_to_frame:
        frame = f"+{off}({frame})"
    derefs = 2 + len(walk.tstate_to_frame)
    for i in range(max_frames):
        local = f"+{walk.localsplus}({frame})"
        if derefs + 1 > MAX_DEREFS or len(local) > MAX_ARG_CHARS:
            break
        args += [f"f{i}={frame}:x64", f"l{i}={local}:x64"]
        if walk.owner_cstack >= 0:
            args.append(f"o{i}=+{walk.owner}({frame}):u8")
        frame = f"+{walk.previous}({frame})"
        derefs += 1
    if len(args) == 1:
        return []  # no frame fits: the holder's thread id alone names nothing
    args.append(f"hu={tid}")
    return args


def _depth(args: list[str]) -> int:
    return sum(a.startswith("f") for a in args)


def frame_owner(tid: int, args: dict[str, int], owners: frozenset[int] | set[int], owner_cstack: int) -> int:
    """The first watched object among the fetched frames' first locals, innermost
    first, C-stack shims skipped; 0 unless the GIL holder was the calling thread
    both before and after the frames were read (then they are its own frames,
    which cannot change while it is inside the probed call)."""
    if args.get("ht") != tid or args.get("hu") != tid:
        return 0
    for i in range(MAX_FRAMES):
        local = args.get(f"l{i}")
        if local is None or not args.get(f"f{i}"):
            return 0
        if owner_cstack >= 0 and args.get(f"o{i}") == owner_cstack:
            continue
        if local in owners:
            return local
    return 0


# --- the trace_pipe line parser (sans-IO) -------------------------------------

# "   python-5772    (   5772) [000] DBZff   632.412540: vds_0: (0x7f46d0adc3b0) sp=0x7ffe3614e278"
_LOST = re.compile(rb"\[LOST (\d+) EVENTS\]")
_LINE = re.compile(
    r"^\s*.+?-(?P<tid>\d+)\s+\(\s*(?P<tgid>\d+|-+)\)\s+\[\d+\]\s+\S+\s+"
    r"(?P<sec>\d+)\.(?P<usec>\d{6}): (?P<event>\w+): \([^)]*\) sp=0x(?P<sp>[0-9a-f]+)(?P<args>.*)$"
)


@dataclass(frozen=True)
class ProbeHit:
    tid: int
    tgid: int | None
    ts_ns: int
    event: str
    sp: int
    args: dict[str, int]  # fetch arguments after sp (see frame_args)


def parse_line(line: str) -> ProbeHit | None:
    m = _LINE.match(line)
    if not m:
        return None
    tgid = m["tgid"]
    args = {}
    for word in m["args"].split():
        name, _, value = word.partition("=")
        try:
            args[name] = int(value, 0)
        except ValueError:
            pass  # "(fault)" and the like: not fetched
    return ProbeHit(
        tid=int(m["tid"]),
        tgid=int(tgid) if tgid.isdigit() else None,
        ts_ns=int(m["sec"]) * 1_000_000_000 + int(m["usec"]) * NS_PER_US,
        event=m["event"],
        sp=int(m["sp"], 16),
        args=args,
    )


class TraceLineDecoder:
    """Bytes from trace_pipe in, completed ``OpEvent``s out."""

    def __init__(self, target_pid: int, ops: list[str], entry_ids: dict[str, int], return_names: set[str],
                 owner_cstack: int = -1) -> None:
        self.target_pid = target_pid
        self.owner_cstack = owner_cstack
        self.owners: frozenset[int] = frozenset()  # watched objects (nodes) entries may name
        self.entry_ids = entry_ids  # event name -> op_id
        self.return_names = return_names
        self.pairer = CallPairer(ops)
        self.foreign_lines = 0  # another process's hit (filtering not supported)
        self.bad_lines = 0
        self._partial = b""

    def feed(self, data: bytes) -> list[OpEvent]:
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out = []
        for raw in lines:
            if not raw.strip():
                continue
            hit = parse_line(raw.decode("utf-8", "replace"))
            if hit is None:
                lost = _LOST.search(raw)
                if lost:
                    self.pairer.stats.lost_events += int(lost[1])
                elif not raw.startswith(b"#"):
                    self.bad_lines += 1
                continue
            if hit.tgid is not None and hit.tgid != self.target_pid:
                self.foreign_lines += 1
                continue
            op_id = self.entry_ids.get(hit.event)
            if op_id is not None:
                owner = frame_owner(hit.tid, hit.args, self.owners, self.owner_cstack) if hit.args else 0
                self.pairer.entry(hit.tid, op_id, hit.sp, hit.ts_ns, owner)
            elif hit.event in self.return_names:
                ev = self.pairer.ret(hit.tid, hit.sp, hit.ts_ns)
                if ev is not None:
                    out.append(ev)
        return out


# --- the backend ---------------------------------------------------------------


def _event_names(point: ProbePoint, index: int) -> tuple[str, str]:
    base = f"{point.op}_{index}"
    return base, base + "_ret"


class TracefsBackend:
    """uprobes via ``uprobe_events`` in ``instances/perfd-<perfd pid>-<target pid>``."""

    name = "tracefs"

    def __init__(self, pid: int, resolution: Resolution, on_event: Callable[[OpEvent], None],
                 walk: FrameWalk | None = None) -> None:
        self.pid = pid
        self.walk = walk
        self.resolution = resolution
        self.on_event = on_event
        self.root = tracefs_root()
        self.group = group_name(os.getpid(), pid)
        self.instance = self.root / "instances" / instance_name(os.getpid(), pid)
        self._defined: list[str] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._fd: int | None = None
        self._drain_lock = threading.Lock()
        entry_ids: dict[str, int] = {}
        returns: set[str] = set()
        self._points: list[tuple[str, str, str]] = []  # (return event, entry event, "path:offset")
        self.frame_depth = 0  # frames each entry reads (0: entries name no node)
        self.frames_refused: str | None = None  # why the kernel took no frame arguments
        lib = resolution.library
        assert lib is not None, "resolve Open3D before starting a backend"
        # uprobe_events takes the path in perfd's mount namespace.
        host_lib = resolution.host_library
        for i, point in enumerate(resolution.points):
            entry, ret = _event_names(point, i)
            entry_ids[entry] = point.op_id
            returns.add(ret)
            self._points.append((ret, entry, f"{host_lib}:{point.file_offset:#x}"))
        self.decoder = TraceLineDecoder(pid, resolution.ops, entry_ids, returns,
                                        walk.owner_cstack if walk is not None else -1)

    @property
    def stats(self) -> PairingStats:
        return self.decoder.pairer.stats

    def start(self) -> None:
        try:
            self._setup()
        except BaseException:
            self.stop()
            raise
        self._thread = threading.Thread(target=self._read_loop, name=f"perfd-uprobes-{self.pid}", daemon=True)
        self._thread.start()

    def _setup(self) -> None:
        try:
            os.mkdir(self.instance)
        except FileExistsError:
            pass
        except OSError as e:
            raise TracefsError(e.errno, f"cannot create tracefs instance {self.instance}: {e.strerror}") from None
        write_control(self.instance / "trace_clock", "mono")  # same clock as bpf_ktime_get_ns
        write_control(self.instance / "options" / "record-tgid", "1")
        write_control(self.instance / "options" / "event-fork", "1")
        args = frame_args(self.walk)
        for ret, entry, where in self._points:
            # Returns first: a call entered between the two writes then has a
            # return without an entry (ignored), never an entry without a return.
            self._define(f"r:{self.group}/{ret} {where} sp=%sp")
            while True:
                try:
                    self._define(" ".join([f"p:{self.group}/{entry} {where} sp=%sp", *args]))
                    break
                except TracefsError as e:
                    if not args or e.errno not in (errno.E2BIG, errno.EINVAL):
                        raise
                    # a kernel with tighter limits: one frame less, down to none
                    self.frames_refused = e.strerror
                    args = frame_args(self.walk, _depth(args) - 1)
        self.frame_depth = _depth(args)
        if self.frame_depth:
            try:
                write_control(self.instance / "buffer_size_kb", str(FRAMES_BUFFER_KB))
            except TracefsError as e:  # no memory for it: the default buffer, drained more often when busy
                log.info("tracefs: keeping the default buffer (%s)", e)
        self._set_pids()
        self._fd = os.open(self.instance / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
        try:
            write_control(self.instance / "events" / self.group / "enable", "1")
        except TracefsError as e:
            if e.errno == errno.EINVAL:
                raise TracefsError(e.errno, f"{e.strerror}: the kernel refused the uprobes — usually another "
                                   "tool's uprobe on the same function with a USDT semaphore "
                                   "('ref_ctr_offset mismatch' in dmesg)") from None
            raise
        self._set_pids()  # threads started meanwhile

    def _define(self, line: str) -> None:
        write_control(self.root / "uprobe_events", line, append=True)
        self._defined.append(line.split()[0].split(":", 1)[1])

    def _set_pids(self) -> None:
        try:
            tids = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            tids = [str(self.pid)]
        write_control(self.instance / "set_event_pid", " ".join(tids), append=True)

    def _read_loop(self) -> None:
        # A timer, not poll(): a reader blocked in poll is woken by every
        # event and would preempt the target's thread right after the call.
        interval = READ_INTERVAL_S
        while not self._stop.wait(interval):
            interval = BUSY_READ_INTERVAL_S if self.drain() >= BUSY_BYTES else READ_INTERVAL_S

    def watch(self, watch: FrameWatch) -> None:
        """Objects (nodes) an entry may name. Thread states are not needed: the
        probe starts from the GIL holder and checks it is the calling thread.
        Points are not read: fetch arguments cannot follow a code-dependent slot."""
        self.decoder.owners = frozenset(watch.owners)

    def drain(self) -> int:
        """Consume what is buffered now; returns the bytes read."""
        total = 0
        with self._drain_lock:
            while self._fd is not None:
                try:
                    data = os.read(self._fd, 1 << 16)
                except OSError:  # EAGAIN: empty
                    break
                if not data:
                    break
                total += len(data)
                for ev in self.decoder.feed(data):
                    self.on_event(ev)
        return total

    def stop(self) -> None:
        """Disable, remove every event definition, remove the instance."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        enable = self.instance / "events" / self.group / "enable"
        if enable.exists():
            try:
                write_control(enable, "0")
            except TracefsError:
                pass
        self.drain()
        with self._drain_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        remove_events(self.root, [self.group + "/" + e.split("/", 1)[1] for e in self._defined])
        self._defined.clear()
        remove_instance(self.instance)


def remove_events(root: Path, names: list[str]) -> list[str]:
    """Remove ``group/event`` definitions; returns those the kernel refused."""
    failed = []
    for name in names:
        try:
            write_control(root / "uprobe_events", f"-:{name}", append=True)
        except TracefsError as e:
            if e.errno != errno.ENOENT:
                failed.append(name)
    return failed


def remove_instance(path: Path) -> None:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise TracefsError(e.errno, f"cannot remove tracefs instance {path}: {e.strerror}") from None
