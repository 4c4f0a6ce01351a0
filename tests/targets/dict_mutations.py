"""Dicts that change under a reader: each SIGUSR1 applies the next mutation and prints ``STEP n``.

Used to prove the reader's remembered key positions never return a stale answer.
"""

import signal
import sys


class Thing:
    pass


table = {f"k{i}": i for i in range(50)}  # a combined table
thing = Thing()
thing.a = 1
other = Thing()  # shares ``thing``'s keys: ``b`` is known to them, but unset on ``thing``
other.a = 2
other.b = 3

STEPS = [
    lambda: table.__setitem__("late", 7),  # absent -> present
    lambda: table.pop("k3"),  # present -> absent
    lambda: table.__setitem__("k3", 33),  # back, at a new index
    lambda: table.__setitem__("k5", 55),  # value replaced in place
    lambda: table.update({f"grow{i}": i for i in range(500)}),  # resize: a new keys object
    lambda: setattr(thing, "b", 4),  # set on this instance only
]
step = 0


def advance(*_: object) -> None:
    global step
    STEPS[step]()
    step += 1
    print(f"STEP {step}", flush=True)


signal.signal(signal.SIGUSR1, advance)
print("READY", flush=True)
while True:
    signal.pause()
    sys.stdout.flush()
