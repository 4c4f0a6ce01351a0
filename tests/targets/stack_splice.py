"""Stacks whose inner parts change while their outer parts stay: what a
reader that keeps a changed thread's unchanged outer frames must get right.

- ``t-sites``: a frame 30 deep calls subtrees of varying depth from two call
  sites in turn, so an outer frame's line changes while the frames around
  the subtree's root are byte-identical again and again;
- ``t-unwind``: unwinds more than a few frames at a time and re-descends;
- ``t-coro``: a coroutine (a frame outside the datastack) driven by hand in
  the middle of the stack, calling plain functions of varying depth;
- ``t-gen``: the same through a generator.
"""

import random
import threading
import time


def spin(n):
    x = 0
    for i in range(n):
        x += i
    return x


def subtree(depth):
    if depth:
        return subtree(depth - 1)
    return spin(200)


def sites(depth):
    if depth:
        return sites(depth - 1)
    while True:
        subtree(random.randrange(8))  # site one
        spin(50)
        subtree(random.randrange(8))  # site two


def unwind(depth):
    if depth:
        return unwind(depth - 1)
    while True:
        subtree(random.randrange(0, 30))


async def coroutine_body():
    while True:
        subtree(random.randrange(10))
        spin(20)


def drive_coroutine(depth):
    if depth:
        return drive_coroutine(depth - 1)
    coro = coroutine_body()
    coro.send(None)


def generator_body():
    while True:
        subtree(random.randrange(10))
        yield


def drive_generator(depth):
    if depth:
        return drive_generator(depth - 1)
    for _ in generator_body():
        spin(10)


for name, target in (("t-sites", sites), ("t-unwind", unwind), ("t-coro", drive_coroutine),
                     ("t-gen", drive_generator)):
    threading.Thread(target=target, args=(30,), name=name, daemon=True).start()
print("READY", flush=True)
while True:
    time.sleep(1)
