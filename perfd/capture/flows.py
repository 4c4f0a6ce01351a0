"""Connections of the target's listening ports: segments in, traffic events out (sans-IO).

Each TCP connection to one of the target's ports gets a reassembler per
direction, an HTTP parser per direction, and — after a ``101`` upgrade — a
WebSocket frame parser on the server→client stream (the only direction whose
messages are counted). What leaves this module is what the metrics need:
WebSocket opens/closes/messages attributed to a topic, and finished ``/api/``
calls with their latency (client's last request byte → server's first
response byte, both as capture timestamps).

Connections already open when capture starts ("picked up", first segment not
a SYN) are parsed from the next safe boundary only:

* HTTP: from the first segment of a direction that begins with a complete,
  valid start line; a response is only reported when the request it answers
  was seen whole (so a request in flight at attach is not counted, and a
  pipelining client picked up mid-pipeline could be mispaired — browsers and
  common clients do not pipeline).
* WebSocket: the upgrade was missed, so neither the topic nor the deflate
  setting is known. Frames are resynced only at a segment start that holds a
  valid server→client data or control frame header, confirmed by the next two
  headers its length fields point to (see ``websocket``); a message in flight
  at attach is not counted. Messages of a compressed connection are counted
  at their wire size (the sender's deflate window was not seen). The
  connection's messages are attributed to a topic only when one is supplied
  with ``hint_topic`` (e.g. from the app's WebSocket manager state), and are
  otherwise counted as unattributed (``total_connections`` only).

The same resync applies after bytes are lost to a capture drop.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from perfd.capture.http import (
    HttpDesync,
    HttpParser,
    MessageEnd,
    RequestHead,
    ResponseHead,
    Role,
    Upgraded,
)
from perfd.capture.packets import Segment
from perfd.capture.tcp import BufferBudget, Data, End, Gap, Reassembler
from perfd.capture.websocket import OP_CLOSE, FrameParser, WsControl, WsDesync, WsMessage

API_PREFIX = "/api/"
MAX_HINTS = 4096


# --- events out --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WsOpened:
    conn: int
    topic: str | None
    ts: float
    deflate: bool | None


@dataclass(frozen=True, slots=True)
class WsClosed:
    conn: int
    topic: str | None
    ts: float


@dataclass(frozen=True, slots=True)
class WsData:
    """One server→client data message of ``size`` payload bytes."""

    conn: int
    topic: str | None
    size: int
    ts: float


@dataclass(frozen=True, slots=True)
class ApiCall:
    method: str
    path: str
    status: int
    latency_s: float
    ts: float


TrafficEvent = WsOpened | WsClosed | WsData | ApiCall


# --- helpers -------------------------------------------------------------


def topic_of(target: str) -> str:
    """Topic of a WebSocket upgrade target: its path's last segment (``/ws/{topic}``)."""
    path = request_path(target)
    return path.rstrip("/").rsplit("/", 1)[-1] or "/"


def request_path(target: str) -> str:
    """The path of a request target: query and fragment stripped, absolute form reduced."""
    if "://" in target:
        rest = target.split("://", 1)[1]
        target = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    return target.split("?", 1)[0].split("#", 1)[0]


@dataclass
class _Request:
    method: str
    target: str
    upgrade: str | None
    end_ts: float | None = None


@dataclass
class _Connection:
    id: int
    client: tuple[bytes, int]
    c2s: Reassembler
    s2c: Reassembler
    request_parser: HttpParser
    response_parser: HttpParser
    picked_up: bool
    requests: deque[_Request] = field(default_factory=deque)
    ws: FrameParser | None = None  # server→client frames, once upgraded (or found mid-stream)
    ws_topic: str | None = None
    ws_open: bool = False
    ws_deflate: bool = False
    ws_no_context: bool = False  # server_no_context_takeover: each message inflates on its own
    upgraded: bool = False
    last_ts: float = 0.0


