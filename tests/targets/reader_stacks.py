"""Oracle target for the stack reader: threads in every state we must read.

Deep recursion (> 250 frames), a thread blocked in a C call, sleeping and
spinning threads, a generator, a running coroutine under nested awaits,
static/class methods, closures, non-ASCII identifiers, and simple locals.
"""

import asyncio
import select
import socket
import threading
import time

DEPTH = 300
ready = threading.Barrier(8)


def recurse(n: int, label: str = "deep") -> None:
    if n == 0:
        ready.wait()
        while True:
            time.sleep(0.05)
    recurse(n - 1, label)


def blocked_in_c() -> None:
    a, b = socket.socketpair()
    count = 42
    ratio = -2.5
    flag = True
    nothing = None
    text = "ascii text"
    ready.wait()
    select.select([a], [], [])  # never readable


class Spinner:
    @staticmethod
    def spin_static(limit: int) -> int:
        return Spinner.spin_class(limit)

    @classmethod
    def spin_class(cls, limit: int) -> int:
        total = 0
        ready.wait()
        while True:
            total = (total + 1) % limit


def größe_berechnen(länge: int) -> None:
    wert = "größe – 長さ – \U0001f600"
    def inner_closure() -> None:
        nonlocal wert
        captured = länge * 2
        ready.wait()
        while True:
            time.sleep(0.05)
    inner_closure()


def generator_body(n: int):
    for i in range(n):
        yield i
        if i == 1:
            ready.wait()
            while True:
                time.sleep(0.05)


def drive_generator() -> None:
    for value in generator_body(10):
        pass


async def innermost(tag: str) -> None:
    ready.wait()
    while True:
        time.sleep(0.05)  # blocks the loop on purpose: the coroutine chain stays on the stack


async def middle(tag: str) -> None:
    await innermost(tag + "/mid")


async def outer() -> None:
    await middle("outer")


def run_loop() -> None:
    asyncio.run(outer())


class Built:
    """Instantiated often enough that 3.13 specialises the call (a cleanup shim frame under __init__)."""

    def __init__(self, block: bool) -> None:
        if block:
            ready.wait()
            while True:
                time.sleep(0.05)


def construct(n: int) -> None:
    for i in range(n):
        Built(i == n - 1)


for fn, args in ((recurse, (DEPTH,)), (blocked_in_c, ()), (Spinner.spin_static, (1000,)),
                 (größe_berechnen, (7,)), (drive_generator, ()), (run_loop, ()), (construct, (200,))):
    threading.Thread(target=fn, args=args, name=f"t-{fn.__name__}", daemon=True).start()
ready.wait()
time.sleep(0.3)  # every thread has left the barrier and sits in its planted frame
print("READY", flush=True)
while True:
    time.sleep(0.1)
