"""Classic BPF filter for the capture socket: TCP to or from the target's ports.

Runs in the kernel on every packet of the namespace, so the ring only ever
holds the target's traffic. The socket is ``SOCK_DGRAM``, so offsets are
relative to the network header on every link type. Loopback delivers each
packet twice (once outgoing, once incoming); the outgoing copy is dropped
here, so each segment is seen exactly once.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Iterable

from perfd.capture.packets import ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP

SO_ATTACH_FILTER = 26
ARPHRD_LOOPBACK = 772
PACKET_OUTGOING = 4
SNAPLEN = 0x40000  # 256 KiB: more than any GSO super-packet
MAX_PORTS = 100  # jump offsets are 8-bit; more ports than this: accept all TCP

# opcodes
_LD_W_ABS, _LD_H_ABS, _LD_B_ABS = 0x20, 0x28, 0x30
_LD_H_IND = 0x48
_LDX_B_MSH = 0xB1
_JEQ_K, _JSET_K = 0x15, 0x45
_RET_K = 0x06
_AD = -0x1000  # SKF_AD_OFF: ancillary data
_AD_PROTOCOL, _AD_PKTTYPE, _AD_HATYPE = _AD + 0, _AD + 4, _AD + 28


class _Asm:
    """A tiny assembler with forward labels."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int = 0, jt: str | int = 0, jf: str | int = 0) -> None:
        self.code.append((code, jt, jf, k & 0xFFFFFFFF))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def assemble(self) -> list[tuple[int, int, int, int]]:
        out = []
        for i, (code, jt, jf, k) in enumerate(self.code):
            rel = []
            for j in (jt, jf):
                if isinstance(j, str):
                    j = self.labels[j] - i - 1
                if not 0 <= j <= 255:
                    raise ValueError("BPF jump out of range")
                rel.append(j)
            out.append((code, rel[0], rel[1], k))
        return out


def port_filter(ports: Iterable[int], *, snaplen: int = SNAPLEN) -> list[tuple[int, int, int, int]]:
    """Instructions accepting unfragmented TCP over IPv4/IPv6 with either port in ``ports``."""
    ports = sorted(set(ports))
    a = _Asm()
    if not ports:
        a.op(_RET_K, 0)
        return a.assemble()
    a.op(_LD_W_ABS, _AD_PKTTYPE)
    a.op(_JEQ_K, PACKET_OUTGOING, "outgoing", "proto")
    a.label("outgoing")
    a.op(_LD_W_ABS, _AD_HATYPE)
    a.op(_JEQ_K, ARPHRD_LOOPBACK, "drop", "proto")
    a.label("proto")
    a.op(_LD_W_ABS, _AD_PROTOCOL)
    a.op(_JEQ_K, ETH_P_IP, "v4", 0)
    a.op(_JEQ_K, ETH_P_IPV6, "v6", "drop")
    a.label("v4")
    a.op(_LD_B_ABS, 9)
    a.op(_JEQ_K, IPPROTO_TCP, 0, "drop")
    a.op(_LD_H_ABS, 6)
    a.op(_JSET_K, 0x1FFF, "drop", 0)  # a non-first fragment has no TCP header
    a.op(_LDX_B_MSH, 0)
    _match_ports(a, ports, lambda off: a.op(_LD_H_IND, off))
    a.label("v6")
    a.op(_LD_B_ABS, 6)
    a.op(_JEQ_K, IPPROTO_TCP, 0, "drop")
    _match_ports(a, ports, lambda off: a.op(_LD_H_ABS, 40 + off))
    a.label("accept")
    a.op(_RET_K, snaplen)
    a.label("drop")
    a.op(_RET_K, 0)
    return a.assemble()


def _match_ports(a: _Asm, ports: list[int], load) -> None:
    if len(ports) > MAX_PORTS:
        a.op(_RET_K, SNAPLEN)  # too many ports for 8-bit jumps: accept all TCP
        return
    for off in (0, 2):  # source port, destination port
        load(off)
        for p in ports:
            a.op(_JEQ_K, p, "accept", 0)
    a.op(_RET_K, 0)


def attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER: replaces any previous program atomically."""
    raw = b"".join(struct.pack("HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HxxxxxxQ", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
