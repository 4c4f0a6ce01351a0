"""App state read out of the target through the profile's remote paths.

Node registry (ids, names, types, object addresses), throttle counters, the
sensor queue's depth and the WebSocket manager's connection counts. Each
profile entry lists alternatives; the first that resolves is remembered so
later reads skip the misses.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from perfd.cpython.objects import ArrayInfo, Failure
from perfd.cpython.paths import ObjectPath, locate
from perfd.cpython.stacks import StackReader
from perfd.errors import MemoryReadError, NoSuchProcess
from perfd.profile import AppProfile

_U32 = struct.Struct("<I")
_Q = struct.Struct("<Q")
# _multiprocessing.SemLock is { PyObject_HEAD; sem_t *handle; ... } on every
# CPython since 3.4; glibc keeps a semaphore's value in the low 32 bits of the
# first word of sem_t (x86_64 and aarch64 alike).
SEMLOCK_HANDLE_OFFSET = 16
SEM_VALUE_MASK = 0x7FFFFFFF
MAX_PEERS = 1024
_COUNTERS = ("throttled_counts", "sensor_queue", "frames_counter")  # re-read on every counters pass


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    name: str
    type: str
    address: int


@dataclass
class AppState:
    nodes: dict[str, NodeInfo] = field(default_factory=dict)  # id -> info, registry order
    throttled: dict[str, int] = field(default_factory=dict)
    queue_depth: int | None = None
    ws_connections: dict[str, int] | None = None  # topic -> open sockets, when the manager is readable
    ws_peers: list[tuple[str, int, str]] = field(default_factory=list)  # (client host, port, topic)
    frames: int | None = None  # frames the source node took (profile: frames_counter)
    source_node: str | None = None
    downstream: dict[str, list[str]] | None = None
    missing: list[str] = field(default_factory=list)  # what could not be read, for health

    def derived_calls(self) -> dict[str, int] | None:
        """Calls started per node, from the frame counter and the DAG's edges:
        every call of a node hands its output to each child, minus the frames
        the throttle dropped for that child. None without the counters."""
        if self.frames is None or self.source_node is None or self.downstream is None:
            return None
        edges = self.downstream
        reachable, stack = {self.source_node}, [self.source_node]
        while stack:
            for child in edges.get(stack.pop(), ()):
                if child not in reachable:
                    reachable.add(child)
                    stack.append(child)
        indegree = {n: 0 for n in reachable}
        for node in reachable:
            for child in edges.get(node, ()):
                indegree[child] += 1
        handed = {n: 0 for n in reachable}
        out = {self.source_node: self.frames}
        calls: dict[str, int] = {}
        ready = [self.source_node]
        while ready:  # topological order: a join waits for all its parents
            node = ready.pop()
            for child in edges.get(node, ()):
                handed[child] += out[node]
                indegree[child] -= 1
                if indegree[child] == 0:
                    calls[child] = out[child] = max(0, handed[child] - self.throttled.get(child, 0))
                    ready.append(child)
        return calls


class AppStateReader:
    def __init__(self, profile: AppProfile, stacks: StackReader) -> None:
        self.profile = profile
        self.stacks = stacks
        self.objects = stacks.objects
        self._parents: dict[str, tuple[int, tuple[str, str | int]]] = {}  # key -> (holder address, last step)
        self.semaphore: tuple[int, int] | None = None  # (sem_t address, maxsize) of the sensor queue

    def read(self, previous: AppState | None = None) -> AppState:
        """Everything; with ``previous``, only the fast-moving counters (throttle
        counts, queue depth, frame counter) are read again — the registry, edges
        and connection lists are carried over."""
        st = self.profile.state
        if previous is None:
            self._parents.clear()  # objects may have been replaced: resolve every path again
            state = AppState()
            registry = self._locate("node_registry", st.node_registry, state)
            if registry is not None:
                state.nodes = self._nodes(registry)
            manager = self._locate("ws_manager", st.ws_manager, state)
            if manager is not None:
                state.ws_connections, state.ws_peers = self._connections(manager)
            self._read_edges(state)
        else:
            state = AppState(nodes=previous.nodes, ws_connections=previous.ws_connections, ws_peers=previous.ws_peers,
                             source_node=previous.source_node, downstream=previous.downstream,
                             missing=[m for m in previous.missing if not m.startswith(_COUNTERS)])
        throttled = self._locate("throttled_counts", st.throttled_counts, state)
        if throttled is not None:
            state.throttled = {k: v for k, v in self._str_dict(throttled).items() if isinstance(v, int)}
        queue = self._locate("sensor_queue", st.sensor_queue, state)
        if queue is not None:
            state.queue_depth = self.queue_depth(queue, st.sensor_queue_maxsize)
            if state.queue_depth is None:
                state.missing.append("sensor_queue (not a readable multiprocessing.Queue)")
        frames = self._locate("frames_counter", st.frames_counter, state) if state.downstream else None
        if frames is not None:
            count = self.objects.decode(frames, 0)
            state.frames = count if isinstance(count, int) and not isinstance(count, bool) else None
        return state

    def _read_edges(self, state: AppState) -> None:
        st = self.profile.state
        if not (st.frames_counter and st.source_node_id and st.downstream_map):
            return
        source = self._locate("source_node_id", st.source_node_id, state)
        edges = self._locate("downstream_map", st.downstream_map, state)
        if source is None or edges is None:
            return
        source_id = self.objects.decode(source, 0)
        downstream = self.objects.decode(edges, 2)
        if isinstance(source_id, str) and isinstance(downstream, dict):
            state.source_node = source_id
            state.downstream = {k: [t for t in v if isinstance(t, str)] for k, v in downstream.items()
                                if isinstance(k, str) and isinstance(v, list)}

    # -- lookups ------------------------------------------------------------
    def _locate(self, key: str, alternatives: list[str], state: AppState) -> int | None:
        """Address of the first alternative that resolves.

        The object holding the last step (e.g. the node manager) is remembered,
        so the 10 Hz counter reads are one attribute lookup instead of a walk
        from ``sys.modules``; a full read (``forget()``) resolves from scratch.
        """
        if not alternatives:
            return None
        cached = self._parents.get(key)
        if cached is not None:
            parent, last = cached
            addr = self.objects.resolve(parent, [last])
            if isinstance(addr, int) and addr:
                return addr
            del self._parents[key]
        for path in (ObjectPath.parse(p) for p in alternatives):
            parent = locate(self.stacks, ObjectPath(path.module, path.steps[:-1])) if len(path.steps) > 1 else None
            if isinstance(parent, int) and parent:
                addr = self.objects.resolve(parent, [path.steps[-1]])
            else:
                addr = locate(self.stacks, path)
                parent = None
            if isinstance(addr, int) and addr:
                if parent:
                    self._parents[key] = (parent, path.steps[-1])
                return addr
        state.missing.append(f"{key} (none of {', '.join(alternatives)} resolved)")
        return None

    def _str_dict(self, addr: int) -> dict[str, object]:
        items = self.objects.dict_items(addr)
        if isinstance(items, Failure):
            return {}
        out: dict[str, object] = {}
        for k, v in items:
            key = self.objects.decode(k, 0)
            if isinstance(key, str):
                out[key] = self.objects.decode(v, 0)
        return out

    def _nodes(self, registry: int) -> dict[str, NodeInfo]:
        items = self.objects.dict_items(registry)
        if isinstance(items, Failure):
            return {}
        attrs = self.profile.node
        out: dict[str, NodeInfo] = {}
        for k, v in items:
            node_id = self.objects.decode(k, 0)
            if not isinstance(node_id, str) or not node_id:
                continue
            name = self._str_attr(v, attrs.name_attr) or node_id
            kind = self._str_attr(v, attrs.type_attr) or attrs.type_fallback
            out[node_id] = NodeInfo(node_id, name, kind, v)
        return out

    def _str_attr(self, addr: int, name: str) -> str | None:
        found = self.objects.attribute(addr, name)
        if isinstance(found, Failure):
            return None
        value = self.objects.decode(found, 0)
        return value if isinstance(value, str) else None

    def _connections(self, manager: int) -> tuple[dict[str, int] | None, list[tuple[str, int, str]]]:
        """Open sockets per topic, and each socket's peer address when readable."""
        items = self.objects.dict_items(manager)
        if isinstance(items, Failure):
            return None, []
        peer_steps = list(ObjectPath.parse("_:" + self.profile.websocket.connection_peer).steps)
        counts, peers = {}, []
        for k, v in items:
            topic = self.objects.decode(k, 0)
            sockets = self.objects.sequence(v)
            if not isinstance(topic, str) or not isinstance(sockets, list):
                continue
            counts[topic] = len(sockets)
            for sock in sockets[:MAX_PEERS]:
                peer = self.objects.resolve(sock, peer_steps)
                value = self.objects.decode(peer, 1) if isinstance(peer, int) else None
                if isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[1], int):
                    peers.append((str(value[0]), value[1], topic))
        return counts, peers

    def queue_depth(self, queue: int, maxsize_hint: int | None) -> int | None:
        """Items in a ``multiprocessing.Queue`` without calling into the target.

        ``Queue.qsize()`` is ``maxsize - self._sem._semlock._get_value()``: every
        ``put`` takes a slot of the bounded semaphore, every ``get`` frees one.
        The semaphore's value lives in shared memory behind the SemLock's
        ``handle``; reading it is what ``sem_getvalue`` does.
        """
        maxsize = self._int_attr(queue, "_maxsize") or maxsize_hint
        sem = self.objects.attribute(queue, "_sem")
        semlock = self.objects.attribute(sem, "_semlock") if isinstance(sem, int) else sem
        if not maxsize or isinstance(semlock, Failure):
            return None
        try:
            handle = _Q.unpack(self.stacks.mem.read(semlock + SEMLOCK_HANDLE_OFFSET, 8))[0]
        except MemoryReadError:
            return None
        self.semaphore = (handle, maxsize) if handle else None
        return self.depth_now()

    def depth_now(self) -> int | None:
        """The queue's depth from the semaphore found by the last ``queue_depth``:
        one 4-byte read, cheap enough for every call event."""
        if self.semaphore is None:
            return None
        handle, maxsize = self.semaphore
        try:
            value = _U32.unpack(self.stacks.mem.read(handle, 4))[0] & SEM_VALUE_MASK
        except (MemoryReadError, NoSuchProcess):  # called from probe callbacks too: never raises
            return None
        return maxsize - value if value <= maxsize else None

    def _int_attr(self, addr: int, name: str) -> int | None:
        found = self.objects.attribute(addr, name)
        if isinstance(found, Failure):
            return None
        value = self.objects.decode(found, 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else None


def point_count(stacks: StackReader, payload: int, key: str) -> int | None:
    """``len(payload[key])``: an ndarray's first dimension, or a sequence's length."""
    objects = stacks.objects
    points = objects.item(payload, key)
    if isinstance(points, Failure):
        return None
    value = objects.decode(points, 0)
    if isinstance(value, ArrayInfo):
        return value.shape[0] if value.shape else 0
    items = objects.sequence(points)
    return len(items) if isinstance(items, list) else None
