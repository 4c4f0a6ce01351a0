"""The capture source: the target's HTTP/WebSocket traffic → ``websocket`` and ``endpoints``.

One daemon thread owns everything mutable: it waits on the packet ring,
feeds segments through the flow table into the metrics, publishes to the
registry (10×/s), and once a second follows the target's listening ports
(updating the kernel filter when they change), prunes connections the kernel
no longer has, folds in the kernel's drop counters and publishes its status
(the ``capture`` key of the ``perfd`` section). Other threads only read
``status()`` (a copy) and queue topic hints.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict, dataclass, field

from perfd.capture.flows import FlowTable
from perfd.capture.metrics import TrafficMetrics
from perfd.capture.netns import is_permission_error, run_in_netns
from perfd.capture.packets import decode
from perfd.capture.ports import connected_peers, listening_ports, socket_inodes
from perfd.capture.ring import PacketRing, RingConfig, open_packet_socket
from perfd.errors import NoSuchProcess, PerfdError
from perfd.registry import Registry

log = logging.getLogger(__name__)

MISSING = "WebSocket message/byte rates and totals and all endpoints are not measured"
FIX_PRIVILEGES = (
    "run perfd as root, or grant it CAP_NET_RAW (packet socket) and CAP_SYS_ADMIN "
    "(enter the target's network namespace)"
)


class CaptureError(PerfdError):
    """Traffic capture cannot run for this target."""


class CapturePermissionError(CaptureError):
    """Missing CAP_NET_RAW / CAP_SYS_ADMIN: no packet socket in the target's namespace."""


@dataclass
class CaptureStatus:
    """Health of the capture, for the ``perfd`` self-report and benchmarks."""

    running: bool = False
    ports: list[int] = field(default_factory=list)
    packets: int = 0  # decoded TCP segments processed
    bytes: int = 0  # TCP payload bytes processed
    kernel_packets: int = 0  # accepted by the filter (PACKET_STATISTICS)
    kernel_drops: int = 0  # lost to a full ring (PACKET_STATISTICS)
    lost_bytes: int = 0  # stream bytes never seen (drops made visible by the peer's ACKs)
    duplicate_segments: int = 0  # retransmissions, or the same packet captured twice
    open_connections: int = 0
    connections_seen: int = 0
    picked_up_connections: int = 0  # open before attach: parsed from the next safe boundary
    unattributed_ws_connections: int = 0  # WebSocket with unknown topic (upgrade not seen)
    unattributed_ws_messages: int = 0
    compressed_at_wire_size: int = 0  # permessage-deflate messages counted at compressed size
    http_desyncs: int = 0
    ws_desyncs: int = 0
    errors: int = 0  # packets that raised while being processed (counted, skipped)

    def reason(self) -> str | None:
        """What health should say about the numbers, or None when they are complete."""
        notes = []
        if self.kernel_drops:
            notes.append(f"kernel dropped {self.kernel_drops} packets (ring full): counts may be low")
        if self.lost_bytes:
            notes.append(f"{self.lost_bytes} stream bytes lost; affected connections were resynced")
        if self.unattributed_ws_connections:
            notes.append(
                f"{self.unattributed_ws_connections} WebSocket connection(s) opened before attach have no "
                "known topic: counted in total_connections only"
            )
        if self.compressed_at_wire_size:
            notes.append(
                f"{self.compressed_at_wire_size} compressed WebSocket message(s) counted at their wire size "
                "(permessage-deflate history not seen)"
            )
        if not self.ports:
            notes.append("target has no listening TCP ports yet")
        return "; ".join(notes) or None


