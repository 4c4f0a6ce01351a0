"""IPv4/IPv6 + TCP header decoding of captured network-layer packets (pure).

The capture socket is ``SOCK_DGRAM``, so every packet starts at the network
header whatever the link type (Ethernet, loopback, tun). Anything that is not
an unfragmented TCP segment decodes to ``None``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_TCP = 6

TH_FIN, TH_SYN, TH_RST, TH_ACK = 0x01, 0x02, 0x04, 0x10

_TCP = struct.Struct("!HHIIBB")


@dataclass(frozen=True, slots=True)
class Segment:
    src: bytes  # packed address (4 or 16 bytes)
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    payload: memoryview

    @property
    def syn(self) -> bool:
        return bool(self.flags & TH_SYN)

    @property
    def fin(self) -> bool:
        return bool(self.flags & TH_FIN)

    @property
    def rst(self) -> bool:
        return bool(self.flags & TH_RST)

    @property
    def has_ack(self) -> bool:
        return bool(self.flags & TH_ACK)


def decode(packet: memoryview, protocol: int) -> Segment | None:
    """Decode one packet whose link-layer protocol is ``protocol`` (host order)."""
    try:
        if protocol == ETH_P_IP:
            return _ipv4(packet)
        if protocol == ETH_P_IPV6:
            return _ipv6(packet)
    except (IndexError, struct.error):
        return None
    return None


def _ipv4(p: memoryview) -> Segment | None:
    if len(p) < 20 or p[0] >> 4 != 4 or p[9] != IPPROTO_TCP:
        return None
    ihl = (p[0] & 0x0F) * 4
    total = int.from_bytes(p[2:4], "big")
    if int.from_bytes(p[6:8], "big") & 0x3FFF:  # MF or fragment offset: not a whole segment
        return None
    # a GSO/TSO super-packet captured on transmit carries total length 0 or a
    # too-small value; the captured length is then the truth
    end = total if ihl <= total <= len(p) and total > 0 else len(p)
    return _tcp(p, ihl, end, bytes(p[12:16]), bytes(p[16:20]))


def _ipv6(p: memoryview) -> Segment | None:
    if len(p) < 40 or p[0] >> 4 != 6 or p[6] != IPPROTO_TCP:  # extension headers are not followed
        return None
    plen = int.from_bytes(p[4:6], "big")
    end = 40 + plen if 0 < plen <= len(p) - 40 else len(p)
    return _tcp(p, 40, end, bytes(p[8:24]), bytes(p[24:40]))


def _tcp(p: memoryview, off: int, end: int, src: bytes, dst: bytes) -> Segment | None:
    if end - off < 20:
        return None
    sport, dport, seq, ack, doff, flags = _TCP.unpack_from(p, off)
    hl = (doff >> 4) * 4
    if hl < 20 or off + hl > end:
        return None
    return Segment(src, dst, sport, dport, seq, ack, flags, p[off + hl : end])


def format_addr(packed: bytes, port: int) -> str:
    ip = ipaddress.ip_address(packed)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
