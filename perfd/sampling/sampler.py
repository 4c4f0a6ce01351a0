"""The continuous stack sampler: one thread, a fixed rate, never raises.

Why a thread and not a process: a sample is one multi-part
``process_vm_readv`` (the GIL is released in the syscall) plus ~1 µs of
Python per *changed* frame, so 1 kHz costs a fraction of one core; a separate
process would have to serialise every sample back over IPC, which costs more
than taking it. The loop keeps absolute deadlines (no drift), counts every
failed or torn sample instead of raising, re-locates the interpreter after a
run of failures (the target exec()ed), and accounts for its own CPU with
``time.thread_time`` so ``perfd.sampler`` can report it (SPEC §7).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Callable, Iterable

from perfd.cpython import native_walk
from perfd.cpython.discovery import Interpreter, locate_interpreter
from perfd.cpython.generators import GeneratorReader
from perfd.cpython.sample import Sample
from perfd.cpython.stacks import StackReader
from perfd.errors import NoSuchProcess, PerfdError
from perfd.failures import log_failure
from perfd.snapshot import SamplerStatus

log = logging.getLogger(__name__)

WINDOW_S = 10.0
RELOCATE_AFTER = 50  # consecutive failures before looking for the interpreter again
NAMES_EVERY_S = 2.0


class Sampler:
    """Samples ``interpreter`` at ``rate_hz`` and hands each ``Sample`` to ``on_sample``.

    ``on_sample`` runs on the sampler thread: keep it short (enqueue, aggregate).
    """

    def __init__(self, interpreter: Interpreter, rate_hz: float = 250.0,
                 on_sample: Callable[[Sample], None] | None = None, *, with_tasks_every_s: float | None = None,
                 nice: int | None = -5, walker: str = "auto") -> None:
        if not 0 < rate_hz <= 10_000:
            raise ValueError(f"rate_hz must be in (0, 10000], got {rate_hz}")
        self.interpreter = interpreter
        self.rate_hz = float(rate_hz)
        self.on_sample = on_sample
        self.with_tasks_every_s = with_tasks_every_s
        self.nice = nice
        self.walker = walker  # StackReader's: "auto", "native" or "python"
        self.samples_total = 0
        self.samples_failed = 0
        self.samples_retried = 0
        self.callback_errors = 0
        self.last_error: str | None = None
        self.thread_count = 0  # Python threads in the last good sample
        self.thread_names: dict[int, str] = {}
        self._watched: tuple[int, ...] = ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._times: deque[int] = deque()  # monotonic ns of samples in the window
        self._cpu: deque[tuple[float, float]] = deque()  # (monotonic s, thread_time s)
        self._reader: StackReader | None = None
        self._relocate = False

    # -- control ------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="perfd-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def watch_generators(self, addresses: Iterable[int]) -> None:
        """Poll these generator/coroutine objects' state in every sample."""
        self._watched = tuple(addresses)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> SamplerStatus:
        now = time.monotonic_ns()
        with self._lock:
            self._trim(now)
            n = len(self._times)
            span = (now - self._times[0]) / 1e9 if n > 1 else 0.0
            achieved = (n - 1) / span if span > 0 else 0.0
            cpu = 0.0
            if len(self._cpu) > 1:
                (t0, c0), (t1, c1) = self._cpu[0], self._cpu[-1]
                cpu = 100.0 * (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0
        reader = self._reader
        walker = reader.walker if reader is not None else None
        note = None
        if walker == "python":
            note = native_walk.status().reason or "the native walker does not read this target's memory"
        return SamplerStatus(rate_hz=self.rate_hz, achieved_hz=round(achieved, 1),
                             samples_total=self.samples_total, samples_failed=self.samples_failed,
                             cpu_percent=round(cpu, 2), walker=walker, walker_note=note)

    # -- loop ---------------------------------------------------------------
    def _run(self) -> None:
        self._raise_priority()
        period_ns = int(1e9 / self.rate_hz)
        next_ns = time.monotonic_ns()
        consecutive_failures = 0
        names_due = 0.0
        tasks_due = 0.0
        tasks = None
        gens: GeneratorReader | None = None
        while not self._stop.is_set():
            now = time.monotonic_ns()
            while now < next_ns and not self._stop.is_set():
                # clock_nanosleep is finer than Event.wait at 1 kHz; slices keep stop() prompt at low rates
                time.sleep(min(next_ns - now, 50_000_000) / 1e9)
                now = time.monotonic_ns()
            if self._stop.is_set():
                break
            next_ns += period_ns
            if time.monotonic_ns() - next_ns > 20 * period_ns:
                next_ns = time.monotonic_ns() + period_ns  # far behind (we were descheduled): do not burst
            try:
                reader = self._reader or self._open()
                sample = reader.sample()
                if self._watched:
                    gens = gens or GeneratorReader(reader.mem, reader.layout, reader.code_info)
                    sample.generator_states = gens.states(list(self._watched))
                mono = time.monotonic()
                if mono >= names_due:
                    names_due = mono + NAMES_EVERY_S
                    self.thread_names = reader.thread_names()
                if self.with_tasks_every_s and mono >= tasks_due:
                    tasks_due = mono + self.with_tasks_every_s
                    if tasks is None:
                        from perfd.cpython.tasks import TaskReader
                        tasks = TaskReader(reader)
                    sample.tasks = tasks.tasks()
                for t in sample.threads:
                    t.name = self.thread_names.get(t.thread_id)
            except NoSuchProcess as e:
                self._failed(str(e))
                consecutive_failures += 1
                self._close()
                gens = tasks = None
                if self._stop.wait(0.1):  # the target is gone; the engine decides what happens next
                    break
                continue
            except (PerfdError, Exception) as e:  # noqa: BLE001 - nothing read from a target may kill the loop
                self._failed(f"{type(e).__name__}: {e}")
                consecutive_failures += 1
                if consecutive_failures >= RELOCATE_AFTER:
                    consecutive_failures = 0
                    self._close()
                    gens = tasks = None
                continue
            consecutive_failures = 0
            self._account(sample)
            if self.on_sample is not None:
                try:
                    self.on_sample(sample)
                except NoSuchProcess:  # the consumer read on as the target exited: the next sample counts it
                    pass
                except Exception:  # noqa: BLE001 - a consumer bug must not stop sampling
                    self.callback_errors += 1
                    log_failure(log, self.callback_errors, "sample consumer failed")
        self._close()

    def _raise_priority(self) -> None:
        """Wake on time on a busy machine: a few notches of nice for this thread only.

        The thread sleeps between samples and uses a small, bounded share of one
        core, so a better priority buys timing accuracy without starving anyone.
        """
        if self.nice is None:
            return
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        except OSError:
            pass  # not permitted (no CAP_SYS_NICE): keep the default priority

    def _open(self) -> StackReader:
        if self._reader is None:
            if self._relocate:  # after failures: the target may have exec()ed another binary
                self.interpreter = locate_interpreter(self.interpreter.pid)
            self._reader = StackReader(self.interpreter, walker=self.walker)
            self._relocate = False
        return self._reader

    def _close(self) -> None:
        self._relocate = True
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _failed(self, why: str) -> None:
        with self._lock:
            self.samples_total += 1
            self.samples_failed += 1
            self.last_error = why
            self._times.append(time.monotonic_ns())
            self._cpu.append((time.monotonic(), time.thread_time()))

    def _account(self, sample: Sample) -> None:
        with self._lock:
            self.samples_total += 1
            if any(t.suspect for t in sample.threads):
                self.samples_failed += 1  # delivered, but a thread kept changing under every walk
            if sample.retried:
                self.samples_retried += 1
            self.thread_count = len(sample.threads)
            self._times.append(sample.monotonic_ns)
            mono = time.monotonic()
            if not self._cpu or mono - self._cpu[-1][0] >= 0.1:
                self._cpu.append((mono, time.thread_time()))
            self._trim(time.monotonic_ns())

    def _trim(self, now_ns: int) -> None:
        cutoff = now_ns - int(WINDOW_S * 1e9)
        while self._times and self._times[0] < cutoff:
            self._times.popleft()
        while len(self._cpu) > 2 and self._cpu[0][0] < cutoff / 1e9:
            self._cpu.popleft()
