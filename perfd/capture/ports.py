"""The target's TCP sockets, from /proc: which ports it listens on, which peers are connected.

``/proc/PID/net/tcp{,6}`` is the table of the target's *own* network
namespace, and the target's fds name its socket inodes, so a listening entry
whose inode the target holds is one of its server ports — found without
entering the namespace and without touching the target.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from perfd.errors import NoSuchProcess

TCP_ESTABLISHED = 0x01
TCP_TIME_WAIT = 0x06
TCP_CLOSE = 0x07
TCP_LISTEN = 0x0A


@dataclass(frozen=True, slots=True)
class TcpEntry:
    local: str
    local_port: int
    remote: str
    remote_port: int
    state: int
    inode: int


def socket_inodes(pid: int) -> set[int]:
    """Inodes of every socket the process holds an fd for."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except FileNotFoundError:
        raise NoSuchProcess(f"process {pid} does not exist") from None
    inodes = set()
    for name in names:
        try:
            link = os.readlink(f"{fd_dir}/{name}")
        except OSError:  # closed between listdir and readlink
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def tcp_table(pid: int, local_ports: set[int] | frozenset[int] | None = None,
              listening_only: bool = False) -> list[TcpEntry]:
    """TCP sockets in the process's network namespace (IPv4 and IPv6).

    The filters are applied before addresses are decoded: a busy host lists
    thousands of sockets, and only a few are the target's.
    """
    entries: list[TcpEntry] = []
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}"):
                raise NoSuchProcess(f"process {pid} does not exist") from None
            continue  # no IPv6 in this kernel
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            if listening_only and fields[3] != "0A":
                continue
            if local_ports is not None and int(fields[1][-4:], 16) not in local_ports:
                continue
            local, lport = _addr(fields[1])
            remote, rport = _addr(fields[2])
            entries.append(TcpEntry(local, lport, remote, rport, int(fields[3], 16), int(fields[9])))
    return entries


def listening_ports(pid: int, inodes: set[int] | None = None) -> set[int]:
    """Ports of the listening sockets the process itself holds (``inodes``: its socket inodes, if known)."""
    mine = socket_inodes(pid) if inodes is None else inodes
    return {e.local_port for e in tcp_table(pid, listening_only=True) if e.inode in mine}


def connected_peers(pid: int, ports: set[int] | frozenset[int]) -> set[tuple[str, int]]:
    """Remote ``(ip, port)`` of every connection to ``ports`` the kernel still tracks."""
    return {
        (e.remote, e.remote_port)
        for e in tcp_table(pid, local_ports=ports)
        if e.state not in (TCP_LISTEN, TCP_TIME_WAIT, TCP_CLOSE)
    }


def _addr(text: str) -> tuple[str, int]:
    """``0100007F:1F45`` (IPv4) or 32 hex digits (IPv6): little-endian 32-bit words."""
    hex_ip, hex_port = text.split(":")
    raw = bytes.fromhex(hex_ip)
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(packed)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(hex_port, 16)
