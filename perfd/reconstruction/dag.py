"""The ``stacks`` source: sampler → node calls → per-node metrics → registry.

Two threads, each with its own reader of the target:
- the sampler thread (``Sampler`` callback) follows await chains, finds node
  calls and worker threads' nodes every sample — it must stay cheap;
- the publisher thread (2 Hz) does the expensive, slow-changing reads —
  asyncio task enumeration, the node registry, throttle counters, queue
  depth — and publishes ``dag`` and the app-derived ``system`` fields.
"""

from __future__ import annotations

import bisect
import sys
import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace

from perfd.cpython.chains import AwaitChains, task_coroutines
from perfd.cpython.discovery import Interpreter
from perfd.cpython.layouts import FrameWalk, frame_walk
from perfd.cpython.sample import Sample
from perfd.cpython.stacks import StackReader
from perfd.cpython.tasks import TaskReader, calibrate
from perfd.errors import MemoryReadError, NoSuchProcess, PerfdError
from perfd.failures import log_failure
from perfd.profile import AppProfile
from perfd.reconstruction.app_state import AppState, AppStateReader, NodeInfo
from perfd.reconstruction.calls import CallTracker, CompletedCall
from perfd.reconstruction.missed_calls import Look, MissedCalls, OpSpan
from perfd.reconstruction.observe import POINT_TYPES, NodeCallFinder, point_types
from perfd.reconstruction.stats import RATE_WINDOW_S, NodeStats
from perfd.registry import Registry
from perfd.sampling import Sampler
from perfd.snapshot import DagMetrics, DagNodeMetrics, Open3DOpMetrics, WebSocketMetrics, WsTopicMetrics
from perfd.uprobes.aggregate import UNATTRIBUTED
from perfd.uprobes.events import FrameWatch, OpEvent

log = logging.getLogger(__name__)

PUBLISH_HZ = 5.0  # counters (throttle, queue depth, frames) and the dag section
SLOW_EVERY_S = 1.0  # task enumeration, node registry, edges, WebSocket connections
TRACK_HZ = 1000.0
SWITCH_INTERVAL_S = 0.0005
HISTORY_MIN = 5  # firm attributions of an op before they can vouch for a guess (DagSource._innermost)
RARE_SHARE = 0.2  # a node that got less of an op than this is not believed to run it
USUAL_SHARE = 0.8  # of the nodes in flight, one that got this much of an op is taken to run it
FIRM_EVIDENCE = ("probe_frames", "sample_during", "sample_near")  # DagSource._attribute's answers from the thread itself
NEAR_PERIODS = 2  # sample periods around an op within which its thread's samples count
SPANS_MAX = 1024  # completed calls kept for op attribution (tens of seconds at demo rates)
INCOMPLETE_LIMIT_S = 0.05  # longest run of looks that may not end calls (see DagSource._complete)
TIMELINE_MAX = 4096
PROFILE_MAX_STACKS = 2000


@dataclass(frozen=True)
class _AppRead:
    """One read of the app's counters, with what the tracker had counted just before it.

    The exact counts are made from the calls in flight at the read and compared
    with these only: a call the tracker sees finish after the read is not in
    the counters yet, and set against them it would be a call seen that never
    ran (coverage over 1); one seen starting would lower ``calls_total``.
    """

    state: AppState
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)  # node -> (tracked, placed from ops)
    exact: dict[str, int] = field(default_factory=dict)  # node -> calls completed since attach


