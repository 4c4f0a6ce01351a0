"""Benchmark target: 6 threads, ~250 Python frames; reports its own work rate.

Two threads do CPU work at the bottom of a 50-frame recursion and count work
units; three sleep at the bottom of 50-frame recursions. Every 0.25 s the main
thread prints ``WORK <monotonic> <units>`` so a benchmark can measure the
target's throughput with and without a sampler attached.
"""

import threading
import time

DEPTH = 50
units = [0, 0]


def work(slot: int) -> None:
    x = 0
    while True:
        for i in range(2000):
            x = (x * 31 + i) % 1000003
        units[slot] += 1


def sleep_forever() -> None:
    while True:
        time.sleep(0.02)


def descend(n: int, leaf, *args) -> None:
    if n == 0:
        leaf(*args)
    else:
        descend(n - 1, leaf, *args)


for slot in range(2):
    threading.Thread(target=descend, args=(DEPTH, work, slot), name=f"worker-{slot}", daemon=True).start()
for i in range(3):
    threading.Thread(target=descend, args=(DEPTH, sleep_forever), name=f"sleeper-{i}", daemon=True).start()
print("READY", flush=True)
while True:
    time.sleep(0.25)
    print(f"WORK {time.monotonic():.6f} {sum(units)}", flush=True)
