"""A node-entry-like coroutine suspended with a payload, then finished on
SIGUSR1, after which new payload dicts are made until one lands at the freed
payload's address (CPython's dict free list makes that the first one, as a
busy pipeline does all the time). Prints JSON with the addresses, READY, then
REUSED/NOT REUSED once finished."""

import asyncio
import json
import signal


async def holder(node_id, node, payload):  # the locals a node-entry frame carries
    await RELEASE


async def main() -> None:
    global RELEASE
    loop = asyncio.get_running_loop()
    RELEASE = loop.create_future()
    finished = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, finished.set)
    payload = {"points": [0.0] * 1234}
    coro = holder("node-1", object(), payload)
    old = id(payload)
    task = asyncio.ensure_future(coro)
    del payload
    await asyncio.sleep(0.05)
    print(json.dumps({"coro": id(coro), "payload": old}), flush=True)
    print("READY", flush=True)
    await finished.wait()
    RELEASE.set_result(None)
    await task
    del coro, task
    kept = []
    for _ in range(1000):
        kept.append({"points": [0.0] * 99})
        if id(kept[-1]) == old:
            print("REUSED", flush=True)
            break
    else:
        print("NOT REUSED", flush=True)
    await asyncio.sleep(3600)


asyncio.run(main())
