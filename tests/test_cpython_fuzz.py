"""Every decoder fed random bytes: results or typed failures, never a stray exception.

The "memory" here is a random byte source standing in for a target whose
memory changes arbitrarily under us (the worst torn read); real-target
behaviour is covered by the other reader tests.
"""

from __future__ import annotations

import random

import pytest

from perfd.cpython.discovery import Interpreter, PythonVersion
from perfd.cpython.generators import GeneratorReader
from perfd.cpython.layouts import layout_for
from perfd.cpython.linetable import line_for_offset
from perfd.cpython.objects import Failure, Limits, ObjectReader
from perfd.cpython.stacks import StackReader
from perfd.cpython.tasks import TaskLayout, TaskReader
from perfd.errors import MemoryReadError
from conftest import TARGET_VERSIONS


class RandomMemory:
    """Answers every read with random bytes, biased towards plausible pointers and small ints."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.reads = 0
        self.pid = 0

    def _bytes(self, size: int) -> bytes:
        r = self.rng
        out = bytearray()
        while len(out) < size:
            pick = r.random()
            if pick < 0.3:
                out += r.randrange(0x7F0000000000, 0x7FFFFFFFFFFF).to_bytes(8, "little")
            elif pick < 0.6:
                out += r.randrange(0, 64).to_bytes(8, "little")
            elif pick < 0.7:
                out += bytes(8)
            else:
                out += r.randbytes(8)
        return bytes(out[:size])

    def read(self, addr: int, size: int) -> bytes:
        self.reads += 1
        if not 0 < addr < 1 << 63 or self.rng.random() < 0.05:
            raise MemoryReadError(f"unreadable {addr:#x}")
        return self._bytes(size)

    def read_many(self, parts: list[tuple[int, int]]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for addr, size in parts:
            failed = not 0 < addr < 1 << 63 or self.rng.random() < 0.01
            out.append(None if failed else self._bytes(size))
        return out

    def close(self) -> None:
        pass


def interpreter(version: str) -> Interpreter:
    major, minor = map(int, version.split("."))
    return Interpreter(0, "/x/python", "/x/libpython", 0x7F0000000000, 0x7F0000100000,
                       PythonVersion(major, minor, 0), True)


def test_linetable_on_random_bytes() -> None:
    rng = random.Random(1)
    for _ in range(5000):
        table = rng.randbytes(rng.randrange(0, 64))
        line = line_for_offset(table, rng.randrange(-5, 5000), rng.randrange(-4, 400))
        assert line is None or isinstance(line, int)


@pytest.mark.parametrize("version", TARGET_VERSIONS)
def test_object_reader_on_random_memory(version: str) -> None:
    mem = RandomMemory(2)
    objects = ObjectReader(mem, layout_for(interpreter(version)), Limits(max_hops=2000, max_bytes=1 << 20))
    rng = random.Random(3)
    for _ in range(300):
        addr = rng.randrange(1, 1 << 48)
        objects.decode(addr, depth=3)
        assert isinstance(objects.attribute(addr, "name"), (int, Failure))
        assert isinstance(objects.item(addr, "key"), (int, Failure))
        assert isinstance(objects.item(addr, 3), (int, Failure))
        objects.dict_items(addr)
        objects.members(addr)
        objects.sequence(addr)
        objects.string(addr)
        objects.resolve(addr, [("attr", "a"), ("item", "b"), ("item", 0)])


@pytest.mark.parametrize("version", TARGET_VERSIONS)
def test_stack_reader_on_random_memory(version: str) -> None:
    for seed in range(40):
        reader = StackReader(interpreter(version), RandomMemory(seed))
        for _ in range(5):
            try:
                sample = reader.sample(with_locals=True)
            except MemoryReadError:
                continue  # the documented failure: counted by the sampler
            for t in sample.threads:
                for f in t.frames:
                    assert isinstance(f.qualname, str)
        reader.thread_names()
        reader.module_global("threading", "_active")


@pytest.mark.parametrize("version", TARGET_VERSIONS)
def test_generator_and_task_readers_on_random_memory(version: str) -> None:
    reader = StackReader(interpreter(version), RandomMemory(5))
    gens = GeneratorReader(reader.mem, reader.layout, reader.code_info)
    tasks = TaskReader(reader, TaskLayout("_asyncio.Task", 136, 128, 144, "_asyncio.FutureIter", 16))
    rng = random.Random(6)
    for _ in range(200):
        addr = rng.randrange(1, 1 << 48)
        assert set(gens.states([addr, addr + 8]).values()) <= {"created", "suspended", "running", "completed",
                                                                "cleared", "unknown", "gone"}
        try:
            gens.view(addr)
            tasks.chain(addr)
        except MemoryReadError:
            pass
    assert isinstance(tasks.tasks(), list)
