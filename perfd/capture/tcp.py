"""TCP stream reassembly for one direction of one connection (sans-IO).

Segments go in as captured (any order, duplicated, overlapping); in-order
bytes come out exactly once, each chunk with the capture timestamp of the
segment that carried it. In-order payloads are passed through without a copy;
only out-of-order segments are copied into a bounded buffer.

Loss. A passive observer can miss bytes the endpoints did receive (a kernel
ring drop). TCP will never retransmit those, so waiting is useless: when the
*other* direction acknowledges past the hole (``acked``), or when the
out-of-order buffer exceeds its bound, the hole is declared a ``Gap`` and the
stream moves on; parsers above must resync.
"""

from __future__ import annotations

from dataclasses import dataclass

_MOD = 1 << 32


def seq_diff(a: int, b: int) -> int:
    """``a - b`` in 32-bit serial-number arithmetic (RFC 1982)."""
    return ((a - b + (1 << 31)) % _MOD) - (1 << 31)


@dataclass(frozen=True, slots=True)
class Data:
    payload: bytes | memoryview
    ts: float


@dataclass(frozen=True, slots=True)
class Gap:
    """``lost`` bytes of this direction were never seen."""

    lost: int


@dataclass(frozen=True, slots=True)
class End:
    """The direction ended: FIN reached in order, or a reset."""

    ts: float
    reset: bool = False


StreamEvent = Data | Gap | End


@dataclass
class BufferBudget:
    """Out-of-order bytes held by *all* reassemblers sharing it, against one limit.

    Per-stream bounds alone would let many connections add up; a stream that
    finds the shared budget exhausted gives up its own hole instead of waiting.
    """

    limit: int
    used: int = 0


class Reassembler:
    """One direction's byte stream, rebuilt from segments."""

    def __init__(self, max_buffer: int = 4 * 1024 * 1024, budget: BufferBudget | None = None) -> None:
        self.max_buffer = max_buffer
        self.budget = budget
        self.next_seq: int | None = None
        self.picked_up = False  # True when the first segment seen was not the SYN
        self.closed = False
        self._fin_seq: int | None = None
        self._held: dict[int, tuple[bytes, float]] = {}  # out-of-order: seq -> (payload, ts)
        self._held_bytes = 0
        self.bytes_delivered = 0
        self.retransmitted = 0
        self.out_of_order = 0
        self.lost_bytes = 0

    def segment(
        self,
        seq: int,
        payload: bytes | memoryview,
        ts: float,
        *,
        syn: bool = False,
        fin: bool = False,
        rst: bool = False,
    ) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if self.closed:
            return out
        if rst:
            self.closed = True
            self.release()
            out.append(End(ts, reset=True))
            return out
        if syn:
            self.next_seq = (seq + 1) % _MOD
            seq = self.next_seq
        elif self.next_seq is None:
            self.next_seq = seq
            self.picked_up = True
        if fin:
            self._fin_seq = (seq + len(payload)) % _MOD
        if payload:
            self._add(seq, payload, ts, out)
        self._check_fin(ts, out)
        return out

    def acked(self, ack: int, ts: float) -> list[StreamEvent]:
        """The peer acknowledged ``ack``: any hole before it will never be filled."""
        out: list[StreamEvent] = []
        if self.closed or self.next_seq is None:
            return out
        limit = ack if self._fin_seq is None or seq_diff(ack, self._fin_seq) <= 0 else self._fin_seq
        while seq_diff(limit, self.next_seq) > 0:
            starts = [s for s in self._held if seq_diff(s, self.next_seq) > 0 and seq_diff(s, limit) < 0]
            hole_end = min(starts, key=lambda s: seq_diff(s, self.next_seq)) if starts else limit
            self._skip_to(hole_end, out)
            self._drain(out)
        self._check_fin(ts, out)
        return out

    # --- internals ---------------------------------------------------------

    def _add(self, seq: int, payload: bytes | memoryview, ts: float, out: list[StreamEvent]) -> None:
        assert self.next_seq is not None
        off = seq_diff(seq, self.next_seq)
        if off < 0:
            if off + len(payload) <= 0:
                self.retransmitted += 1
                return
            payload = payload[-off:]
            seq = self.next_seq
            off = 0
        if off == 0:
            self._deliver(payload, ts, out)
            if self._held:
                self._drain(out)
            return
        self.out_of_order += 1
        held = self._held.get(seq)
        if held is None or len(held[0]) < len(payload):
            if held is not None:
                self._account(-len(held[0]))
            self._held[seq] = (bytes(payload), ts)
            self._account(len(payload))
        if self._held_bytes > self.max_buffer or (self.budget is not None and self.budget.used > self.budget.limit):
            first = min(self._held, key=lambda s: seq_diff(s, self.next_seq))  # type: ignore[arg-type]
            self._skip_to(first, out)
            self._drain(out)

    def _deliver(self, payload: bytes | memoryview, ts: float, out: list[StreamEvent]) -> None:
        if self._fin_seq is not None:
            room = seq_diff(self._fin_seq, self.next_seq)  # type: ignore[arg-type]
            if room < len(payload):
                payload = payload[: max(room, 0)]
        if not payload:
            return
        out.append(Data(payload, ts))
        self.bytes_delivered += len(payload)
        self.next_seq = (self.next_seq + len(payload)) % _MOD  # type: ignore[operator]

    def _drain(self, out: list[StreamEvent]) -> None:
        while self._held:
            ready = [s for s in self._held if seq_diff(s, self.next_seq) <= 0]  # type: ignore[arg-type]
            if not ready:
                return
            ready.sort(key=lambda s: seq_diff(s, self.next_seq))  # type: ignore[arg-type]
            for s in ready:
                payload, ts = self._held.pop(s)
                self._account(-len(payload))
                off = seq_diff(s, self.next_seq)  # type: ignore[arg-type]
                if off + len(payload) > 0:
                    self._deliver(memoryview(payload)[-off:] if off else payload, ts, out)

    def _skip_to(self, seq: int, out: list[StreamEvent]) -> None:
        lost = seq_diff(seq, self.next_seq)  # type: ignore[arg-type]
        if lost > 0:
            self.lost_bytes += lost
            out.append(Gap(lost))
            self.next_seq = seq

    def _check_fin(self, ts: float, out: list[StreamEvent]) -> None:
        if self._fin_seq is not None and self.next_seq is not None and seq_diff(self._fin_seq, self.next_seq) <= 0:
            self.closed = True
            self.release()
            out.append(End(ts))

    def release(self) -> None:
        """Drop everything held (the stream ended or is being forgotten)."""
        self._held.clear()
        self._account(-self._held_bytes)

    def _account(self, delta: int) -> None:
        self._held_bytes += delta
        if self.budget is not None:
            self.budget.used += delta
