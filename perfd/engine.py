"""The attach engine: one target, its sources, and its lifetime.

The CLI commands, the daemon and the tests all drive this one class: validate
the target, start every source that can run (each that cannot is switched off
with a reason), watch the target, and on exit or detach stop every source so
nothing perfd created is left behind.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import psutil

from perfd.cpython.discovery import Interpreter, locate_interpreter
from perfd.errors import NoSuchProcess, PerfdError, UsageError
from perfd.profile import load_profile
from perfd.capture.source import CaptureSource
from perfd.reconstruction.dag import DagSource
from perfd.registry import Registry
from perfd.snapshot import TargetStatus
from perfd.system_probe import SystemProbe
from perfd.uprobes.source import UprobeSource

log = logging.getLogger(__name__)

UPROBE_BACKENDS = ("auto", "bcc", "tracefs")


@dataclass(frozen=True)
class AttachOptions:
    """Sampling knobs shared by attach, serve, snapshot and demo (SPEC §3)."""

    rate_hz: float = 250.0
    uprobes: bool = True
    uprobes_backend: str = "auto"
    capture: bool = True
    profile: str | None = None
    system_hz: float = 2.0

    def __post_init__(self) -> None:
        if not 1.0 <= self.rate_hz <= 5000.0:
            raise UsageError(f"--rate must be between 1 and 5000 Hz, got {self.rate_hz:g}")
        if self.uprobes_backend not in UPROBE_BACKENDS:
            raise UsageError(f"--uprobes-backend must be one of {', '.join(UPROBE_BACKENDS)}")


class Source(Protocol):
    name: str

    def start(self) -> bool | None: ...

    def stop(self) -> None: ...


class Engine:
    """Attach to one PID; ``detach`` (or the target's exit) undoes everything."""

    WATCH_PERIOD = 0.25  # target-exit detection latency, well inside the 2 s promise

    def __init__(self, registry: Registry, options: AttachOptions | None = None) -> None:
        self.registry = registry
        self.options = options or AttachOptions()
        self.profile = load_profile(self.options.profile)  # malformed → ProfileError (exit 2) before attaching
        self.interpreter: Interpreter | None = None
        self._sources: list[Source] = []
        self._create_time: float | None = None
        self._lock = threading.Lock()
        self._stop_watch = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.interpreter.pid if self.interpreter else None

    def attach(self, pid: int) -> Interpreter:
        """Validate ``pid`` and start sampling it. Raises ``TargetError`` (exit 2).

        A target that exits while perfd attaches makes whatever perfd was
        reading fail in its own way (a short ELF read looks like "not Python",
        a /proc file answers ESRCH); every such failure is reported as the one
        thing that happened, ``NoSuchProcess``, and what had started is stopped.
        """
        created = _create_time(pid)
        if created is None:
            raise NoSuchProcess(f"no process with PID {pid}")
        try:
            interpreter = locate_interpreter(pid)
            with self._lock:
                self._create_time = created
                self.interpreter = interpreter
                self.registry.attach(
                    TargetStatus(
                        pid=pid,
                        python=str(interpreter.version),
                        exe=interpreter.exe,
                        attached_at=time.time(),
                    )
                )
                self._start_sources(pid)
        except Exception as e:
            gone = not _alive(pid, created)
            self.detach(f"process {pid} exited while attaching" if gone else f"attach failed: {e}")
            if gone and not isinstance(e, NoSuchProcess):
                raise NoSuchProcess(f"process {pid} exited while attaching") from None
            raise
        self._stop_watch.clear()
        self._watcher = threading.Thread(target=self._watch, name="perfd-watch", daemon=True)
        self._watcher.start()
        return interpreter

    def _start_sources(self, pid: int) -> None:
        """Start every source that can run; one that cannot is off with its reason."""
        opts = self.options
        system = SystemProbe(pid, self.registry, hz=opts.system_hz)
        self._start(system)
        dag = DagSource(self.interpreter, self.registry, self.profile, opts.rate_hz)
        if self._start(dag):
            system.python_threads = True  # the interpreter's thread list now owns thread_count
        else:
            dag = None
        if opts.uprobes:
            uprobes = UprobeSource(pid, self.registry, opts.uprobes_backend,
                                   attribute=dag.attribute if dag else None,
                                   walk=dag.frame_walk() if dag else None)
            self._start(uprobes)  # False: no Open3D yet; it keeps watching for a late import
            if dag is not None:
                dag.ops_by_node = uprobes.ops_by_node
                dag.owner_watch = uprobes.watch
                uprobes.add_listener(dag.on_op)
        else:
            self.registry.set_source("uprobes", False, "switched off (--no-uprobes)")
        if opts.capture:
            capture = CaptureSource(pid, self.registry)
            if self._start(capture):
                if dag is not None:  # topics of connections opened before attach, from app state
                    dag.ws_peer_hint = capture.hint_topic
            elif dag is not None:
                dag.ws_fallback = True  # connection counts from the app's WebSocket manager
        else:
            self.registry.set_source("capture", False, "switched off (--no-capture)")
            if dag is not None:
                dag.ws_fallback = True

    def _start(self, source: Source) -> bool:
        try:
            started = source.start()
        except PerfdError as e:
            self.registry.set_source(source.name, False, str(e))
            return False
        if started is False:  # declined with its reason already published (e.g. no Open3D loaded)
            self._sources.append(source)  # still stopped on detach: it may have cleaned stale state
            return False
        self._sources.append(source)
        return True

    def target_alive(self) -> bool:
        if self.interpreter is None or self._create_time is None:
            return False
        return _alive(self.interpreter.pid, self._create_time)

    def detach(self, reason: str = "detached") -> None:
        """Mark the registry detached, then stop every source; idempotent.

        Detached first: stopping can take seconds (the kernel unregisters each
        uprobe), and clients must not read a dead target's numbers meanwhile.
        """
        self._stop_watch.set()
        with self._lock:
            if self.interpreter is not None and self.registry.attached:
                self.registry.detach(reason)
            sources, self._sources = self._sources, []
            for source in reversed(sources):
                try:
                    source.stop()
                except Exception:  # one source failing to stop must not leak the others
                    log.exception("stopping source %s", source.name)
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=1.0)

    def _watch(self) -> None:
        while not self._stop_watch.wait(self.WATCH_PERIOD):
            if not self.target_alive():
                pid = self.pid
                log.warning("target %s exited", pid)
                self.detach(f"target PID {pid} exited")
                return


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


def _alive(pid: int, created: float) -> bool:
    """The same process (a reused PID has another start time) and not a zombie:
    a zombie has exited even if its parent has not reaped it yet."""
    try:
        process = psutil.Process(pid)
        return process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
