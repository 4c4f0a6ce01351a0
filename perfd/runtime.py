"""Running perfd's server until a signal: shared by attach, demo and serve."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable

from perfd.registry import Registry
from perfd.server import ServerOptions, bound_port, make_app, start_server

StopEvent = asyncio.Event


def run_until_signal(main: Callable[[StopEvent], Awaitable[int]]) -> int:
    """Run ``main(stop)`` in a fresh loop; SIGINT/SIGTERM set ``stop``."""

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            return await main(stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(runner())


async def serve_registry(
    registry: Registry,
    options: ServerOptions,
    stop: StopEvent,
    *,
    on_bound: Callable[[int], Awaitable[None]] | None = None,
    every_second: Callable[[], None] | None = None,
) -> None:
    """Serve ``registry`` until ``stop`` is set; raises ``BindError`` if the address is taken.

    ``on_bound(port)`` runs once the socket listens, while requests are
    already answered (attaching can take seconds: probes, calibration).
    """
    runner = await start_server(make_app(registry, options), options)
    try:
        if on_bound is not None:
            await on_bound(bound_port(runner))
        while not stop.is_set():
            if every_second is not None:
                every_second()
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass
    finally:
        await runner.cleanup()


class StatusLine:
    """A one-line live status on a TTY (rewritten in place); silent otherwise."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self._shown = False

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        width = shutil.get_terminal_size((200, 24)).columns - 1
        self.stream.write("\r\033[K" + text[:width])
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
