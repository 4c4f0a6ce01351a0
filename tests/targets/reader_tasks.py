"""51 asyncio tasks suspended in nested awaits; prints its own view of them first.

argv[1]: "asyncio" or "uvloop". The first line is JSON: for every task (from
asyncio.all_tasks()) its id, name, coroutine chain (cr_await/gi_yieldfrom:
qualname and line per frame, outermost first) and id of the future it waits on.
"""

import asyncio
import json
import sys
import threading

release = threading.Event()  # never set: to_thread workers block forever


def blocking_io(n: int) -> int:
    release.wait()
    return n


async def level_c(event: asyncio.Event) -> None:
    await event.wait()


async def level_b(event: asyncio.Event) -> None:
    await level_c(event)


async def level_a(event: asyncio.Event) -> None:
    await level_b(event)


async def sleeper_inner() -> None:
    await asyncio.sleep(3600)


async def sleeper() -> None:
    await sleeper_inner()


async def send_to_node(n: int) -> int:
    return await asyncio.to_thread(blocking_io, n)


async def route(n: int) -> int:
    return await send_to_node(n)


async def wait_future(fut: asyncio.Future) -> None:
    await fut


async def wait_task(task: asyncio.Task) -> None:
    await task


def chain_of(task: asyncio.Task) -> list:
    out = []
    c = task.get_coro()
    while c is not None and (hasattr(c, "cr_frame") or hasattr(c, "gi_frame")):
        frame = getattr(c, "cr_frame", None) or getattr(c, "gi_frame", None)
        if frame is None:
            break
        out.append([frame.f_code.co_qualname, frame.f_lineno])
        c = getattr(c, "cr_await", None) if hasattr(c, "cr_await") else getattr(c, "gi_yieldfrom", None)
    return out


async def main() -> None:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    tasks = []
    for i in range(10):
        tasks.append(asyncio.create_task(level_a(event), name=f"nested-{i}"))
        tasks.append(asyncio.create_task(sleeper(), name=f"sleeper-{i}"))
        tasks.append(asyncio.create_task(route(i), name=f"to-thread-{i}"))
        tasks.append(asyncio.create_task(wait_future(loop.create_future()), name=f"future-{i}"))
    sleepers = [t for t in tasks if t.get_name().startswith("sleeper")]
    for i in range(10):
        tasks.append(asyncio.create_task(wait_task(sleepers[i]), name=f"awaits-task-{i}"))
    for _ in range(5):
        await asyncio.sleep(0.05)  # every task reaches its innermost await
    me = asyncio.current_task()
    report = [{"task": id(t), "name": t.get_name(), "chain": chain_of(t), "current": t is me,
               "waiter": id(t._fut_waiter) if t._fut_waiter is not None else 0}
              for t in asyncio.all_tasks()]
    print(json.dumps(report), flush=True)
    print("READY", flush=True)
    await event.wait()


if sys.argv[1:] == ["uvloop"]:
    import uvloop
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
asyncio.run(main())
