"""RFC 6455 frame parser for one direction of one connection (sans-IO).

Fed the in-order bytes of a stream, it emits one event per *message* (a
fragmented message is one message, its size the sum of its fragments'
payloads), per control frame, and per loss of sync. Payload bytes are never
copied: only the 2–14 header bytes are ever buffered, so the cost is per frame,
not per byte.

Sync. A parser that saw the upgrade starts *synced* at the first frame. One
that starts mid-stream (connection open at attach, bytes lost to a capture
drop, garbage) is *hunting*: frame boundaries cannot be found by scanning
arbitrary bytes, so it only tries candidates at the start of a ``feed`` call —
a TCP segment start, which is where a sender's writes usually begin — and
trusts a candidate only after ``confirm`` more headers parsed back to back
each landed on a valid header. A candidate must begin with a data or control
frame, so the tail of a fragmented message whose start was missed is skipped
(not counted) and runs of zero bytes — which read as empty continuation
frames — are never mistaken for frames. Messages seen while confirming are
held and released on confirmation, dropped on failure.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = (OP_TEXT, OP_BINARY)
CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)
MAX_FRAME = 1 << 40  # a larger length field is garbage, not a frame
_INFLATE_STEP = 1 << 20  # inflate in bounded steps: a compression bomb costs time, not memory
_DEFLATE_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 §7.2.2: removed by the sender, restored by the receiver


@dataclass(frozen=True, slots=True)
class WsMessage:
    """A complete data message.

    ``size`` is the application payload: the wire payload, or for a
    permessage-deflate message the inflated payload when the parser could
    inflate it (``inflated``); ``wire_size`` is always what crossed the wire.
    """

    opcode: int
    size: int
    frames: int
    compressed: bool  # RSV1 on the first frame (permessage-deflate)
    wire_size: int = -1
    inflated: bool = False


@dataclass(frozen=True, slots=True)
class WsControl:
    """A close, ping or pong frame (not counted as a message)."""

    opcode: int
    size: int


@dataclass(frozen=True, slots=True)
class WsDesync:
    """Sync was lost (bad header) or a held candidate failed; counting resumes after resync."""

    reason: str


@dataclass(frozen=True, slots=True)
class WsSynced:
    """Hunting ended: frames are being counted again from here."""


WsEvent = WsMessage | WsControl | WsDesync | WsSynced


class FrameParser:
    """One direction of a WebSocket stream.

    ``masked``: True for client→server (every frame must be masked), False for
    server→client (none may be), None to accept either. ``deflate``: whether
    permessage-deflate was negotiated (RSV1 legal on a first data frame);
    None when unknown (picked up mid-stream, the handshake was not seen).
    ``inflate``: measure compressed messages by inflating them (needs the
    stream from its start: the sender's window carries over between messages
    unless ``no_context_takeover``); when inflation fails, sizes fall back to
    wire sizes and ``inflate_errors`` counts it.
    """

    def __init__(
        self,
        *,
        masked: bool | None = False,
        deflate: bool | None = False,
        synced: bool = True,
        confirm: int = 2,
        inflate: bool = False,
        no_context_takeover: bool = False,
    ) -> None:
        self.masked = masked
        self.deflate = deflate
        self.confirm = confirm
        self._hdr = bytearray()
        self._remaining = 0  # payload bytes of the current frame still to skip
        self._in_payload = False
        self._frame: tuple[int, bool, int] | None = None  # (opcode, fin, length) of the current frame
        self._msg_op: int | None = None  # opcode of the data message in progress
        self._msg_size = 0
        self._msg_frames = 0
        self._msg_compressed = False
        self._hunting = not synced
        self._pending: list[WsEvent] | None = None  # held while confirming a candidate
        self._to_confirm = 0
        self.desyncs = 0
        self.frames = 0
        self.no_context_takeover = no_context_takeover
        self._inflater = zlib.decompressobj(-15) if inflate and deflate else None
        self._inflating = False  # the current message is compressed and being inflated
        self._msg_inflated = 0
        self.inflate_errors = 0

    @property
    def synced(self) -> bool:
        return not self._hunting and self._pending is None

    def feed(self, data: bytes | bytearray | memoryview) -> list[WsEvent]:
        """Consume ``data`` (one in-order chunk, ideally one TCP segment)."""
        out: list[WsEvent] = []
        n = len(data)
        pos = 0
        if self._hunting:
            if not n:
                return out
            self._start_candidate()
        while pos < n:
            if self._in_payload:
                take = min(self._remaining, n - pos)
                if self._inflating:
                    self._inflate(data[pos : pos + take])
                self._remaining -= take
                pos += take
                if self._remaining == 0:
                    self._end_frame(out)
                continue
            # header: parse straight from data when it is all here, else buffer
            if self._hdr:
                need = _header_len(self._hdr)
                while need is None or len(self._hdr) < need:
                    if pos >= n:
                        return out
                    self._hdr.append(data[pos])
                    pos += 1
                    if need is None and (need := _header_len(self._hdr)) is not None:
                        if error := self._precheck(self._hdr[0], self._hdr[1]):
                            self._lose_sync(out, error)
                            return out
                header = bytes(self._hdr)
                self._hdr.clear()
            else:
                need = _header_len(data[pos : pos + 2]) if n - pos >= 2 else None
                if need is None or n - pos < need:
                    if need is not None and (error := self._precheck(data[pos], data[pos + 1])):
                        self._lose_sync(out, error)
                        return out
                    self._hdr += data[pos:n]
                    return out
                header = bytes(data[pos : pos + need])
                pos += need
            if not self._begin_frame(header, out):
                # lost sync: the rest of this chunk cannot be trusted
                return out
        return out

    def reset_hunting(self, reason: str | None = None) -> list[WsEvent]:
        """Forget the current position (bytes were lost); resync at a later chunk."""
        out: list[WsEvent] = []
        self._lose_sync(out, reason or "gap in stream")
        return out

    # --- internals ---------------------------------------------------------

    def _start_candidate(self) -> None:
        self._hunting = False
        self._pending = []
        self._to_confirm = self.confirm
        self._hdr.clear()
        self._in_payload = False
        self._remaining = 0
        self._msg_op = None

    def _lose_sync(self, out: list[WsEvent], reason: str) -> None:
        was_confirming = self._pending is not None
        self._pending = None
        if not self._hunting and not was_confirming:
            self.desyncs += 1
            out.append(WsDesync(reason))
        self._hunting = True
        self._hdr.clear()
        self._in_payload = False
        self._remaining = 0
        self._msg_op = None
        self._inflating = False
        if self._inflater is not None:
            # lost bytes may have carried the sender's window: only a per-message context survives
            self._inflater = zlib.decompressobj(-15) if self.no_context_takeover else None

    def _emit(self, out: list[WsEvent], event: WsEvent) -> None:
        if self._pending is not None:
            self._pending.append(event)
        else:
            out.append(event)

    def _inflate(self, data: bytes | memoryview) -> None:
        """Count the inflated bytes of ``data`` (output is discarded step by step)."""
        z = self._inflater
        try:
            out = z.decompress(data, _INFLATE_STEP)
            self._msg_inflated += len(out)
            while z.unconsumed_tail:
                out = z.decompress(z.unconsumed_tail, _INFLATE_STEP)
                self._msg_inflated += len(out)
        except zlib.error:
            # history missing or corrupt: later messages cannot be trusted either
            self.inflate_errors += 1
            self._inflater = None
            self._inflating = False

    def _precheck(self, b0: int, b1: int) -> str | None:
        """What is wrong with a frame from its first two bytes alone (None: nothing)."""
        fin = b0 & 0x80
        opcode = b0 & 0x0F
        if b0 & 0x30:
            return "RSV2/RSV3 set"
        if b0 & 0x40 and (opcode not in DATA_OPCODES or self.deflate is False):
            return "RSV1 set where permessage-deflate does not allow it"
        if self.masked is not None and bool(b1 & 0x80) != self.masked:
            return "mask bit wrong for this direction"
        if opcode in CONTROL_OPCODES:
            if not fin or (b1 & 0x7F) > 125:
                return "fragmented or oversized control frame"
        elif opcode in DATA_OPCODES:
            if self._msg_op is not None:
                return "new data frame inside a fragmented message"
        elif opcode == OP_CONT:
            # also while hunting: the tail of a message whose start was missed is skipped, and
            # runs of zero bytes (which read as empty continuation frames) never become a candidate
            if self._msg_op is None:
                return "continuation outside a message"
        else:
            return f"unknown opcode {opcode:#x}"
        return None

    def _begin_frame(self, header: bytes, out: list[WsEvent]) -> bool:
        b0, b1 = header[0], header[1]
        fin = bool(b0 & 0x80)
        rsv1 = bool(b0 & 0x40)
        opcode = b0 & 0x0F
        length = b1 & 0x7F
        if length == 126:
            length = int.from_bytes(header[2:4], "big")
        elif length == 127:
            length = int.from_bytes(header[2:10], "big")
        error = self._precheck(b0, b1)
        if error is None and length >= MAX_FRAME:
            error = "implausible frame length"
        if error is not None:
            self._lose_sync(out, error)
            return False
        if self._pending is not None:
            self._to_confirm -= 1
            if self._to_confirm < 0:
                # confirmed: release what was held
                held, self._pending = self._pending, None
                out.extend(held)
                out.append(WsSynced())
        self.frames += 1
        if opcode in DATA_OPCODES:
            self._msg_op = opcode
            self._msg_size = 0
            self._msg_frames = 0
            self._msg_compressed = rsv1
            self._msg_inflated = 0
            self._inflating = rsv1 and self._inflater is not None
        self._frame = (opcode, fin, length)
        if opcode in DATA_OPCODES or opcode == OP_CONT:
            self._msg_size += length
            self._msg_frames += 1
        self._remaining = length
        self._in_payload = length > 0
        if not self._in_payload:
            self._end_frame(out)
        return True

    def _end_frame(self, out: list[WsEvent]) -> None:
        self._in_payload = False
        opcode, fin, length = self._frame  # type: ignore[misc]
        if opcode in CONTROL_OPCODES:
            self._emit(out, WsControl(opcode, length))
            return
        if fin:
            if self._msg_op in DATA_OPCODES:
                size, inflated = self._msg_size, False
                if self._inflating:
                    self._inflate(_DEFLATE_TAIL)
                    if self._inflating:  # no error on the way
                        size, inflated = self._msg_inflated, True
                    if self.no_context_takeover and self._inflater is not None:
                        self._inflater = zlib.decompressobj(-15)
                self._emit(out, WsMessage(self._msg_op, size, self._msg_frames, self._msg_compressed,
                                          self._msg_size, inflated))
            self._inflating = False
            self._msg_op = None


def _header_len(head: bytes | bytearray | memoryview) -> int | None:
    """Total header length once the first two bytes are known."""
    if len(head) < 2:
        return None
    b1 = head[1]
    length = b1 & 0x7F
    extra = 2 if length == 126 else 8 if length == 127 else 0
    return 2 + extra + (4 if b1 & 0x80 else 0)
