"""An HTTP client that times its own requests with the kernel's receive timestamp.

argv: PORT PATH PERIOD_S COUNT. Keep-alive; for each ``GET PATH``: wall time
just before ``send`` → the kernel's software receive timestamp of the first
response byte (SO_TIMESTAMPNS), so neither this process's scheduling nor its
interpreter adds to the number. Prints one JSON list of milliseconds at the end.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

SO_TIMESTAMPNS = 35

port, path, period, count = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
out = []
with socket.create_connection(("127.0.0.1", port)) as s:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    for _ in range(count):
        time.sleep(period)
        t0 = time.time()
        s.sendall(request)
        data, ancdata, _, _ = s.recvmsg(65536, socket.CMSG_SPACE(16))
        rx = next(struct.unpack("qq", d[:16]) for level, kind, d in ancdata
                  if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS)
        out.append((rx[0] + rx[1] * 1e-9 - t0) * 1000)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += s.recv(65536)
print(json.dumps(out), flush=True)
