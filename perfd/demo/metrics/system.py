"""The system numbers of the snapshot, probed once a second with psutil."""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass

import psutil

MIB = 1024 * 1024


@dataclass
class SystemProbe:
    cpu_percent: float = 0.0
    memory_used_mb: float = 0.0
    memory_total_mb: float = 0.0
    _task: asyncio.Task | None = None

    def __post_init__(self) -> None:
        self._process = psutil.Process(os.getpid())
        psutil.cpu_percent(None)  # prime: the first reading is always 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self.sample()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="system-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.sample()

    def sample(self) -> None:
        self.cpu_percent = min(100.0, max(0.0, psutil.cpu_percent(None)))
        self.memory_used_mb = self._process.memory_info().rss / MIB
        self.memory_total_mb = psutil.virtual_memory().total / MIB

    def view(self, queue_depth: int) -> dict:
        percent = self.memory_used_mb / self.memory_total_mb * 100.0 if self.memory_total_mb else 0.0
        return {
            "cpu_percent": self.cpu_percent,
            "memory_used_mb": self.memory_used_mb,
            "memory_total_mb": self.memory_total_mb,
            "memory_percent": min(100.0, percent),
            "thread_count": threading.active_count(),  # Python threads alive, as SPEC §1 defines it
            "queue_depth": queue_depth,
        }
