"""Target: a subinterpreter with a GIL of its own (3.12+), whose thread's stack
keeps changing while the main GIL stays with the main thread.

A thread runs code in an isolated subinterpreter that alternates between
``left()`` and ``right()``, each a short sleep; the main thread spins. The
subinterpreter's thread never holds the main GIL, so a sampler that judged
"which threads can have run" by the main GIL alone would see it frozen.
"""

import threading

try:
    import _interpreters as subinterpreters  # 3.13
except ImportError:
    import _xxsubinterpreters as subinterpreters  # 3.12

CODE = """
import time

def left():
    time.sleep(0.003)

def right():
    time.sleep(0.003)

while True:
    left()
    right()
"""


def run() -> None:
    interp = subinterpreters.create()  # isolated: its own GIL
    if hasattr(subinterpreters, "run_string"):
        subinterpreters.run_string(interp, CODE)
    else:
        subinterpreters.exec(interp, CODE)


threading.Thread(target=run, name="sub", daemon=True).start()
print("READY", flush=True)
x = 0
while True:
    for i in range(1000):
        x = (x * 31 + i) % 1000003
