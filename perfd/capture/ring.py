"""AF_PACKET capture socket with a TPACKET_V3 memory-mapped receive ring.

The kernel writes packets into fixed-size blocks shared with perfd; a block is
handed over when full or after ``retire_ms``, so perfd wakes once per block,
not once per packet, and reads packets in place (no copy, no syscall each).
Kernel drops (ring full) are read from PACKET_STATISTICS and accumulated.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import select
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from perfd.capture.bpf import attach_filter, port_filter

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
ETH_P_ALL = 0x0003

_BLOCK_HDR = struct.Struct("III")  # block_status, num_pkts, offset_to_first_pkt (at +8)
_PKT_HDR = struct.Struct("IIIIIIHH")  # next_offset, sec, nsec, snaplen, len, status, mac, net
_SLL = struct.Struct("!HHiHB")  # family, protocol, ifindex, hatype, pkttype (at +48)
_SLL_OFFSET = 48
_STATS_V3 = struct.Struct("III")  # packets, drops, freeze_q_cnt


@dataclass
class RingStats:
    packets: int = 0  # accepted by the filter (kernel count, includes drops)
    drops: int = 0  # lost because the ring was full


@dataclass(frozen=True)
class RingConfig:
    block_size: int = 1 << 20
    block_count: int = 32
    frame_size: int = 1 << 11
    retire_ms: int = 20


def open_packet_socket() -> socket.socket:
    """A SOCK_DGRAM packet socket that receives nothing until ``bind``.

    Created with protocol 0 so no packet is queued before the filter and ring
    are in place. Call this in the namespace to capture (see ``netns``).
    """
    return socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)


class PacketRing:
    """Owns the socket and its ring; iterate ``packets()`` after ``wait()``."""

    def __init__(self, sock: socket.socket, config: RingConfig = RingConfig(), ports: frozenset[int] = frozenset()) -> None:
        self.sock = sock
        self.config = config
        self.stats = RingStats()
        self.set_ports(ports)
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        frames = config.block_size * config.block_count // config.frame_size
        req = struct.pack("IIIIIII", config.block_size, config.block_count, config.frame_size, frames,
                          config.retire_ms, 0, 0)
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self._map = mmap.mmap(sock.fileno(), config.block_size * config.block_count,
                              mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._block = 0
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN | select.POLLERR)
        _bind_all_interfaces(sock)  # packets start flowing now, through the filter into the ring

    def set_ports(self, ports: frozenset[int]) -> None:
        attach_filter(self.sock, port_filter(ports))

    def wait(self, timeout: float) -> bool:
        """Block until a block is ready or ``timeout`` s pass."""
        if self._ready(self._block):
            return True
        return bool(self._poll.poll(int(timeout * 1000)))

    @property
    def has_ready_block(self) -> bool:
        return self._ready(self._block)

    @property
    def max_delay(self) -> float:
        """Longest a captured packet can wait in an open block before perfd can see it (s)."""
        return 2 * self.config.retire_ms / 1000

    def _ready(self, index: int) -> bool:
        return bool(_BLOCK_HDR.unpack_from(self._map, index * self.config.block_size + 8)[0] & TP_STATUS_USER)

    def packets(self, max_blocks: int = 8) -> Iterator[tuple[float, int, memoryview]]:
        """``(timestamp, link protocol, network-layer bytes)`` of up to ``max_blocks`` ready blocks.

        Each memoryview is valid only until the next item: its block is given
        back to the kernel as soon as iteration leaves it.
        """
        size = self.config.block_size
        count = self.config.block_count
        mm = self._map
        with memoryview(mm) as view:
            for _ in range(max_blocks):
                if not self._ready(self._block):
                    return
                base = self._block * size
                _, num, first = _BLOCK_HDR.unpack_from(mm, base + 8)
                off = base + first
                try:
                    for _ in range(num):
                        nxt, sec, nsec, snaplen, _len, _st, _mac, net = _PKT_HDR.unpack_from(mm, off)
                        proto = _SLL.unpack_from(mm, off + _SLL_OFFSET)[1]
                        pkt = view[off + net : off + net + snaplen]
                        try:
                            yield sec + nsec * 1e-9, proto, pkt
                        finally:
                            pkt.release()
                        off += nxt
                finally:
                    struct.pack_into("I", mm, base + 8, TP_STATUS_KERNEL)
                    self._block = (self._block + 1) % count

    def read_stats(self) -> RingStats:
        """Fold the kernel's counters (reset on every read) into the totals."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS_V3.size)
        packets, drops, _ = _STATS_V3.unpack(raw)
        self.stats.packets += packets
        self.stats.drops += drops
        return self.stats

    def close(self) -> None:
        try:
            self._poll.unregister(self.sock.fileno())
        except (KeyError, ValueError, OSError):
            pass
        try:
            self._map.close()
        except BufferError:  # a consumer still holds a view; the GC will unmap it
            pass
        self.sock.close()


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _bind_all_interfaces(sock: socket.socket) -> None:
    """bind(sockaddr_ll{ifindex=0, protocol=ETH_P_ALL}): every interface of the namespace.

    (Python's AF_PACKET address form insists on an interface name.)
    """
    addr = struct.pack("H", socket.AF_PACKET) + struct.pack("!H", ETH_P_ALL) + bytes(16)
    buf = ctypes.create_string_buffer(addr, len(addr))
    if _libc.bind(sock.fileno(), buf, len(addr)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind(AF_PACKET): {os.strerror(err)}")
