"""Target: threads whose stacks change only while they hold the GIL, often at
the same frame address — bait for a sampler that does not read threads which
cannot have run since its last sample.

Four threads loop: each call picks one of two paths at random, ``via_a`` or
``via_b``; both call ``pause(token, seconds)`` at the same depth, so the
innermost frame is at the same address, in the same code, at the same
instruction whichever path was taken — only the caller differs, and
``pause``'s first local (a new token every call). ``pause`` sleeps 1-20 ms
with the GIL released. The main thread spins, holding the GIL between their
turns, so the GIL changes hands a few hundred times a second.
"""

import random
import threading
import time


def pause(token: int, seconds: float) -> None:
    time.sleep(seconds)


def via_a(token: int, seconds: float) -> None:
    pause(token, seconds)


def via_b(token: int, seconds: float) -> None:
    pause(token, seconds)


def hop(seed: int) -> None:
    rng = random.Random(seed)
    token = seed * 1_000_000_007
    while True:
        token += 1
        (via_a if rng.random() < 0.5 else via_b)(token, rng.uniform(0.001, 0.02))


for i in range(4):
    threading.Thread(target=hop, args=(i + 1,), name=f"hop-{i}", daemon=True).start()
print("READY", flush=True)
x = 0
while True:
    for i in range(1000):
        x = (x * 31 + i) % 1000003
