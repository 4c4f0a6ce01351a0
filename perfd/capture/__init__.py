"""Passive capture of the target's HTTP and WebSocket traffic (SPEC §1 ``websocket``, ``endpoints``).

Data flows one way, one module per step:

    ring (AF_PACKET, TPACKET_V3, opened in the target's netns via ``netns``, filtered by ``bpf``)
      → packets (IPv4/IPv6 + TCP decode)
      → flows (per connection: tcp reassembly → http / websocket parsers, all sans-IO)
      → metrics (rates, totals, latencies) → registry

``ports`` finds the target's listening sockets; ``source.CaptureSource`` runs it all.
"""

from perfd.capture.source import CaptureError, CapturePermissionError, CaptureSource, CaptureStatus

__all__ = ["CaptureError", "CapturePermissionError", "CaptureSource", "CaptureStatus"]
