"""asyncio tasks of a live target and each task's await chain.

Tasks are found where asyncio itself keeps them: the module-level WeakSet of
``asyncio.tasks`` (``_all_tasks`` on 3.11, ``_scheduled_tasks`` on 3.12/3.13)
plus the ``_eager_tasks`` set (3.12+). The C Task object's coroutine, waiter
and name fields are not in any installed header, so their offsets are
*calibrated*: the target's own interpreter binary runs a tiny script that
creates a suspended task and reports where those pointers sit inside it.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from dataclasses import dataclass
from functools import lru_cache

from perfd.cpython.generators import GeneratorReader
from perfd.cpython.maps import host_path
from perfd.cpython.objects import Failure
from perfd.cpython.sample import Frame, TaskChain
from perfd.cpython.stacks import StackReader
from perfd.errors import MemoryReadError, PerfdError

MAX_CHAIN = 256
MAX_TASKS = 100_000

_CALIBRATE = r"""
import asyncio, ctypes, json
def find(obj, raw):
    want = id(obj).to_bytes(8, "little")
    return [i for i in range(0, len(raw) - 7, 8) if raw[i:i + 8] == want]
async def inner(fut):
    await fut
async def main():
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    coro = inner(fut)
    task = asyncio.Task(coro)
    task.set_name("perfd-calibration")
    await asyncio.sleep(0)
    name = task.get_name()
    raw = ctypes.string_at(id(task), type(task).__basicsize__)
    it = fut.__await__()
    it_raw = ctypes.string_at(id(it), type(it).__basicsize__)
    out = {"task_type": type(task).__module__ + "." + type(task).__qualname__,
           "coro": find(coro, raw), "fut_waiter": find(fut, raw), "name": find(name, raw),
           "loop": find(loop, raw), "future_iter": find(fut, it_raw),
           "future_iter_type": type(it).__module__ + "." + type(it).__qualname__}
    it.close() if hasattr(it, "close") else None
    fut.set_result(None)
    await task
    print(json.dumps(out))
asyncio.run(main())
"""


class CalibrationError(PerfdError):
    """The target's interpreter could not tell where the C Task keeps its fields."""


@dataclass(frozen=True)
class TaskLayout:
    task_type: str  # e.g. "_asyncio.Task"
    coro: int
    fut_waiter: int
    name: int
    future_iter_type: str
    future_iter_future: int


