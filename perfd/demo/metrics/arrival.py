"""When a request's bytes reached the server: a uvicorn protocol that stamps it.

The endpoint ground truth stands for SPEC §1's latency (last request byte →
first response byte). A middleware alone starts its clock only after the
server has parsed the request, created its task and passed it down the ASGI
stack: a systematic part of the number that it never saw. This protocol
records the monotonic time at which the chunk that completed the request
head was read and hands it to the app as a scope extension; the middleware
starts from it. Pipelined requests keep the stamp
of their own bytes, so their wait behind the previous response is counted,
as it is on the wire. (The demo's routes take no request body, so the head's
last byte is the request's last byte.)
"""

from __future__ import annotations

import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

ARRIVED_NS = "perfd.demo.arrived_ns"


class ArrivalStampingProtocol(HttpToolsProtocol):
    _arrived_ns = 0

    def data_received(self, data: bytes) -> None:
        self._arrived_ns = time.monotonic_ns()
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self.scope.setdefault("extensions", {})[ARRIVED_NS] = self._arrived_ns
        super().on_headers_complete()


def arrived_ns(scope: dict) -> int | None:
    """The stamp, when the server was run with :class:`ArrivalStampingProtocol`."""
    return (scope.get("extensions") or {}).get(ARRIVED_NS)
