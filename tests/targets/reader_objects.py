"""Values planted for the remote object reader; read back by tests/test_cpython_objects.py."""

import sys
import time

try:
    import numpy
except ImportError:  # the reader test skips the ndarray checks
    numpy = None


class Plain:
    def __init__(self) -> None:
        self.name = "plain"
        self.count = 3


class Slotted:
    __slots__ = ("x", "label")

    def __init__(self) -> None:
        self.x = 11
        self.label = "slot-label"


class WithDictOffset(Exception):  # a builtin base with tp_dictoffset, no managed dict
    pass


class Node:
    def __init__(self, name: str) -> None:
        self.name = name


class NodeManager:
    def __init__(self) -> None:
        self.nodes = {"alpha": Node("alpha-node"), "β": Node("beta-node")}


def make_closure():
    captured = "in a cell"
    number = 99

    def inner():
        return captured, number
    return inner


plain = Plain()
plain.added_later = [1, 2, 3]
many = Plain()
for i in range(40):  # enough attributes to leave the shared-keys layout
    setattr(many, f"a{i}", i)
slotted = Slotted()
exc = WithDictOffset("boom")
exc.note = "dict offset"
node_manager = NodeManager()
big = {f"k{i}": i for i in range(10_000)}
ints = (0, 1, -1, 2 ** 30, -(2 ** 30) + 1, 2 ** 64 + 5, -(2 ** 100), 10 ** 50, True, False)
strs = ("", "ascii", "café", "Ωμέγα", "😀 smile", "x" * 5000, sys.intern("interned_name"))
scalars = {"float": -1.25e-3, "none": None, "bytes": b"\x00\x01abc", "tuple": (1, "two", 3.0),
           "list": [None, True], "set": {1, 2, 3, 4, 5}, "frozen": frozenset("abc"), "empty": {}}
int_keys = {7: "seven", -3: "minus three", 2 ** 70: "huge"}
cells = make_closure().__closure__
array = numpy.zeros((3, 4, 5), dtype=numpy.float32) if numpy else None
array_i = numpy.arange(12, dtype=numpy.int64).reshape(2, 6) if numpy else None
# views: reversed (negative stride), strided, empty, and a huge shape over one element (stride 0)
views = (array_i[:, ::-1], numpy.zeros(1 << 20, dtype=numpy.uint8)[::4096], numpy.zeros((0, 3)),
         numpy.lib.stride_tricks.as_strided(numpy.zeros(1), shape=(10 ** 12,), strides=(0,))) if numpy else None

print("READY", flush=True)
while True:
    time.sleep(0.2)
