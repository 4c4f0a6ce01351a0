"""What one look at a target's Python state produces.

Frame identities (frame, code, generator addresses) are kept so later stages
can tell one call from the next and follow suspended coroutines.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Frame:
    name: str
    qualname: str
    filename: str
    line: int | None
    frame_addr: int
    code_addr: int
    owner: int  # layout's frame.owner_* constants: 0 thread, 1 generator/coroutine
    gen_addr: int = 0  # generator/coroutine object owning this frame, else 0
    locals: dict[str, object] | None = None


@dataclass(slots=True)
class ThreadStack:
    thread_id: int
    native_thread_id: int
    tstate_addr: int
    frames: list[Frame]  # innermost first
    name: str | None = None
    suspect: bool = False  # the walk saw signs of a torn read even after a retry
    # localsplus[0] of each frame (a method's self), read with the frame this sample,
    # innermost first; None when the walker did not keep it (the Python walker)
    first_locals: list[int] | None = None


@dataclass(slots=True)
class TaskChain:
    """One asyncio task and what it waits on, outermost coroutine first."""

    task_addr: int
    name: str | None
    state: str  # "created" | "suspended" | "running" | "completed" | "cleared" | "unknown"
    frames: list[Frame]  # the coroutine frames of the await chain, outermost first
    awaited: str | None = None  # innermost awaited non-coroutine object, e.g. "<_asyncio.Future at 0x…>"
    awaited_addr: int = 0


@dataclass(slots=True)
class Sample:
    monotonic_ns: int
    epoch_ns: int
    threads: list[ThreadStack]
    tasks: list[TaskChain] | None = None
    generator_states: dict[int, str] = field(default_factory=dict)  # polled gen/coro address -> state
    retried: bool = False
    # CLOCK_MONOTONIC when the stacks had been read: a look at the target spans
    # [monotonic_ns, read_done_ns]; it may be handed on much later (in batches)
    read_done_ns: int = 0
