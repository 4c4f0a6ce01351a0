"""A target whose stacks change all the time: torn-read bait for the sampler.

Two threads recurse to random depths and return, two run asyncio loops whose
tasks switch on every iteration (nested awaits of sleep(0)), main sleeps.
"""

import asyncio
import random
import threading
import time


def dive(n: int) -> int:
    return 1 if n == 0 else 1 + dive(n - 1)


def churn_calls() -> None:
    rng = random.Random()
    while True:
        dive(rng.randrange(1, 120))


async def hop(n: int) -> None:
    if n:
        await hop(n - 1)
    else:
        await asyncio.sleep(0)


async def spinner(k: int) -> None:
    while True:
        await hop(k % 7)


async def loop_main() -> None:
    await asyncio.gather(*(spinner(k) for k in range(20)))


def churn_tasks() -> None:
    asyncio.run(loop_main())


for fn in (churn_calls, churn_calls, churn_tasks, churn_tasks):
    threading.Thread(target=fn, daemon=True).start()
print("READY", flush=True)
while True:
    time.sleep(0.1)
