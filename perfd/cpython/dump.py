"""One-shot dump of a target's Python state: threads (and asyncio tasks).

The JSON shape is perfd's contract for ``perfd dump --json``: a list of
threads ``{thread_id, native_thread_id, name, frames: [{name, filename,
line, locals?}]}``, innermost frame first; str/int/float/bool/None locals are
JSON-native, everything else a short ``<type at 0x…>`` string.
"""

from __future__ import annotations

from perfd.cpython.discovery import locate_interpreter
from perfd.cpython.objects import short_repr
from perfd.cpython.sample import Frame, Sample, TaskChain, ThreadStack
from perfd.cpython.stacks import StackReader


def frame_json(frame: Frame) -> dict:
    out: dict = {"name": frame.qualname, "filename": frame.filename, "line": frame.line}
    if frame.locals is not None:
        out["locals"] = {k: short_repr(v) for k, v in frame.locals.items()}
    return out


def thread_json(thread: ThreadStack) -> dict:
    return {
        "thread_id": thread.thread_id,
        "native_thread_id": thread.native_thread_id,
        "name": thread.name,
        "frames": [frame_json(f) for f in thread.frames],
    }


def task_json(task: TaskChain) -> dict:
    return {
        "task": f"{task.task_addr:#x}",
        "name": task.name,
        "state": task.state,
        "awaits": [frame_json(f) for f in task.frames],
        "awaited": task.awaited,
    }


def take_dump(pid: int, *, with_locals: bool = False, with_tasks: bool = False) -> Sample:
    """Read every thread (and, with ``with_tasks``, every asyncio task) of ``pid`` once."""
    reader = StackReader(locate_interpreter(pid))
    try:
        sample = reader.sample(with_locals=with_locals)
        names = reader.thread_names()
        for t in sample.threads:
            t.name = names.get(t.thread_id)
        if with_tasks:
            from perfd.cpython.tasks import TaskReader

            sample.tasks = TaskReader(reader).tasks(with_locals=with_locals)
        return sample
    finally:
        reader.close()


def dump_json(sample: Sample) -> list | dict:
    threads = [thread_json(t) for t in sample.threads]
    if sample.tasks is None:
        return threads
    return {"threads": threads, "tasks": [task_json(t) for t in sample.tasks]}


def dump_text(sample: Sample) -> str:
    """py-spy-like text: one block per thread, then one per task."""
    lines: list[str] = []
    for t in sample.threads:
        lines.append(f"Thread {t.thread_id:#x} (native {t.native_thread_id}): {t.name or '?'!r}")
        lines += _frames_text(t.frames)
    for task in sample.tasks or ():
        lines.append(f"Task {task.task_addr:#x} {task.name or '?'!r} [{task.state}]"
                     + (f" awaiting {task.awaited}" if task.awaited else ""))
        lines += _frames_text(task.frames)
    return "\n".join(lines)


def _frames_text(frames: list[Frame]) -> list[str]:
    out = []
    for f in frames:
        out.append(f"    {f.qualname} ({f.filename}:{f.line})")
        for k, v in (f.locals or {}).items():
            out.append(f"        {k} = {short_repr(v)!r}")
    return out
