"""A minimal CPython target: a few threads doing recognisable work until killed."""

import sys
import threading
import time


def worker_loop(n: int) -> None:
    data = bytearray(1 << 20)  # some RSS to measure
    while True:
        data[n] = (data[n] + 1) % 256
        time.sleep(0.01)


for i in range(2):
    threading.Thread(target=worker_loop, args=(i,), name=f"worker-{i}", daemon=True).start()
print("READY", flush=True)
while True:
    time.sleep(0.1)