@lru_cache(maxsize=16)
def _calibrate(exe: str, mtime_ns: int) -> TaskLayout:
    try:
        out = subprocess.run([exe, "-I", "-c", _CALIBRATE], capture_output=True, text=True, timeout=30,
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CalibrationError(f"cannot run {exe} to calibrate asyncio Task offsets: {e}") from None
    if out.returncode != 0:
        raise CalibrationError(f"{exe} failed to calibrate asyncio Task offsets: {out.stderr.strip()[-200:]}")
    data = json.loads(out.stdout)
    for key in ("coro", "fut_waiter", "name", "future_iter"):
        if len(data[key]) != 1:
            raise CalibrationError(f"ambiguous asyncio Task field {key!r} in {exe}: offsets {data[key]}")
    return TaskLayout(data["task_type"], data["coro"][0], data["fut_waiter"][0], data["name"][0],
                      data["future_iter_type"], data["future_iter"][0])


def calibrate(pid: int, exe: str) -> TaskLayout:
    """Task field offsets for the interpreter binary ``exe`` of ``pid`` (cached per binary)."""
    path = host_path(pid, exe)
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError as e:
        raise CalibrationError(f"cannot stat {path}: {e}") from None
    return _calibrate(path, mtime)


class TaskReader:
    """Enumerates asyncio tasks and follows their await chains."""

    def __init__(self, stacks: StackReader, layout: TaskLayout | None = None) -> None:
        self.stacks = stacks
        self.objects = stacks.objects
        self.mem = stacks.mem
        self.tl = layout or calibrate(stacks.interp.pid, stacks.interp.exe)
        self.gens = GeneratorReader(stacks.mem, stacks.layout, stacks.code_info)

    # -- enumeration ------------------------------------------------------
    def task_addresses(self) -> list[int]:
        """Every live task object (scheduled and eager), deduplicated."""
        found: dict[int, None] = {}
        for name in ("_all_tasks", "_scheduled_tasks"):
            weakset = self.stacks.module_global("asyncio.tasks", name)
            if weakset is None:
                continue
            data = self.objects.attribute(weakset, "data")
            if isinstance(data, Failure):
                continue
            members = self.objects.members(data)
            if isinstance(members, Failure):
                continue
            refs = self.mem.read_many([(r + self.stacks.layout.weakref_object, 8) for r in members[:MAX_TASKS]])
            for b in refs:
                if b is not None:
                    obj = struct.unpack("<Q", b)[0]
                    if obj and self._is_task(obj):
                        found[obj] = None
        eager = self.stacks.module_global("asyncio.tasks", "_eager_tasks")
        if eager is not None:
            members = self.objects.members(eager)
            if not isinstance(members, Failure):
                for obj in members[:MAX_TASKS]:
                    if self._is_task(obj):
                        found[obj] = None
        return list(found)

    def _is_task(self, addr: int) -> bool:
        """A C Task or a subclass of it (the only layout we calibrated)."""
        t = self.objects.type_name(addr)
        if isinstance(t, Failure):
            return False
        if t == self.tl.task_type:
            return True
        try:
            info = self.objects.type_of(addr)
            mro = self.objects.sequence(info.mro_addr)
        except PerfdError:
            return False
        if isinstance(mro, Failure):
            return False
        return any(self.objects.type_info(m).name == self.tl.task_type for m in mro)

    # -- chains -----------------------------------------------------------
    def tasks(self, *, with_locals: bool = False) -> list[TaskChain]:
        out = []
        for addr in self.task_addresses():
            try:
                out.append(self.chain(addr, with_locals=with_locals))
            except (MemoryReadError, PerfdError):
                continue  # task freed or changing under us: skip it, count nothing here
        return out

    def chain(self, task: int, *, with_locals: bool = False) -> TaskChain:
        """The task's coroutine chain, outermost first, down to the innermost awaited object."""
        raw = self.mem.read(task, max(self.tl.coro, self.tl.fut_waiter, self.tl.name) + 8)
        coro = struct.unpack_from("<Q", raw, self.tl.coro)[0]
        waiter = struct.unpack_from("<Q", raw, self.tl.fut_waiter)[0]
        name = self._name(struct.unpack_from("<Q", raw, self.tl.name)[0])
        frames: list[Frame] = []
        state = "unknown"
        awaited_addr = 0
        obj = coro
        seen: set[int] = set()
        while obj and obj not in seen and len(frames) < MAX_CHAIN:
            seen.add(obj)
            kind = self.objects.type_name(obj)
            if kind in ("coroutine", "generator", "async_generator"):
                view = self.gens.view(obj)
                if not frames:
                    state = view.state
                if view.frame is None:
                    break
                f = view.frame
                if with_locals:
                    f.locals = self.stacks.frame_locals_at(f)
                frames.append(f)
                obj = view.delegate
                continue
            if kind == self.tl.future_iter_type:
                fut = self.objects.pointer(obj + self.tl.future_iter_future)
                obj = fut if isinstance(fut, int) else 0
            awaited_addr = obj
            break
        if not awaited_addr and waiter and frames:
            awaited_addr = waiter
        awaited = None
        if awaited_addr:
            t = self.objects.type_name(awaited_addr)
            awaited = f"<{t if isinstance(t, str) else '?'} at {awaited_addr:#x}>"
        return TaskChain(task, name, state, frames, awaited, awaited_addr)

    def _name(self, addr: int) -> str | None:
        if not addr:
            return None
        value = self.objects.decode(addr, 0)
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return f"Task-{value}"  # names materialise lazily from a counter
        return None
