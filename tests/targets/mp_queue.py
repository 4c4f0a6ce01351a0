"""A multiprocessing.Queue whose depth the test steers: ``put N`` / ``get N`` on stdin.

After each command the target prints its own ``qsize()`` — the value perfd
must read from outside without calling into the process.
"""

import multiprocessing
import sys

holder = {"queue": multiprocessing.Queue(maxsize=500)}
print("READY", flush=True)
for line in sys.stdin:
    op, n = line.split()
    q = holder["queue"]
    for _ in range(int(n)):
        if op == "put":
            q.put(b"x" * 16)
        else:
            q.get()
    while op == "put" and q.qsize() < 0:
        pass
    print(q.qsize(), flush=True)
