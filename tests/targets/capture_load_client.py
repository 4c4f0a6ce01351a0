"""A WebSocket viewer for load runs: asks the server for paced traffic and reads it all.

argv: URL RATE_BYTES_PER_SEC SECONDS SIZE. Prints ``RECEIVED <messages> <bytes> <seconds>``
when the server says done (seconds: first message to the last).
"""

from __future__ import annotations

import sys
import time

from websockets.sync.client import connect

url, rate, seconds, size = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
with connect(url, compression=None, max_size=None) as ws:
    ws.send(f"pace {rate} {seconds} {size}")
    messages = nbytes = 0
    first = None
    while True:
        msg = ws.recv()
        if first is None:
            first = time.monotonic()
        messages += 1
        nbytes += len(msg)
        if msg == "done":
            break
    print(f"RECEIVED {messages} {nbytes} {time.monotonic() - first:.3f}", flush=True)