@dataclass
class _Timeline:
    """Which node a worker thread served at each sample (None = idle).

    A look at a thread is two reads (its frames, then their ``self`` locals)
    that perfd may be preempted between, so each entry is the interval the
    look took: a to_thread worker reuses the same frame memory for its next
    job, and a look straddling two jobs must not be placed inside either."""

    times: list[int]  # look began
    dones: list[int]  # look ended
    nodes: list[str | None]

    def add(self, t_ns: int, done_ns: int, node: str | None) -> None:
        self.times.append(t_ns)
        self.dones.append(done_ns)
        self.nodes.append(node)
        if len(self.times) > TIMELINE_MAX:
            for seq in (self.times, self.dones, self.nodes):
                del seq[: TIMELINE_MAX // 2]

    def during(self, start_ns: int, end_ns: int) -> str | None:
        """The node of a look taken wholly within [start_ns, end_ns], if any."""
        i = bisect.bisect_left(self.times, start_ns)
        while i < len(self.times) and self.times[i] <= end_ns:
            if self.nodes[i] is not None and self.dones[i] <= end_ns:
                return self.nodes[i]
            i += 1
        return None

    def around(self, start_ns: int, end_ns: int, within_ns: int) -> tuple[str | None, str | None]:
        """Nodes of the last look ended before ``start_ns`` and the first begun
        after ``end_ns``, each if within ``within_ns`` of it (None: idle or no look)."""
        i = bisect.bisect_left(self.times, start_ns) - 1
        j = bisect.bisect_right(self.times, end_ns)
        before = after = None
        if i >= 0 and self.dones[i] <= start_ns and start_ns - self.dones[i] <= within_ns:
            before = self.nodes[i]
        if j < len(self.times) and self.times[j] - end_ns <= within_ns:
            after = self.nodes[j]
        return before, after


class DagSource:
    name = "stacks"

    def __init__(self, interpreter: Interpreter, registry: Registry, profile: AppProfile,
                 rate_hz: float, ops_by_node=None) -> None:  # noqa: ANN001 - Callable[[], dict]
        self.interpreter = interpreter
        self.registry = registry
        self.profile = profile
        self.ops_by_node = ops_by_node
        # every sample as it is taken: the call tracker's looks take the node-entry coroutines
        # running on a thread from the latest sample (a call's synchronous start), so a
        # sample waiting in a batch would start such calls late
        self.sampler = Sampler(interpreter, rate_hz, self._on_sample, deliver_within_s=0.0)
        self._near_ns = int(NEAR_PERIODS * 1e9 / rate_hz)  # a worker's samples this close to an op tell its node
        self.tracker = CallTracker()
        self.missed = MissedCalls()  # calls the tracker missed, placed from their Open3D ops
        self.stats: dict[str, NodeStats] = {}
        self.profiles: dict[str, Counter] = {}
        self.timelines: dict[int, _Timeline] = {}
        self._lock = threading.Lock()
        self._roots: frozenset[int] = frozenset()
        self._node_addrs: dict[int, str] = {}  # node object address -> id
        self._read = _AppRead(AppState())
        self._stop = threading.Event()
        self._thread_finder: NodeCallFinder | None = None
        self._running_gens: frozenset[int] = frozenset()  # node-entry coroutines running on a thread
        self._gen_nodes: dict[int, str] = {}  # coroutine -> node id, as last tracked
        self._spans: deque[CompletedCall] = deque(maxlen=SPANS_MAX)  # recent calls, for op attribution
        self._op_nodes: dict[str, Counter] = {}  # op -> nodes it was attributed to
        self.attributed_by: Counter = Counter()  # op calls by the evidence that placed them
        self._threads: list[threading.Thread] = []
        self.track_failures = 0
        self.track_errors = 0  # looks that raised (a bug, logged): the loop goes on
        self.publish_errors = 0
        self.incomplete_looks = 0  # looks where some chain was cut short by a torn read
        self._incomplete_since: int | None = None
        self.track_hz = TRACK_HZ  # fixed at construction: the tracker thread reads it once it runs
        self._track_times: deque[int] = deque(maxlen=int(self.track_hz * 10))
        self._profiles_at = 0.0
        self._exact_history: deque[tuple[float, dict[str, int]]] = deque()
        self._slow: tuple[StackReader, TaskReader, AppStateReader] | None = None
        self.note: str | None = None
        self.ws_fallback = False  # capture is off: publish connection counts from app state
        self.ws_peer_hint = None  # capture's hint_topic(host, port, topic), for connections older than attach
        self.owner_watch = None  # uprobes' watch(FrameWatch): its probes then name the node and count its points
        self._watched = FrameWatch()
        self._point_types: dict[int, int] = {}  # type object -> SIZED_*, as found in the target
        self._hinted: set[tuple[str, int, str]] = set()
        self._derived_base: dict[str, int] | None = None

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        stacks = StackReader(self.interpreter)
        try:
            layout = calibrate(self.interpreter.pid, self.interpreter.exe)
        except PerfdError as e:
            stacks.close()
            raise PerfdError(f"asyncio tasks unreadable: {e}") from None
        self._slow = (stacks, TaskReader(stacks, layout), AppStateReader(self.profile, stacks))
        self._layout = layout
        self._refresh_slow(full=True)
        # Our threads hand the GIL to each other often enough that a 1 ms
        # tracking deadline is not lost behind a 5 ms default switch interval.
        if sys.getswitchinterval() > SWITCH_INTERVAL_S:
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._threads = [
            threading.Thread(target=self._track_loop, name="perfd-calls", daemon=True),
            threading.Thread(target=self._publish_loop, name="perfd-dag", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.sampler.start()
        self.registry.set_source(self.name, True, None)

    def stop(self) -> None:
        self._stop.set()
        self.sampler.stop()
        for thread in self._threads:
            thread.join(timeout=1.0)
        if self._thread_finder is not None:
            self._thread_finder.stacks.close()
        if self._slow is not None:
            self._slow[0].close()

    # -- call tracking thread (TRACK_HZ) ---------------------------------------
    def _track_loop(self) -> None:
        """Node calls from await chains at a fixed 1 kHz, whatever the stack rate:
        a steady-state check is one read, and calls of a few ms need ms resolution."""
        stacks = StackReader(self.interpreter)
        chains = AwaitChains(stacks, self._layout)
        finder = NodeCallFinder(self.profile, stacks)
        period = 1.0 / self.track_hz
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                next_at += period
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -10 * period:
                    next_at = time.monotonic()  # fell far behind: do not burst
                try:
                    self._track_once(chains, finder)
                except NoSuchProcess:  # the target exited: the engine's watcher says so and detaches
                    return
                except Exception:  # noqa: BLE001 - nothing read from a target may stop call tracking
                    self.track_errors += 1
                    log_failure(log, self.track_errors, "call tracking failed")
        finally:
            stacks.close()

    def _track_once(self, chains: AwaitChains, finder: NodeCallFinder) -> None:
        mono_ns, wall = time.monotonic_ns(), time.time()
        self._track_times.append(mono_ns)
        try:
            current = chains.refresh(self._roots | self._running_gens)
        except (MemoryReadError, PerfdError):
            self.track_failures += 1
            return
        # a running level cuts the chain (what it runs is on the thread's stack); the
        # levels above it may read "suspended" when the look straddles a step boundary
        running = {c.root for c in current.values() if c.running}
        whole = all(c.complete for c in current.values())
        self.missed.add_look(Look(mono_ns, time.monotonic_ns(), whole and not running))
        observations = finder.calls(current)
        alive = self._alive_while_running(chains, running, observations)
        self._gen_nodes = {o.key[0]: o.node_id for o in observations}
        complete = self._complete(mono_ns, whole)
        with self._lock:
            born, done = self.tracker.observe(mono_ns / 1e9, wall, observations, complete, alive)
            for call in born:
                call.points = finder.point_count(call.key, chains)
                self._node(call.node_id).started(call)
            for call in done:
                self._node(call.node_id).finished(call)
                self._spans.append(call)
        if born or done:
            self.publish_dag()  # last_point_count / last_exec_ms fresh, not a publish period late

    def _complete(self, mono_ns: int, whole: bool) -> bool:
        """Whether this look may end calls: it saw every chain ``whole``. A chain
        cut short by a torn read hides calls that are still running: such a look
        may start or extend calls but not end them. Chains are walked again at the
        next look, so this lasts a millisecond or two; past ``INCOMPLETE_LIMIT_S``
        the look counts as whole, so nothing can keep a finished call open."""
        if whole:
            self._incomplete_since = None
            return True
        self.incomplete_looks += 1
        if self._incomplete_since is None:
            self._incomplete_since = mono_ns
        return mono_ns - self._incomplete_since > INCOMPLETE_LIMIT_S * 1e9

    def _alive_while_running(self, chains: AwaitChains, running: set[int], observations: list) -> set:
        """Calls hidden because their task is executing (its chain is on the loop
        thread's stack: ``running`` roots) but whose coroutine is still running or
        suspended: a one-part-per-call read of the coroutines' state bytes tells."""
        if not running:
            return set()
        candidates = self.tracker.unseen_candidates({o.key for o in observations}, running)
        if not candidates:
            return set()
        states = chains.gens.states([c.key[0] for c in candidates])
        return {c.key for c in candidates if states.get(c.key[0]) in ("running", "suspended")}

    # -- sampler thread (--rate) ------------------------------------------------
    def _on_sample(self, sample: Sample) -> None:
        """Which node each thread serves: worker threads running a node's method,
        the loop thread inside a node call. Feeds uprobe attribution and profiles."""
        if self._thread_finder is None:
            self._thread_finder = NodeCallFinder(self.profile, StackReader(self.interpreter))
        finder = self._thread_finder
        self._running_gens = frozenset(finder.running_entry_gens(sample))
        by_gen = self._gen_nodes
        node_addrs = self._node_addrs
        addrs = frozenset(node_addrs)
        workers = finder.thread_nodes(sample.threads, addrs)
        # The look's end: when the stacks were read, if they carried every method's self
        # (the native walker; samples may be handed on in batches, well after); else now,
        # after thread_nodes read the selves.
        done = time.monotonic_ns() if finder.read_selves or not sample.read_done_ns else sample.read_done_ns
        if self.owner_watch is not None:
            self._update_watch(sample, addrs)
        with self._lock:
            for t in sample.threads:
                node = node_addrs.get(workers.get(t.native_thread_id, 0))
                if node is None:
                    node = next((by_gen[f.gen_addr] for f in t.frames if f.gen_addr in by_gen), None)
                if node is not None or t.native_thread_id in self.timelines:
                    self.timelines.setdefault(t.native_thread_id, _Timeline([], [], [])).add(sample.monotonic_ns, done, node)
                if node is not None:
                    self._profile(node, t)

    def _update_watch(self, sample: Sample, addrs: frozenset[int]) -> None:
        watch = FrameWatch({t.native_thread_id: t.tstate_addr for t in sample.threads}, addrs,
                           self._thread_finder.point_slots, self._point_types)
        if watch != self._watched:
            self._watched = replace(watch, point_slots=dict(watch.point_slots))
            self.owner_watch(self._watched)

    def on_op(self, ev: OpEvent) -> None:
        """An Open3D op the probe placed on a node (``owner``), as it is read.
        Its span goes to ``MissedCalls`` (a call the tracker missed is placed
        from its ops); the points its call had (the probe reads them in the node
        method's frame) update last_point_count when the op is newer than the
        last call the tracker saw begin."""
        node = self.node_of(ev.owner) if ev.depth == 0 else None
        if node is None:
            return
        self.missed.add_op(node, OpSpan(ev.tid, ev.start_ns, ev.start_ns + ev.duration_ns, ev.points))
        if ev.points is None:
            return
        with self._lock:
            changed = self._node(node).op_points(ev.start_ns / 1e9, ev.points)
        if changed:
            self.publish_dag()

    def _time_missed_calls(self) -> None:
        """Calls the tracker missed, placed from their ops, up to what the app's
        exact counts say is missing (none without them: nothing is invented)."""
        exact = self._read.exact
        if not exact:
            return
        with self._lock:
            # the tracker's counts now, not at the read: they only grow, so the room only shrinks
            room = {n: c - self._node(n).calls_total - self._node(n).op_calls for n, c in exact.items()}
            tracked, running = list(self._spans), list(self.tracker.open.values())
        calls = self.missed.take(time.monotonic_ns(), tracked, running, room, time.time() - time.monotonic())
        if calls:
            with self._lock:
                for call in calls:
                    self._node(call.node_id).missed_finished(call)

    def recent_calls(self) -> list[CompletedCall]:
        """The last completed calls the tracker saw (up to SPANS_MAX), oldest first."""
        with self._lock:
            return list(self._spans)

    def node_of(self, addr: int) -> str | None:
        """The id of the node object at ``addr`` (as of the last registry read)."""
        return self._node_addrs.get(addr)

    def frame_walk(self) -> FrameWalk:
        """The target's frame offsets, for probes that name the node calling them."""
        reader = self._slow[0]
        return frame_walk(reader.layout, reader.interp.runtime_addr)

    def _node(self, node_id: str) -> NodeStats:
        stats = self.stats.get(node_id)
        if stats is None:
            stats = self.stats[node_id] = NodeStats()
        return stats

    def _profile(self, node: str, thread) -> None:  # noqa: ANN001 - ThreadStack
        counts = self.profiles.setdefault(node, Counter())
        stack = ";".join(f"{f.qualname} ({f.filename.rsplit('/', 1)[-1]}:{f.line})" for f in reversed(thread.frames))
        if stack in counts or len(counts) < PROFILE_MAX_STACKS:
            counts[stack] += 1

    def attribute(self, ev: OpEvent) -> str | None:
        """The node whose call ran this Open3D op call (None: cannot tell).

        Best evidence first: the node object the entry probe (either backend) found as ``self`` in
        the calling thread's frames as the op began (exact). Then stack samples
        of the op's thread: one taken while the op ran, else the node the thread
        served both just before and just after it. Else the node calls in flight when
        it began, less those only waiting on a call nested in them, leave the
        call doing the work. A call whose start is only known to within a late
        look, or calls side by side (a ``gather``), make that ambiguous: then
        the node this op ran in when the evidence was clear decides, and an
        answer it contradicts is dropped (the call doing it went unseen).
        """
        with self._lock:
            node, how = self._attribute(ev)
            self.attributed_by[how] += 1
            if how in FIRM_EVIDENCE:  # only what a thread's own frames showed teaches where an op runs
                self._op_nodes.setdefault(ev.op, Counter())[node] += 1
            return node

    def _attribute(self, ev: OpEvent) -> tuple[str | None, str]:
        start, end = ev.start_ns, ev.start_ns + ev.duration_ns
        node = self.node_of(ev.owner)  # 0 (no owner found) is no node's address
        if node is not None:
            return node, "probe_frames"
        timeline = self.timelines.get(ev.tid)
        if timeline is not None:
            node = timeline.during(start, end)
            if node is not None:
                return node, "sample_during"
            # the same node in the looks just before and just after: a worker does
            # not finish a job, run another and come back between two looks. One
            # side alone proves nothing: a pipeline hands the worker that just ran
            # one node's job the next node's job at once.
            before, after = timeline.around(start, end, self._near_ns)
            if before is not None and before == after:
                return before, "sample_near"
        t, t_end = start / 1e9, end / 1e9
        calls = [(c.key, c.parent, c.node_id, c.start_mono <= t) for c in self._spans
                 if c.start_mono - c.uncertainty <= t and t_end <= c.end_mono + c.uncertainty]
        calls += [(c.key, c.parent, c.node_id, c.start_mono <= t) for c in self.tracker.open.values()
                  if c.start_mono - c.start_uncertainty <= t]
        return self._innermost(calls, ev.op)

    def _innermost(self, calls: list, op: str) -> tuple[str | None, str]:
        """A guess from the calls in flight, taken only once a thread's own frames
        have shown where ``op`` runs (a short op's first calls would otherwise go
        to whichever call the tracker happened to see)."""
        history = self._op_nodes.get(op) or Counter()
        total = sum(history.values())
        if total < HISTORY_MIN:
            return None, "unattributed"
        parents = {parent for _, parent, _, _ in calls if parent is not None}
        inner = {(node, firm) for key, _, node, firm in calls if key not in parents}
        if len(inner) == 1 and next(iter(inner))[1]:
            node = next(iter(inner))[0]
            if history[node] < RARE_SHARE * total:
                return None, "unattributed"  # not where this op runs: the call that ran it went unseen
            return node, "in_flight"
        # of the nodes in flight, the one this op has run in (nearly) every time
        among = {node: history[node] for _, _, node, _ in calls if history[node]}
        if not among:
            return None, "unattributed"
        usual = max(among, key=among.__getitem__)
        if among[usual] >= USUAL_SHARE * sum(among.values()):
            return usual, "history"
        return None, "unattributed"

    # -- publisher thread -----------------------------------------------------
    def _publish_loop(self) -> None:
        period = 1.0 / PUBLISH_HZ
        next_full = time.monotonic() + SLOW_EVERY_S
        while not self._stop.wait(period):
            try:
                full = time.monotonic() >= next_full
                if full:
                    next_full = time.monotonic() + SLOW_EVERY_S
                self._refresh_slow(full)
                self.publish()
            except NoSuchProcess:  # the target exited: the engine's watcher says so and detaches
                return
            except Exception:  # noqa: BLE001 - nothing read from a target may stop publishing
                self.publish_errors += 1
                log_failure(log, self.publish_errors, "publishing dag failed")

    def _refresh_slow(self, full: bool) -> None:
        """Counters every tick; tasks, registry, edges and connections when ``full``."""
        stacks, tasks, app = self._slow
        if full:
            try:
                self._roots = frozenset(task_coroutines(stacks.mem, self._layout, tasks.task_addresses()))
            except (MemoryReadError, PerfdError) as e:
                self.note = f"asyncio tasks not enumerated: {e}"
        with self._lock:
            running = self.tracker.in_flight()
            seen = {n: (s.calls_total, s.op_calls) for n, s in self.stats.items()}
        state = app.read(None if full else self._read.state)
        self._read = _AppRead(state, seen, self._exact_calls(state.derived_calls(), running))
        if full:
            self._node_addrs = {n.address: n.node_id for n in state.nodes.values()}
            if len(self._point_types) < len(POINT_TYPES):  # numpy may be imported late
                self._point_types = point_types(stacks)
            if self.ws_peer_hint is not None:
                for peer in set(state.ws_peers) - self._hinted:
                    self.ws_peer_hint(*peer)
                self._hinted = set(state.ws_peers)

    def publish_dag(self, ops: dict[str, dict[str, Open3DOpMetrics]] | None = None) -> dict:
        """The ``dag`` section from current statistics and the last app-state read.

        Cheap enough to run on every call event: it reads nothing from the target.
        Returns the per-node call coverage for the ``perfd`` section.
        """
        read = self._read
        state = read.state
        if ops is None:
            ops = self.ops_by_node() if self.ops_by_node else {}
        now = time.monotonic()
        queue_depth = self._queue_depth()
        exact = read.exact
        with self._lock:
            running = self.tracker.in_flight()  # now, for running_nodes
            window = self._exact_window(exact, now)
            ids = list(state.nodes) + [n for n in self.stats if n not in state.nodes]
            nodes = [self._metrics(node_id, state.nodes.get(node_id), now, queue_depth,
                                   state.throttled.get(node_id, 0), ops.get(node_id), exact.get(node_id),
                                   window.get(node_id))
                     for node_id in ids]
            coverage = {n: _coverage(read.seen.get(n, (0, 0)), c, self._node(n).untimed_calls)
                        for n, c in exact.items()}
            # Published under the lock: the tracker thread publishes on every call
            # event and the publisher thread on its timer; a section built before
            # the other thread's and stored after it would show stale numbers
            # until the next call event (a frame period later).
            self.registry.publish_dag(DagMetrics(nodes=nodes, total_nodes=len(state.nodes),
                                                 running_nodes=sum(1 for n in running.values() if n)))
        self.registry.update_system(queue_depth=queue_depth)
        return coverage

    def _queue_depth(self) -> int:
        """Fresh from the semaphore when it is known (the queue moves faster than
        the counters are read), else the last app-state read."""
        depth = self._slow[2].depth_now() if self._slow is not None else None
        return depth if depth is not None else (self._read.state.queue_depth or 0)

    def publish(self) -> None:
        """Everything this source owns: dag, app-derived system fields, self-report."""
        state = self._read.state
        ops = self.ops_by_node() if self.ops_by_node else {}
        self._time_missed_calls()
        coverage = self.publish_dag(ops)
        now = time.monotonic()
        # How many calls the sampler itself saw, against the exact count from app
        # state: a node with low coverage has calls shorter than a sample period,
        # and its exec times come from the calls that were seen.
        self.registry.publish_extra("dag_calls", coverage or None)
        self.registry.publish_extra("call_tracking", self.tracking_status())
        if self.attributed_by:
            self.registry.publish_extra("open3d_attribution", dict(self.attributed_by))
        if profiles := self._profiles_due(now):
            self.registry.publish_profiles(profiles)
        if UNATTRIBUTED in ops:
            self.registry.publish_extra("open3d_unattributed", {op: m.model_dump() for op, m in ops[UNATTRIBUTED].items()})
        if self.ws_fallback and state.ws_connections is not None:
            self.registry.publish_websocket(WebSocketMetrics(
                topics={t: WsTopicMetrics(active_connections=n) for t, n in state.ws_connections.items()},
                total_connections=sum(state.ws_connections.values())))
        self.registry.update_system(thread_count=self.sampler.thread_count)
        self.registry.publish_sampler(self.sampler.status())
        reasons = [m for m in state.missing] + ([self.note] if self.note else [])
        self.registry.set_source(self.name, True, "; ".join(reasons) or None)

    def _profiles_due(self, now: float) -> dict[str, dict[str, int]] | None:
        """A copy of the per-node stacks, once a second (they change slowly)."""
        if now - self._profiles_at < 1.0:
            return None
        self._profiles_at = now
        with self._lock:
            return {node: dict(counts) for node, counts in self.profiles.items()}

    def tracking_status(self) -> dict:
        """Achieved call-tracking rate and its worst gap over the last 10 s."""
        times = list(self._track_times)
        counts = {"failures": self.track_failures, "errors": self.track_errors,
                  "incomplete_looks": self.incomplete_looks,
                  # op groups the tracker missed that no clear look bounds: not placed, so not timed
                  "unplaced_op_groups": self.missed.unbounded}
        if len(times) < 2:
            return {"rate_hz": self.track_hz, "achieved_hz": 0.0, "max_gap_ms": None, **counts}
        gaps = [b - a for a, b in zip(times, times[1:])]
        return {"rate_hz": self.track_hz, "achieved_hz": round((len(times) - 1) / ((times[-1] - times[0]) / 1e9), 1),
                "max_gap_ms": round(max(gaps) / 1e6, 2), **counts}

    def _exact_calls(self, derived: dict[str, int] | None, running: dict[str, int]) -> dict[str, int]:
        """Completed calls since attach, from app-state counters (see AppState.derived_calls);
        the first counters read are the base. Publisher thread only."""
        if derived is None:
            return {}
        if self._derived_base is None:
            self._derived_base = derived
        base = self._derived_base
        return {n: max(0, c - base.get(n, 0) - running.get(n, 0)) for n, c in derived.items()}

    def _exact_window(self, exact: dict[str, int], now: float) -> dict[str, int]:
        """Exact calls completed per node over the last second (for throughput)."""
        history = self._exact_history
        history.append((now, exact))
        while len(history) > 2 and history[1][0] <= now - RATE_WINDOW_S:
            history.popleft()
        then, before = history[0]
        if not exact or now - then < 0.5 * RATE_WINDOW_S:
            return {}
        return {n: max(0, c - before.get(n, 0)) for n, c in exact.items()}

    def _metrics(self, node_id: str, info: NodeInfo | None, now: float, queue_depth: int, throttled: int,
                 ops: dict[str, Open3DOpMetrics] | None, exact_calls: int | None,
                 calls_in_window: int | None) -> DagNodeMetrics:
        s = self.stats.get(node_id) or NodeStats()
        return DagNodeMetrics(
            node_id=node_id,
            node_name=info.name if info else node_id,
            node_type=info.type if info else self.profile.node.type_fallback,
            last_exec_ms=s.last_exec_ms,
            avg_exec_ms=s.avg_exec_ms,
            calls_total=exact_calls if exact_calls is not None else s.calls_total,
            throughput_pps=s.throughput_pps(now, calls_in_window),
            last_point_count=s.last_point_count,
            throttled_count=throttled,
            queue_depth=queue_depth,
            last_seen_ts=s.last_seen_ts,
            open3d_ops=ops or None,
        )


def _coverage(seen: tuple[int, int], exact: int, untimed: int) -> dict:
    """One node's entry in ``perfd.dag_calls``: the tracker's counts and the
    app's exact count, both as of the same app-state read."""
    tracked, placed = seen
    return {"observed_calls": tracked, "exact_calls": exact, "untimed_calls": untimed,
            "placed_from_ops": placed, "coverage": round(tracked / exact, 3) if exact else None}
