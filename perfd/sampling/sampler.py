"""The continuous stack sampler: a fixed rate, never raises.

Threads, not a process: a sample is one multi-part ``process_vm_readv`` plus
a little Python per *changed* frame, so 1 kHz costs a fraction of one core; a
separate process would have to serialise every sample back over IPC, which
costs more than taking it. With the native walker the samples are taken on
a C thread at the rate (``NativeLoop``) and this thread takes them in
batches (``LOOP_BATCH_S``): waking Python and its bookkeeping for every
sample cost more than the sample. Otherwise (the Python walker, or polled
generators, which must be read at the sample's moment) this thread samples
itself. Either way the deadlines are absolute (no drift), every failed, torn
or skipped sample is counted instead of raised, the interpreter is
re-located after a run of failures (the target exec()ed), and the CPU of
every sampling thread is accounted so ``perfd.sampler`` can report it (SPEC §7).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

from perfd.cpython import native_walk
from perfd.cpython.discovery import Interpreter, locate_interpreter
from perfd.cpython.generators import GeneratorReader
from perfd.cpython.sample import Sample
from perfd.cpython.stacks import StackReader
from perfd.errors import NoSuchProcess
from perfd.failures import log_failure
from perfd.snapshot import SamplerStatus

log = logging.getLogger(__name__)

WINDOW_S = 10.0
RELOCATE_AFTER = 50  # consecutive failures before looking for the interpreter again
NAMES_EVERY_S = 2.0
# How long the C loop's samples may wait for Python by default: 0.1 s is 100
# samples a wakeup at 1 kHz (25 at the default 250 Hz). Each wakeup finds
# Python's caches cold (the target ran meanwhile), so perfd's CPU per sample
# falls with the batch: a quarter less at 250 Hz than with 20 ms batches
# (bench/sampler_priority.py --batches). A consumer that must see each sample
# as it is taken asks for 0 (``deliver_within_s``).
LOOP_BATCH_S = 0.1
# How the sampling threads are scheduled. SCHED_BATCH: a thread that wakes does not
# preempt the one running; it waits for a free CPU or the tick. Measured on a
# GIL-passing target, the target's threads lose less CPU to a batch-class sampler
# than to one that preempts them on waking (bench/sampler_priority.py), and it
# sees as much of a busy target (bench/sampler_bias.py). Not SCHED_IDLE, which
# costs least: with no idle CPU it all but stops, and what it still sees is
# biased to the target's quiet moments.
SAMPLING_POLICY: int | None = os.SCHED_BATCH
STOP_WITHIN_S = 0.25  # the longest the sampling thread waits on the C loop between looks at stop()


@dataclass
class _LoopState:
    """What the sampling thread carries from one sample to the next."""

    next_ns: int = 0  # the Python-paced step's next deadline
    consecutive_failures: int = 0
    names_due: float = 0.0
    tasks_due: float = 0.0
    tasks: object | None = None  # TaskReader, made on first use
    gens: GeneratorReader | None = None
    skipped_seen: int = 0  # the C loop's skipped count already accounted


class Sampler:
    """Samples ``interpreter`` at ``rate_hz`` and hands each ``Sample`` to ``on_sample``.

    ``on_sample`` runs on the sampler thread: keep it short (enqueue, aggregate).
    Samples come in order with the times they were taken, up to
    ``deliver_within_s`` after (the C loop's batches; 0: each as it is taken).
    The sampling threads run under ``policy`` (``SAMPLING_POLICY``) and the one
    that takes the samples at ``nice``; None leaves either as it is.
    """

    def __init__(self, interpreter: Interpreter, rate_hz: float = 250.0,
                 on_sample: Callable[[Sample], None] | None = None, *, with_tasks_every_s: float | None = None,
                 nice: int | None = -5, policy: int | None = SAMPLING_POLICY, walker: str = "auto",
                 deliver_within_s: float = LOOP_BATCH_S) -> None:
        if not 0 < rate_hz <= 10_000:
            raise ValueError(f"rate_hz must be in (0, 10000], got {rate_hz}")
        self.interpreter = interpreter
        self.rate_hz = float(rate_hz)
        self.on_sample = on_sample
        self.with_tasks_every_s = with_tasks_every_s
        self.nice = nice
        self.policy = policy  # os.SCHED_* of the sampling threads; None: leave it
        self.walker = walker  # StackReader's: "auto", "native" or "python"
        # how long a sample taken on the C loop may wait to be handed on (0: at once)
        self.deliver_within_s = deliver_within_s
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
        # Sample on a C thread (the native walker's paced loop) and take the samples
        # here in batches; False: this thread samples, one wakeup per sample.
        self.paced_in_c = True
        # Skip reading threads that have not held the GIL since their last sample (native walker)
        self.gil_gated = True
        self._cpu_done = 0.0  # CPU seconds of C loops that have ended

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
    def reader(self) -> StackReader | None:
        """The stack reader sampling now (its counters), None while there is none."""
        return self._reader

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> SamplerStatus:
        now = time.monotonic_ns()
        with self._lock:
            self._trim(now)
            n = len(self._times)
            # to the last sample while they arrive (batches come up to a wait late), to now if they stop
            end = max(self._times[-1], now - int(2 * self._batch_wait_s() * 1e9)) if n else now
            span = (end - self._times[0]) / 1e9 if n > 1 else 0.0
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
        if self.policy is not None:
            try:
                os.sched_setscheduler(0, self.policy, os.sched_param(0))  # this thread; nice is kept
            except OSError:
                pass  # not permitted: keep the default policy
        self._raise_priority()
        ctx = _LoopState()
        while not self._stop.is_set():
            if self._start_loop():
                self._run_native(self._reader, ctx)
            else:
                self._python_step(ctx)
        self._close()

    def _start_loop(self) -> bool:
        """Sample on the C loop from now on, if this reader can (the native walker)."""
        reader = self._reader
        if reader is None or not self.paced_in_c or self._watched:
            return False
        try:
            return reader.start_loop(self.rate_hz, self.deliver_within_s, self.nice, self.policy)
        except MemoryError as e:  # no thread or memory for it: sample from this thread instead
            self.paced_in_c = False
            log.warning("sampling from Python: cannot start the C sampling loop (%s)", e)
            return False

    def _python_step(self, ctx: "_LoopState") -> None:
        """Wait for the next deadline and take one sample in this thread (the Python
        walker, polled generators, or the first sample after an attach)."""
        period_ns = int(1e9 / self.rate_hz)
        now = time.monotonic_ns()
        ctx.next_ns = ctx.next_ns or now
        while now < ctx.next_ns and not self._stop.is_set():
            # clock_nanosleep is finer than Event.wait at 1 kHz; slices keep stop() prompt at low rates
            time.sleep(min(ctx.next_ns - now, 50_000_000) / 1e9)
            now = time.monotonic_ns()
        if self._stop.is_set():
            return
        ctx.next_ns += period_ns
        if time.monotonic_ns() - ctx.next_ns > 20 * period_ns:
            ctx.next_ns = time.monotonic_ns() + period_ns  # far behind (we were descheduled): do not burst
        try:
            reader = self._reader or self._open()
            sample = reader.sample()
            if self._watched:
                ctx.gens = ctx.gens or GeneratorReader(reader.mem, reader.layout, reader.code_info)
                sample.generator_states = ctx.gens.states(list(self._watched))
        except Exception as e:  # noqa: BLE001 - nothing read from a target may kill the loop
            self._sample_failed(e, ctx)
            return
        self._deliver(sample, reader, ctx)

    def _run_native(self, reader: StackReader, ctx: "_LoopState") -> None:
        """Hand on what the C loop samples, a batch at a time, until stopped or the
        reader has to go (the target exited, or its walker fell back to Python)."""
        self._raise_priority(0)
        try:
            while not self._stop.is_set() and reader is self._reader and reader.loop is not None:
                for item in reader.loop_samples(self._batch_wait_s()):
                    if reader is not self._reader:
                        break  # closed on a failure (the target exited): the rest were taken before
                    if isinstance(item, Exception):
                        self._sample_failed(item, ctx)
                    else:
                        self._deliver(item, reader, ctx)
                loop = reader.loop
                if loop is not None and loop.skipped > ctx.skipped_seen:
                    for _ in range(loop.skipped - ctx.skipped_seen):
                        self._failed("sample skipped: perfd fell behind taking the samples")
                    ctx.skipped_seen = loop.skipped
        finally:
            self._stop_loop(reader)
            self._raise_priority()
        ctx.next_ns = ctx.skipped_seen = 0

    def _batch_wait_s(self) -> float:
        """How long to wait for the C loop's next batch: a little longer than the batch
        takes to fill, so the loop's signal, not the timeout, wakes this thread (a
        timeout racing the last sample of a batch would wake it twice per batch); at
        most ``STOP_WITHIN_S``, which keeps ``stop()`` prompt at low rates."""
        period = 1.0 / self.rate_hz
        return min(max(self.deliver_within_s, period) + 2 * period, STOP_WITHIN_S)

    def _stop_loop(self, reader: StackReader) -> None:
        loop = reader.loop
        if loop is not None:
            reader.stop_loop()
            self._cpu_done += loop.cpu_s

    def _sample_failed(self, e: Exception, ctx: "_LoopState") -> None:
        if isinstance(e, NoSuchProcess):
            self._failed(str(e))
            ctx.consecutive_failures += 1
            self._close()
            ctx.gens = ctx.tasks = None
            self._stop.wait(0.1)  # the target is gone; the engine decides what happens next
            return
        self._failed(f"{type(e).__name__}: {e}")
        ctx.consecutive_failures += 1
        if ctx.consecutive_failures >= RELOCATE_AFTER:
            ctx.consecutive_failures = 0
            self._close()
            ctx.gens = ctx.tasks = None

    def _deliver(self, sample: Sample, reader: StackReader, ctx: "_LoopState") -> None:
        try:
            mono = time.monotonic()
            renamed = mono >= ctx.names_due
            if renamed:
                ctx.names_due = mono + NAMES_EVERY_S
                self.thread_names = reader.thread_names()
            if self.with_tasks_every_s and mono >= ctx.tasks_due:
                ctx.tasks_due = mono + self.with_tasks_every_s
                if ctx.tasks is None:
                    from perfd.cpython.tasks import TaskReader
                    ctx.tasks = TaskReader(reader)
                sample.tasks = ctx.tasks.tasks()
            # a thread's stack object is handed on again while its stack stays the same:
            # named once, and again when the names are read again
            names = self.thread_names
            for t in sample.threads:
                if renamed or t.name is None:
                    t.name = names.get(t.thread_id)
        except Exception as e:  # noqa: BLE001 - nothing read from a target may kill the loop
            self._sample_failed(e, ctx)
            return
        ctx.consecutive_failures = 0
        self._account(sample, mono)
        if self.on_sample is not None:
            try:
                self.on_sample(sample)
            except NoSuchProcess:  # the consumer read on as the target exited: the next sample counts it
                pass
            except Exception:  # noqa: BLE001 - a consumer bug must not stop sampling
                self.callback_errors += 1
                log_failure(log, self.callback_errors, "sample consumer failed")

    def _raise_priority(self, nice: int | None = None) -> None:
        """Wake on time on a busy machine: a few notches of nice (``self.nice``) for the
        thread that takes the samples only — this one, or the C loop's, which gets it
        from ``start_loop`` while this one, only handing samples on, goes back to 0.

        That thread sleeps between samples and uses a small, bounded share of one
        core, so a better priority buys timing accuracy without starving anyone.
        """
        nice = self.nice if nice is None else nice
        if self.nice is None:
            return
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError:
            pass  # not permitted (no CAP_SYS_NICE): keep the default priority

    def _open(self) -> StackReader:
        if self._reader is None:
            if self._relocate:  # after failures: the target may have exec()ed another binary
                self.interpreter = locate_interpreter(self.interpreter.pid)
            self._reader = StackReader(self.interpreter, walker=self.walker, gil_gated=self.gil_gated)
            self._relocate = False
        return self._reader

    def _close(self) -> None:
        self._relocate = True
        if self._reader is not None:
            self._stop_loop(self._reader)
            self._reader.close()
            self._reader = None

    def _failed(self, why: str) -> None:
        with self._lock:
            self.samples_total += 1
            self.samples_failed += 1
            self.last_error = why
            now = time.monotonic_ns()
            self._times.append(now)
            self._cpu.append((now / 1e9, self._cpu_seconds()))
            self._trim(now)  # failing for hours must not grow the window

    def _account(self, sample: Sample, mono: float) -> None:
        """Count a delivered sample (``mono``: time.monotonic() as it was handed on)."""
        with self._lock:
            self.samples_total += 1
            for t in sample.threads:
                if t.suspect:  # delivered, but a thread kept changing under every walk
                    self.samples_failed += 1
                    break
            if sample.retried:
                self.samples_retried += 1
            self.thread_count = len(sample.threads)
            self._times.append(sample.monotonic_ns)
            if not self._cpu or mono - self._cpu[-1][0] >= 0.1:
                self._cpu.append((mono, self._cpu_seconds()))
                self._trim(int(mono * 1e9))

    def _cpu_seconds(self) -> float:
        """This thread's CPU and the C loops' (called on the sampling thread)."""
        reader = self._reader
        loop = reader.loop if reader is not None else None
        return time.thread_time() + self._cpu_done + (loop.cpu_s if loop is not None else 0.0)

    def native_ids(self) -> list[int]:
        """Kernel thread ids doing the sampling: this Sampler's thread and, while it
        runs, the C loop's (for benchmarks that read their CPU from /proc)."""
        ids = [self._thread.native_id] if self._thread is not None and self._thread.native_id else []
        reader = self._reader
        loop = reader.loop if reader is not None else None
        return ids + ([loop.tid] if loop is not None else [])

    def _trim(self, now_ns: int) -> None:
        cutoff = now_ns - int(WINDOW_S * 1e9)
        while self._times and self._times[0] < cutoff:
            self._times.popleft()
        while len(self._cpu) > 2 and self._cpu[0][0] < cutoff / 1e9:
            self._cpu.popleft()
