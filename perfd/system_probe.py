"""The OS source: psutil numbers about the host and the target process."""

from __future__ import annotations

import threading
import time

import psutil

from perfd.registry import Registry

MIB = 1024 * 1024
OS_THREADS_REASON = (
    "thread_count counts the target's OS threads (the memory reader is not active, "
    "so Python threads cannot be told apart)"
)


class SystemProbe:
    """Publishes ``system`` at ``hz`` from a daemon thread.

    ``cpu_percent`` is host-wide, ``memory_used_mb`` the target's RSS (SPEC §1).
    ``thread_count`` is the OS thread count unless ``python_threads`` says the
    memory reader owns it.
    """

    name = "system"

    def __init__(self, pid: int, registry: Registry, hz: float = 2.0) -> None:
        self.pid = pid
        self.registry = registry
        self.period = 1.0 / hz
        self.python_threads = False  # set by the engine when the stack sampler publishes thread_count
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process(pid)
        self._cpu_times = psutil.cpu_times()

    def start(self) -> None:
        self._cpu_times = psutil.cpu_times()
        time.sleep(0.05)  # the first reading needs an interval to compare against
        self.sample()
        self._thread = threading.Thread(target=self._run, name="perfd-system", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def sample(self) -> None:
        """One reading; a vanished target is left to the engine's watcher."""
        total = psutil.virtual_memory().total
        try:
            with self._process.oneshot():
                rss = self._process.memory_info().rss
                threads = self._process.num_threads()
        except psutil.Error:
            return
        fields: dict[str, float | int] = {
            "cpu_percent": self._host_cpu_percent(),
            "memory_used_mb": rss / MIB,
            "memory_total_mb": total / MIB,
            "memory_percent": min(100.0, rss / total * 100.0),
        }
        if not self.python_threads:
            fields["thread_count"] = threads
        self.registry.update_system(**fields)
        self.registry.set_source(
            self.name, True, None if self.python_threads else OS_THREADS_REASON
        )

    def _host_cpu_percent(self) -> float:
        """Busy share of all CPUs since the previous reading (our own baseline,
        not psutil's module-global one, which other callers would disturb)."""
        now = psutil.cpu_times()
        before, self._cpu_times = self._cpu_times, now
        total = _busy_total(now) - _busy_total(before)
        idle = (now.idle + getattr(now, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
        if total <= 0:
            return 0.0
        return min(100.0, max(0.0, (total - idle) / total * 100.0))

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()


def _busy_total(t) -> float:
    # guest time is already inside user time on Linux; counting it twice skews the ratio
    return sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
