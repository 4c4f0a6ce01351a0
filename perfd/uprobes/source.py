"""``UprobeSource``: Open3D op timings of one target, attributed to DAG nodes.

The attach engine drives it: ``start()`` after attaching, ``ops_by_node()``
whenever it assembles the DAG section, ``stop()`` on detach. A target that has
not loaded Open3D is not an error: the source is reported inactive with the
reason, like any other source perfd cannot run.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal, Protocol

from perfd.cpython.layouts import FrameWalk
from perfd.cpython.maps import read_maps
from perfd.errors import PerfdError, UsageError
from perfd.failures import log_failure
from perfd.snapshot import Open3DOpMetrics
from perfd.uprobes.aggregate import UNATTRIBUTED, Attribute, OpAggregator
from perfd.uprobes.bcc_backend import BccBackend, BccError
from perfd.uprobes.events import FrameWatch, OpEvent, PairingStats
from perfd.uprobes.spec import OpSpec, load_spec
from perfd.uprobes.symbols import Resolution, open3d_candidates, resolve
from perfd.uprobes.tracefs import TracefsBackend, TracefsError

log = logging.getLogger(__name__)

SOURCE = "uprobes"
STATUS_EVERY_S = 1.0  # how often the source's counters (lost events above all) reach the perfd section
BackendName = Literal["auto", "bcc", "tracefs"]
BACKENDS = ("auto", "bcc", "tracefs")


class Backend(Protocol):
    name: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def drain(self) -> int | None: ...  # tracefs: bytes read (it paces its reader by them)
    def watch(self, watch: FrameWatch) -> None: ...
    @property
    def stats(self) -> PairingStats: ...


class Publisher(Protocol):
    def set_source(self, name: str, active: bool, reason: str | None = None) -> None: ...
    def publish_extra(self, key: str, value: object) -> None: ...


@dataclass
class UprobeStatus:
    """What the ``perfd`` section reports about this source."""

    active: bool
    backend: str | None
    library: str | None
    probes: int
    missing_ops: list[str] = field(default_factory=list)
    fallback_reason: str | None = None  # why auto did not pick bcc
    events_total: int = 0
    nested_calls: int = 0
    unattributed_calls: int = 0
    unmatched_returns: int = 0
    abandoned_entries: int = 0
    lost_events: int = 0  # kernel buffer overflowed: counts are low by this many calls
    listener_failures: int = 0  # events a consumer (e.g. the dag) failed on: a bug (logged)


class UprobeSource:
    name = SOURCE

    def __init__(
        self,
        pid: int,
        registry: Publisher,
        backend: BackendName = "auto",
        attribute: Attribute | None = None,
        spec: list[OpSpec] | None = None,
        recheck_s: float = 2.0,
        walk: FrameWalk | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise UsageError(f"--uprobes-backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        self.pid = pid
        self.registry = registry
        self.requested = backend
        self.spec = spec if spec is not None else load_spec()
        self.walk = walk  # the target's frame offsets: entries then name the node calling them
        self._watched = FrameWatch()
        self.aggregator = OpAggregator(attribute)
        self.resolution: Resolution | None = None
        self.backend: Backend | None = None
        self.fallback_reason: str | None = None
        self._listeners: list[Callable[[OpEvent], None]] = []
        self.listener_failures = 0
        self.status_failures = 0
        self.recheck_s = recheck_s  # how often to look for a late ``import open3d``; 0 = never
        self._recheck_at = 0.0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._watcher: threading.Thread | None = None

    def add_listener(self, listener: Callable[[OpEvent], None]) -> None:
        """Also hand every completed call (nested ones too) to ``listener``,
        on the backend's reader thread, as it is read (attribution waits)."""
        self._listeners.append(listener)

    @property
    def active(self) -> bool:
        return self.backend is not None

    def start(self) -> bool:
        """Resolve and attach; True when probes are live. A target without
        Open3D mapped yet is watched (every ``recheck_s``) and probed once it
        imports Open3D — apps often import it lazily. Once live, the source's
        counters are published every ``STATUS_EVERY_S``."""
        _remove_stale_quietly()
        with self._lock:
            attached = self._attach_locked()
        if self._watcher is None:
            self._recheck_at = time.monotonic() + self.recheck_s
            self._watcher = threading.Thread(target=self._tend, name=f"perfd-uprobes-watch-{self.pid}", daemon=True)
            self._watcher.start()
        return attached

    def _attach_locked(self) -> bool:
        if self.backend is not None:
            return True
        if self._stopped.is_set():
            return False
        self.resolution = resolve(self.pid, self.spec)
        if not self.resolution.found:
            waiting = f"; checking every {self.recheck_s:g} s" if self.recheck_s > 0 else ""
            self.registry.set_source(
                SOURCE, False, f"Open3D not loaded in the target (no libOpen3D with the probed symbols mapped){waiting}")
            return False
        try:
            self.backend = self._start_backend()
            self.backend.watch(self._watched)
        except (BccError, TracefsError) as e:
            self.registry.set_source(SOURCE, False, str(e))
            return False
        self.registry.set_source(SOURCE, True, self._active_note())
        return True

    def _tend(self) -> None:
        """Publish the live probes' counters; before that, look for a late Open3D."""
        period = min(STATUS_EVERY_S, self.recheck_s) if self.recheck_s > 0 else STATUS_EVERY_S
        while not self._stopped.wait(period):
            if self.backend is not None:
                try:
                    self.publish_status()
                except Exception:  # noqa: BLE001 - a bug here must not end the status, nor print a trace per second
                    self.status_failures += 1
                    log_failure(log, self.status_failures, "publishing the uprobes status failed")
            elif self._waiting_for_open3d() and time.monotonic() >= self._recheck_at:
                self._recheck_at = time.monotonic() + self.recheck_s
                try:
                    mapped = open3d_candidates(read_maps(self.pid))
                except PerfdError:  # the target is gone: the engine detaches
                    return
                if mapped:
                    with self._lock:
                        self._attach_locked()  # on failure Open3D is found: the reason is published, no retry

    def _waiting_for_open3d(self) -> bool:
        return self.recheck_s > 0 and self.resolution is not None and not self.resolution.found

    def publish_status(self) -> None:
        """The counters in ``perfd.uprobes``; the reason line says when calls were lost."""
        with self._lock:
            if self.backend is None or self._stopped.is_set():
                return
            status = self.status()
            self.registry.publish_extra(SOURCE, asdict(status))
            self.registry.set_source(SOURCE, True, self._active_note(status.lost_events))

    def _start_backend(self) -> Backend:
        res = self.resolution
        if self.requested in ("auto", "bcc"):
            bcc_backend = BccBackend(self.pid, res, self._on_event, self.walk)
            try:
                bcc_backend.start()
                return bcc_backend
            except BccError as e:
                if self.requested == "bcc":
                    raise
                self.fallback_reason = str(e)
                log.info("uprobes: %s; falling back to tracefs", e)
        tracefs_backend = TracefsBackend(self.pid, res, self._on_event, self.walk)
        tracefs_backend.start()
        return tracefs_backend

    def _active_note(self, lost: int = 0) -> str | None:
        """The source's reason line; ``lost``: op calls the kernel dropped, from the status just read."""
        notes = []
        if self.resolution and self.resolution.missing:
            notes.append(f"not in {self.resolution.library}: {', '.join(self.resolution.missing)}")
        if self.fallback_reason:
            notes.append(f"tracefs backend ({self.fallback_reason})")
        backend = self.backend
        if lost:
            notes.append(f"{lost} op calls lost (the kernel buffer was full): op counts are low by that many")
        if isinstance(backend, TracefsBackend) and self.walk is not None:
            if not backend.frame_depth:
                notes.append(f"ops placed from samples only: the kernel took no frame arguments ({backend.frames_refused})")
            notes.append("no point counts from ops (bcc only): a node call the tracker misses keeps the last one seen")
        return "; ".join(notes) or None

    def watch(self, watch: FrameWatch) -> None:
        """The target's threads and the objects whose methods' ops should name
        them (node objects), with where they keep their points; kept for a later attach."""
        self._watched = watch
        if self.backend is not None:
            self.backend.watch(watch)

    def _on_event(self, ev: OpEvent) -> None:
        self.aggregator.add(ev)
        for listener in self._listeners:
            # called from the backend's reader (for bcc, inside a C callback that
            # would swallow the exception with a trace on stderr): a listener's
            # failure costs that listener this event, never the probe's events
            try:
                listener(ev)
            except Exception:  # noqa: BLE001
                self.listener_failures += 1
                log_failure(log, self.listener_failures, "op event listener failed")

    def stop(self, reason: str = "detached") -> None:
        """Remove every probe this source created."""
        self._stopped.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=5)
        with self._lock:
            backend, self.backend = self.backend, None
            if backend is not None:
                backend.stop()
        self.registry.set_source(SOURCE, False, reason)

    def flush(self) -> None:
        """Take in events already in the kernel buffer and attribute them now
        (tests, a final snapshot)."""
        if self.backend is not None:
            self.backend.drain()
        self.aggregator.settle(force=True)

    def ops_by_node(self) -> dict[str, dict[str, Open3DOpMetrics]]:
        """``{node_id: {op: metrics}}``; unattributed calls under ``"(unattributed)"``."""
        return self.aggregator.by_node()

    def status(self) -> UprobeStatus:
        res = self.resolution
        stats = self.backend.stats if self.backend is not None else PairingStats()
        agg = self.aggregator
        return UprobeStatus(
            active=self.active,
            backend=self.backend.name if self.backend is not None else None,
            library=res.library if res else None,
            probes=len(res.points) if res else 0,
            missing_ops=list(res.missing) if res else [],
            fallback_reason=self.fallback_reason,
            events_total=agg.events_total,
            nested_calls=agg.nested_total,
            unattributed_calls=agg.unattributed_calls(),
            unmatched_returns=stats.unmatched_returns,
            abandoned_entries=stats.abandoned_entries,
            lost_events=stats.lost_events,
            listener_failures=self.listener_failures,
        )

    def __enter__(self) -> "UprobeSource":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _remove_stale_quietly() -> None:
    from perfd.uprobes.stale import remove_stale  # noqa: PLC0415

    try:
        removed = remove_stale()
    except (TracefsError, PerfdError, OSError):
        return
    if removed.events or removed.instances:
        log.warning("removed %d stale perfd uprobes and %d instances", len(removed.events), len(removed.instances))


__all__ = ["UprobeSource", "UprobeStatus", "UNATTRIBUTED", "BACKENDS"]