class CaptureSource:
    """Passive capture of ``pid``'s listening ports, publishing into ``registry``."""

    name = "capture"

    def __init__(
        self,
        pid: int,
        registry: Registry,
        *,
        publish_hz: float = 10.0,
        refresh_s: float = 1.0,
        full_refresh_s: float = 5.0,
        ring: RingConfig = RingConfig(),
    ) -> None:
        self.pid = pid
        self.registry = registry
        self.publish_period = 1.0 / publish_hz
        self.refresh_s = refresh_s
        self.full_refresh_s = full_refresh_s
        self._inodes: set[int] = set()
        self._next_full = 0.0
        self.ring_config = ring
        self._ring: PacketRing | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._hints: list[tuple[str, int, str]] = []
        self._status = CaptureStatus()
        self.flows = FlowTable()
        self.metrics = TrafficMetrics()
        self._packets = self._bytes = self._errors = 0  # owned by the capture thread
        self._complete_until = 0.0  # capture time up to which every packet has been counted

    # --- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Open the ring inside the target's namespace and start the thread.

        Raises ``CapturePermissionError`` without the privileges, ``NoSuchProcess``
        when the target is gone, ``CaptureError`` for anything else the kernel refuses.
        """
        ports = frozenset(listening_ports(self.pid))
        try:
            ring = run_in_netns(self.pid, lambda: PacketRing(open_packet_socket(), self.ring_config, ports))
        except NoSuchProcess:
            raise
        except OSError as e:
            if is_permission_error(e):
                raise CapturePermissionError(
                    f"traffic capture not permitted ({e.strerror}): {MISSING}; {FIX_PRIVILEGES}") from None
            raise CaptureError(f"traffic capture unavailable ({e}): {MISSING}") from None
        self._ring = ring
        self.flows.set_ports(ports)
        self._status.ports = sorted(ports)
        self._status.running = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"perfd-capture-{self.pid}", daemon=True)
        self._thread.start()
        self.registry.set_source(self.name, True, self._status.reason())

    def stop(self) -> None:
        """Stop the thread and close the socket and ring (well within 1 s)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=1.0)
        self._thread = None
        ring, self._ring = self._ring, None
        if ring is not None and (thread is None or not thread.is_alive()):
            ring.close()
        self._status.running = False

    def status(self) -> CaptureStatus:
        with self._lock:
            return CaptureStatus(**asdict(self._status))

    def hint_topic(self, client_ip: str, client_port: int, topic: str) -> None:
        """Topic of a connection opened before attach (e.g. from the app's WS manager)."""
        with self._lock:
            self._hints.append((client_ip, client_port, topic))

    # --- the capture thread ------------------------------------------------

    def _run(self) -> None:
        ring = self._ring
        assert ring is not None
        next_publish = time.monotonic()
        next_refresh = next_publish + self.refresh_s
        try:
            while not self._stop.is_set():
                if ring.wait(min(0.1, self.publish_period)):
                    with closing(ring.packets()) as batch:  # closing: the block in hand goes back to the kernel
                        self._consume(batch)
                if not ring.has_ready_block:
                    # everything captured before this moment (less a block's retire delay) is counted
                    self._complete_until = time.time() - ring.max_delay
                mono = time.monotonic()
                if mono >= next_refresh:
                    next_refresh = mono + self.refresh_s
                    self._refresh(ring)
                with self._lock:
                    self._status.packets, self._status.bytes = self._packets, self._bytes
                    self._status.errors = self._errors
                if mono >= next_publish:
                    next_publish = mono + self.publish_period
                    self._publish()
        except NoSuchProcess:
            pass  # the engine's watcher reports the exit
        except Exception:
            log.exception("capture thread failed")
            self.registry.set_source(self.name, False, "capture thread failed; see perfd's log")
        finally:
            self._stop.set()
            ring.close()
            self._ring = None

    def _consume(self, batch: Iterator[tuple[float, int, memoryview]]) -> None:
        """Decode and account every packet of ``batch``; leave early when asked to stop."""
        flows, metrics, stop = self.flows, self.metrics, self._stop
        for ts, proto, pkt in batch:
            seg = decode(pkt, proto)
            if seg is None:
                continue
            self._packets += 1
            self._bytes += len(seg.payload)
            try:
                events = flows.segment(seg, ts)
            except Exception:  # a parser bug must cost one packet, not the source
                self._errors += 1
                log.exception("capture: packet processing failed")
                continue
            if events:
                metrics.apply(events)
            if stop.is_set():
                return

    def _refresh(self, ring: PacketRing) -> None:
        with self._lock:
            hints, self._hints = self._hints, []
        for ip, port, topic in hints:
            self.metrics.apply(self.flows.hint_topic(ip, port, topic))
        # The socket tables are costly to read on a busy host: re-read them when the
        # target's set of sockets changed (a new listener is a new fd) or every full_refresh_s.
        inodes = socket_inodes(self.pid)
        mono = time.monotonic()
        if inodes != self._inodes or mono >= self._next_full:
            self._inodes = inodes
            ports = frozenset(listening_ports(self.pid, inodes))
            if ports != self.flows.ports:
                ring.set_ports(ports)
                self.flows.set_ports(ports)
        if mono >= self._next_full:
            self._next_full = mono + self.full_refresh_s
            alive = connected_peers(self.pid, self.flows.ports)
            self.metrics.apply(self.flows.prune(alive, time.time(), idle=2.0))
        ports = self.flows.ports
        stats = ring.read_stats()
        fs = self.flows.stats
        with self._lock:
            st = self._status
            st.ports = sorted(ports)
            st.kernel_packets, st.kernel_drops = stats.packets, stats.drops
            st.lost_bytes = fs.lost_bytes + self.flows.live_lost_bytes()
            st.duplicate_segments = fs.retransmitted + self.flows.live_retransmitted()
            st.open_connections = self.flows.open_connections
            st.connections_seen, st.picked_up_connections = fs.connections_seen, fs.picked_up
            st.unattributed_ws_connections = self.metrics.unattributed.active
            st.unattributed_ws_messages = self.metrics.unattributed.messages
            st.http_desyncs, st.ws_desyncs = fs.http_desyncs, fs.ws_desyncs
            st.compressed_at_wire_size = fs.compressed_at_wire_size
            reason = st.reason()
            extra = asdict(st)
        self.registry.set_source(self.name, True, reason)
        self.registry.publish_extra("capture", extra)  # kernel drop counters etc. in health

    def _publish(self) -> None:
        # rates over the last second *of traffic already counted*: a window ending at wall-clock
        # now would miss the packets still waiting in the ring and read low
        self.registry.publish_websocket(self.metrics.websocket(min(time.time(), self._complete_until)))
        self.registry.publish_endpoints(self.metrics.endpoints())
