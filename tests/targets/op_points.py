"""Nodes whose methods hold a ``points`` local and call libc ``getppid`` (GIL
held, as an Open3D op is called): ground truth for the bcc entry probe's
count of a node call's points.

Each owner thread first sits inside ``process(self, points)`` (so a sample of
the target shows where the method keeps ``points``), then, on SIGUSR1, feeds
every input of ``INPUTS`` through it. The op is reached three ways:
- ``direct``: ``process`` calls it (the owner's frame holds the points);
- ``helper``: through ``self._timed`` (the demo's nodes do this) and
  ``self._step``: the points are two frames out from the owner's frame;
- ``other``: from ``other(self, n)``, a method without a points local.
Prints ``READY``, one ``OWNER <name> <id(obj)> <native tid>`` line per owner,
``HELD`` once every owner sits in ``process``; each SIGUSR1 runs one round
and prints ``EXPECT <native tid> <json list of counts, null: none>`` per owner, then ``DONE``.
"""

import ctypes
import json
import sys

import numpy as np
from round_threads import RoundThread, serve_rounds, start_all

libc = ctypes.PyDLL("libc.so.6")
INPUTS = [
    np.zeros((5, 3), np.float32),
    np.zeros((65536, 3), np.float32),
    np.zeros((0, 3), np.float32),
    np.zeros(17),
    np.zeros(()),  # 0-d: no first dimension, counted 0 like perfd's reader
    np.zeros((4, 3))[::2],  # a view
    list(range(9)),
    (1, 2, 3),
    "not points",  # a str: not a type the probe counts
    None,
]
EXPECTED = [5, 65536, 0, 17, 0, 2, 9, 3, None, None]


class Owner(RoundThread):
    def method(self):
        return self.other if self.name == "other" else self.process

    def prepare(self):
        self.method()(INPUTS[0], hold=True)

    def round(self):
        for item in INPUTS:  # not `points`: round(self) would be a method keeping them
            self.method()(item)

    def process(self, points, hold=False):
        if hold:  # sit here until the first round: the test samples this frame
            self.ready.set()
            self.go.wait()
            return
        if self.name == "direct":
            libc.getppid()
        else:
            self._step()

    def other(self, n, hold=False):
        if hold:
            self.ready.set()
            self.go.wait()
            return
        libc.getppid()

    def _step(self):
        return self._timed(libc.getppid)

    def _timed(self, fn):
        return fn()


owners = [Owner(name) for name in ("direct", "helper", "other")]
start_all(owners)
for o in owners:
    print(f"OWNER {o.name} {id(o)} {o.tid}", flush=True)
print("HELD", flush=True)


def expectations():
    for o in owners:
        expect = [None] * len(INPUTS) if o.name == "other" else EXPECTED
        print(f"EXPECT {o.tid} {json.dumps(expect)}", flush=True)
    print("DONE", flush=True)
    sys.stdout.flush()


serve_rounds(owners, expectations)
