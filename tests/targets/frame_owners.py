"""Objects whose methods call libc ``getppid`` on their own threads: exact
ground truth for the bcc probe's walk of the calling thread's Python frames.

Each owner thread calls through a different frame shape, so the walk has to
go past frames that are not the owner's:
- ``direct``: the owner's method calls it (the owner is local 0 of frame 0);
- ``nested``: through a module-level helper and a few recursive frames;
- ``via_c``: through ``map()``, i.e. C calling Python (3.12+ put a C-stack
  shim frame in the chain, which has no locals and must be skipped).
The main thread also calls it from module-level code: no owner there.

With ``pydll`` the calls keep the GIL held (``ctypes.PyDLL``, as an Open3D
op is called); by default ctypes releases it around each call.

Prints ``READY``, one ``OWNER <name> <id(obj)> <native tid> <calls>`` line per
owner, ``MAIN <native tid> <calls>``; each SIGUSR1 runs one round and prints
``DONE``.
"""

import ctypes
import sys
import threading

from round_threads import RoundThread, serve_rounds, start_all

libc = (ctypes.PyDLL if sys.argv[1:] == ["pydll"] else ctypes.CDLL)("libc.so.6")
ROUNDS = {"direct": 30, "nested": 40, "via_c": 50}
MAIN_CALLS = 20


def _call(fn, n):
    for _ in range(n):
        fn()


def _recurse(depth, fn, n):
    if depth:
        return _recurse(depth - 1, fn, n)
    _call(fn, n)


def _once(fn):
    return fn()


class Owner(RoundThread):
    def round(self):
        getattr(self, self.name)(ROUNDS[self.name])

    def direct(self, n):
        for _ in range(n):
            libc.getppid()

    def nested(self, n):
        _recurse(4, libc.getppid, n)

    def via_c(self, n):
        list(map(_once, [libc.getppid] * n))


owners = [Owner(name) for name in ROUNDS]
start_all(owners)
for o in owners:
    print(f"OWNER {o.name} {id(o)} {o.tid} {ROUNDS[o.name]}", flush=True)
print(f"MAIN {threading.get_native_id()} {MAIN_CALLS}", flush=True)


def main_calls():
    _call(libc.getppid, MAIN_CALLS)
    print("DONE", flush=True)
    sys.stdout.flush()


serve_rounds(owners, main_calls)