@dataclass
class FlowStats:
    connections_seen: int = 0
    picked_up: int = 0
    evicted: int = 0
    http_desyncs: int = 0
    ws_desyncs: int = 0
    lost_bytes: int = 0
    retransmitted: int = 0
    compressed_at_wire_size: int = 0  # deflate messages that could not be inflated (history unknown)


class FlowTable:
    """All tracked connections to ``ports``; feed decoded segments in capture order."""

    def __init__(self, ports: set[int] | frozenset[int] = frozenset(), *, max_connections: int = 8192,
                 max_buffer: int = 4 * 1024 * 1024, total_buffer: int = 64 * 1024 * 1024) -> None:
        self.ports = frozenset(ports)
        self.max_connections = max_connections
        self.max_buffer = max_buffer
        self.budget = BufferBudget(total_buffer)  # out-of-order bytes over all connections
        self._conns: OrderedDict[tuple[bytes, int, bytes, int], _Connection] = OrderedDict()
        self._hints: dict[tuple[str, int], str] = {}
        self._next_id = 1
        self.stats = FlowStats()

    def set_ports(self, ports: set[int] | frozenset[int]) -> None:
        self.ports = frozenset(ports)

    def hint_topic(self, client_ip: str, client_port: int, topic: str) -> list[TrafficEvent]:
        """Name the topic of a connection whose upgrade was not seen (client address as the server sees it)."""
        key = _client_key((ipaddress.ip_address(client_ip).packed, client_port))
        out: list[TrafficEvent] = []
        for conn in self._conns.values():
            if conn.ws is not None and conn.ws_topic is None and _client_key(conn.client) == key:
                conn.ws_topic = topic
                if conn.ws_open:  # move its open connection from "unattributed" to the topic
                    out.append(WsClosed(conn.id, None, conn.last_ts))
                    out.append(WsOpened(conn.id, topic, conn.last_ts, None))
                return out
        if len(self._hints) < MAX_HINTS:  # not seen yet: applied when its first segment arrives
            self._hints[key] = topic
        return out

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def segment(self, seg: Segment, ts: float) -> list[TrafficEvent]:
        """One captured segment; returns whatever it completed."""
        if seg.dport in self.ports:
            key = (seg.src, seg.sport, seg.dst, seg.dport)
            to_server = True
        elif seg.sport in self.ports:
            key = (seg.dst, seg.dport, seg.src, seg.sport)
            to_server = False
        else:
            return []
        out: list[TrafficEvent] = []
        conn = self._conns.get(key)
        if conn is None:
            if seg.rst or (seg.fin and not seg.payload):
                return out
            conn = self._new_connection(key, picked_up=not seg.syn, ts=ts, out=out)
        else:
            self._conns.move_to_end(key)
        conn.last_ts = ts
        mine, theirs = (conn.c2s, conn.s2c) if to_server else (conn.s2c, conn.c2s)
        if seg.has_ack and not seg.syn:
            self._stream_events(conn, not to_server, theirs.acked(seg.ack, ts), out)
        self._stream_events(
            conn, to_server, mine.segment(seg.seq, seg.payload, ts, syn=seg.syn, fin=seg.fin, rst=seg.rst), out
        )
        if seg.rst or (conn.c2s.closed and conn.s2c.closed):
            self._finish(key, conn, ts, out)
        return out

    def close_all(self, ts: float) -> list[TrafficEvent]:
        out: list[TrafficEvent] = []
        for key, conn in list(self._conns.items()):
            self._finish(key, conn, ts, out)
        return out

    def prune(self, alive: set[tuple[str, int]], ts: float, idle: float = 2.0) -> list[TrafficEvent]:
        """Drop connections the kernel no longer lists by client ``(ip, port)`` and that have been
        silent for ``idle`` s (a FIN/RST the capture missed). The idle grace covers a connection
        whose handshake is captured before the kernel's table shows it."""
        out: list[TrafficEvent] = []
        for key, conn in list(self._conns.items()):
            if conn.last_ts < ts - idle and _client_key(conn.client) not in alive:
                self._finish(key, conn, ts, out)
        return out

    def live_retransmitted(self) -> int:
        return sum(c.c2s.retransmitted + c.s2c.retransmitted for c in self._conns.values())

    def live_lost_bytes(self) -> int:
        """Stream bytes lost on connections still open (closed ones are in ``stats``)."""
        return sum(c.c2s.lost_bytes + c.s2c.lost_bytes for c in self._conns.values())

    # --- internals ---------------------------------------------------------

    def _new_connection(self, key: tuple[bytes, int, bytes, int], *, picked_up: bool, ts: float,
                        out: list[TrafficEvent]) -> _Connection:
        while len(self._conns) >= self.max_connections:
            old_key, old = next(iter(self._conns.items()))
            self.stats.evicted += 1
            self._finish(old_key, old, ts, out)
        conn = _Connection(
            id=self._next_id,
            client=(key[0], key[1]),
            c2s=Reassembler(self.max_buffer, self.budget),
            s2c=Reassembler(self.max_buffer, self.budget),
            request_parser=HttpParser(Role.REQUEST, synced=not picked_up),
            response_parser=HttpParser(Role.RESPONSE, synced=not picked_up),
            picked_up=picked_up,
        )
        if picked_up:
            # the upgrade may have happened before attach: hunt for frames as well
            conn.ws = FrameParser(masked=False, deflate=None, synced=False)
            conn.ws_topic = self._hints.pop(_client_key(conn.client), None)
        self._next_id += 1
        self._conns[key] = conn
        self.stats.connections_seen += 1
        self.stats.picked_up += picked_up
        return conn

    def _finish(self, key: tuple[bytes, int, bytes, int], conn: _Connection, ts: float,
                out: list[TrafficEvent]) -> None:
        if self._conns.pop(key, None) is None:
            return
        conn.c2s.release()
        conn.s2c.release()
        self._response_events(conn, conn.response_parser.close(ts), out)  # a close-delimited response ends
        if conn.ws_open:
            conn.ws_open = False
            out.append(WsClosed(conn.id, conn.ws_topic, ts))
        self.stats.lost_bytes += conn.c2s.lost_bytes + conn.s2c.lost_bytes
        self.stats.retransmitted += conn.c2s.retransmitted + conn.s2c.retransmitted

    def _stream_events(self, conn: _Connection, to_server: bool, events: list, out: list[TrafficEvent]) -> None:
        for ev in events:
            if type(ev) is Data:
                if to_server:
                    self._client_bytes(conn, ev.payload, ev.ts, out)
                else:
                    self._server_bytes(conn, ev.payload, ev.ts, out)
            elif type(ev) is Gap:
                if to_server:
                    if not conn.upgraded:
                        self._lose_http_sync(conn)
                elif conn.ws is not None:
                    ws_was_synced = conn.ws.synced
                    conn.ws.reset_hunting()
                    self.stats.ws_desyncs += ws_was_synced
                elif not conn.upgraded:
                    self._lose_http_sync(conn)
            elif type(ev) is End:
                if not to_server:
                    self._response_events(conn, conn.response_parser.close(ev.ts), out)

    def _lose_http_sync(self, conn: _Connection) -> None:
        """Bytes of a request or response were lost: pairing cannot be trusted until both resync."""
        conn.request_parser.lose_sync()
        conn.response_parser.lose_sync()
        conn.requests.clear()
        self.stats.http_desyncs += 1

    def _client_bytes(self, conn: _Connection, data: bytes | memoryview, ts: float, out: list[TrafficEvent]) -> None:
        if conn.upgraded or (conn.ws is not None and conn.ws.synced):
            return  # client→server frames are not counted
        for ev in conn.request_parser.feed(data, ts):
            if type(ev) is RequestHead:
                upgrade = ev.header("upgrade")
                conn.requests.append(_Request(ev.method, ev.target, upgrade))
                conn.response_parser.expect(ev.method, upgrade)
            elif type(ev) is MessageEnd:
                if conn.requests and conn.requests[-1].end_ts is None:
                    conn.requests[-1].end_ts = ts
            elif type(ev) is HttpDesync:
                self._lose_http_sync(conn)

    def _server_bytes(self, conn: _Connection, data: bytes | memoryview, ts: float, out: list[TrafficEvent]) -> None:
        if conn.upgraded:
            self._ws_bytes(conn, data, ts, out)
            return
        if conn.ws is not None:
            # picked up mid-stream and still undecided: HTTP or an already upgraded WebSocket?
            self._ws_bytes(conn, data, ts, out)
            if conn.ws.synced:
                conn.upgraded = True
                return
        self._response_events(conn, conn.response_parser.feed(data, ts), out)
        if conn.ws is not None and not conn.upgraded and not conn.response_parser.hunting:
            conn.ws = None  # HTTP found its footing: not a WebSocket

    def _response_events(self, conn: _Connection, events: list, out: list[TrafficEvent]) -> None:
        for ev in events:
            if type(ev) is ResponseHead:
                if 100 <= ev.status < 200 and ev.status != 101:
                    continue
                req = conn.requests.popleft() if conn.requests else None
                if req is None or req.end_ts is None:
                    continue  # its request was not seen whole (picked up, or lost)
                if ev.status == 101:
                    conn.ws_topic = topic_of(req.target)
                    extensions = (ev.header("sec-websocket-extensions") or "").lower()
                    conn.ws_deflate = "permessage-deflate" in extensions
                    conn.ws_no_context = "server_no_context_takeover" in extensions
                    continue
                path = request_path(req.target)
                if path.startswith(API_PREFIX):
                    latency = max(0.0, ev.begin_mark - req.end_ts)
                    out.append(ApiCall(req.method, path, ev.status, latency, ev.begin_mark))
            elif type(ev) is Upgraded:
                if ev.protocol != "websocket":
                    conn.upgraded = True  # some other protocol: stop parsing
                    conn.ws = None
                    continue
                deflate = conn.ws_deflate
                conn.ws = FrameParser(masked=False, deflate=deflate, synced=True, inflate=deflate,
                                      no_context_takeover=conn.ws_no_context)
                conn.upgraded = True
                conn.picked_up = False
                conn.ws_open = True
                conn.requests.clear()
                out.append(WsOpened(conn.id, conn.ws_topic, conn.last_ts, deflate))
                if ev.rest:
                    self._ws_bytes(conn, ev.rest, conn.last_ts, out)
            elif type(ev) is HttpDesync:
                self._lose_http_sync(conn)

    def _ws_bytes(self, conn: _Connection, data: bytes | memoryview, ts: float, out: list[TrafficEvent]) -> None:
        ws = conn.ws
        if ws is None:
            return
        for ev in ws.feed(data):
            if type(ev) is WsMessage:
                if not conn.ws_open:
                    conn.ws_open = True
                    out.append(WsOpened(conn.id, conn.ws_topic, ts, None))
                if ev.compressed and not ev.inflated:
                    self.stats.compressed_at_wire_size += 1
                out.append(WsData(conn.id, conn.ws_topic, ev.size, ts))
            elif type(ev) is WsControl:
                if ev.opcode == OP_CLOSE and conn.ws_open:
                    conn.ws_open = False
                    out.append(WsClosed(conn.id, conn.ws_topic, ts))
            elif type(ev) is WsDesync:
                self.stats.ws_desyncs += 1


def _client_key(client: tuple[bytes, int]) -> tuple[str, int]:
    ip = ipaddress.ip_address(client[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (str(ip), client[1])
