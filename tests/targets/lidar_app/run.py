"""A second LiDAR-shaped app (``app.services.nodes.managers.routing``), no numpy needed.

Frames of N (x, y, z) tuples enter at --hz; node calls are counted by the app
itself and written to $TRUTH_FILE so tests can compare.
"""

import asyncio
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from app.services.nodes import instance  # noqa: E402


async def main(hz: float, points: int) -> None:
    instance.build()
    truth = os.environ.get("TRUTH_FILE")
    rng = random.Random(0)
    frame = [(rng.random(), rng.random(), rng.random()) for _ in range(points)]
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    n = 0
    while True:
        await instance.router.forward_data("src-0001", {"points": frame})
        n += 1
        if truth and n % 5 == 0:
            instance.node_manager.dump_truth(truth)
        next_at += 1.0 / hz
        await asyncio.sleep(max(0.0, next_at - loop.time()))


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0,
                     int(sys.argv[2]) if len(sys.argv) > 2 else 2000))
