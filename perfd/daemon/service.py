"""``perfd serve``: serve forever, follow the target across restarts, talk to systemd.

The server binds first and stays up whatever the target does. A poll loop
(every ``POLL`` s) finds the target when perfd is not attached and attaches;
the engine's own watcher notices the target's exit within 0.25 s and detaches,
so a restarted target (new PID) is attached again well inside 2 s, with a
fresh registry state (counters restart). Attaching runs in a worker thread so
the event loop — and with it the HTTP server and the systemd watchdog — never
waits on a slow attach. SIGHUP re-reads the configuration; a bad one is
reported and ignored, the running one stays.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil
from aiohttp import web

from perfd.config import ServeConfig
from perfd.daemon.notify import Notifier
from perfd.daemon.targets import Found, find_target
from perfd.engine import Engine
from perfd.errors import NoSuchProcess, PerfdError
from perfd.registry import Registry
from perfd.runtime import StopEvent
from perfd.server import bound_port, make_app, start_server

log = logging.getLogger(__name__)

POLL = 0.25  # target discovery period while detached: well inside the 2 s re-attach promise
RETRY_MAX = 5.0  # back-off ceiling for a process that matches but cannot be attached


def say(message: str) -> None:
    """One line on stderr: the journal under systemd, the terminal otherwise."""
    print(f"perfd: {message}", file=sys.stderr, flush=True)


@dataclass
class _Retry:
    """Back-off for one (pid, start time) that matched but failed to attach."""

    key: tuple[int, float] | None = None
    delay: float = POLL
    not_before: float = 0.0

    def allowed(self, key: tuple[int, float], now: float) -> bool:
        return key != self.key or now >= self.not_before

    def failed(self, key: tuple[int, float], now: float) -> None:
        self.delay = self.delay * 2 if key == self.key else POLL  # a just-started process gets quick retries
        self.delay = min(self.delay, RETRY_MAX)
        self.key, self.not_before = key, now + self.delay


class ServeDaemon:
    def __init__(self, config: ServeConfig, reload_config: Callable[[], ServeConfig],
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.reload_config = reload_config
        self.notifier = notifier or Notifier()
        self.registry = Registry()
        self.engine = Engine(self.registry, config.attach_options())
        self.registry.detach("waiting for the target: looking for it")
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._reload = asyncio.Event()
        self._retry = _Retry()
        self._status = ""
        self._waiting_for: str | None = None  # last reason logged, so the log is not flooded
        self._lost: str | None = None  # why the last attach ended, kept in health while waiting
        self._was_attached = False

    # --- lifecycle -----------------------------------------------------------

    async def run(self, stop: StopEvent) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        await self._start_server()  # BindError (exit 2) before anything else happens
        self.notifier.ready(f"serving {self.url}; looking for the target")
        watchdog = loop.create_task(self._watchdog(), name="perfd-watchdog")
        try:
            while not stop.is_set():
                try:
                    await self._tick()
                except Exception as e:  # never exit over the target: log it and keep serving
                    if self._runner is None:
                        raise  # lost the server itself (a reload could not bind): let systemd restart perfd
                    log.exception("serve loop")
                    say(f"internal error, still serving: {e!r}")
                try:
                    await asyncio.wait_for(stop.wait(), timeout=POLL)
                except asyncio.TimeoutError:
                    pass
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            self.notifier.stopping()
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
            await asyncio.to_thread(self.engine.detach, "perfd stopped")
            await self._stop_server()
            self.notifier.close()
        return 0

    async def _tick(self) -> None:
        if self._reload.is_set():
            self._reload.clear()
            await self._apply_reload()
        attached = self._attached()  # once: the watcher may detach meanwhile, and
        self._notice_loss(attached)    # the loss must be noticed before anything else says why
        if not attached:
            await self._try_attach()
        self._report()

    async def _start_server(self) -> None:
        options = self.config.server_options()
        self._runner = await start_server(make_app(self.registry, options), options)
        self.url = f"http://{options.host}:{bound_port(self._runner)}"
        say(f"serving {self.url}/api/metrics (dashboard {self.url}/)")

    async def _stop_server(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _watchdog(self) -> None:
        """WATCHDOG=1 from the event loop itself: a wedged loop stops the pings and systemd restarts perfd."""
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    # --- following the target ---------------------------------------------------

    def _attached(self) -> bool:
        # The engine's watcher marks the registry detached when the target exits;
        # until it has, the old attach still owns the engine.
        return self.engine.pid is not None and self.registry.attached

    async def _try_attach(self) -> None:
        found = await asyncio.to_thread(find_target, self.config.target)
        if not isinstance(found, Found):
            self._wait(found.reason)
            return
        key = (found.pid, _start_time(found.pid))
        now = time.monotonic()
        if not self._retry.allowed(key, now):
            return
        try:
            interpreter = await asyncio.to_thread(self.engine.attach, found.pid)
        except NoSuchProcess as e:  # it was exiting when found (often the target just lost): no back-off
            self._wait(f"found PID {found.pid} by {found.how}, but {e}")
            return
        except PerfdError as e:
            self._retry.failed(key, now)
            self._wait(f"found PID {found.pid} by {found.how} but cannot attach: {e}")
            return
        except Exception as e:  # a daemon keeps serving whatever one attach throws
            log.exception("attaching to PID %d", found.pid)
            self._retry.failed(key, now)
            self._wait(f"found PID {found.pid} by {found.how} but attaching failed: {e!r}")
            return
        self._retry = _Retry()
        self._waiting_for = self._lost = None
        self._was_attached = True
        say(f"attached to PID {found.pid} (Python {interpreter.version}) found by {found.how}")

    def _wait(self, why: str) -> None:
        """Not attached: health's ``detail`` says what happened last and what perfd waits for."""
        if why != self._waiting_for:
            say(f"waiting for the target: {why}")
            self._waiting_for = why
        text = f"waiting for the target: {why}"
        if self._lost is not None:
            text = f"{self._lost}; {text}"
        if self.registry.detached_reason != text:
            self.registry.detach(text)

    def _notice_loss(self, attached: bool) -> None:
        if self._was_attached and not attached:
            self._lost = self.registry.detached_reason
            say(self._lost or "detached")
        self._was_attached = attached

    def _report(self) -> None:
        if self._attached():
            target = self.registry.perfd_status().target
            text = f"attached to PID {target.pid} (Python {target.python}); serving {self.url}"
        else:
            text = f"{self.registry.detached_reason}; serving {self.url}"
        if text != self._status:
            self._status = text
            self.notifier.status(text)

    # --- SIGHUP -----------------------------------------------------------------

    async def _apply_reload(self) -> None:
        say("SIGHUP: reloading the configuration")
        try:
            new = self.reload_config()
            engine = Engine(self.registry, new.attach_options()) if _needs_reattach(self.config, new) else None
        except PerfdError as e:
            say(f"reload rejected, the running configuration stays: {e}")
            self.notifier.status(f"reload rejected: {e}")
            return
        self.notifier.reloading()
        old, self.config = self.config, new
        if new.server != old.server:
            await self._rebind(old)
        if engine is not None:
            await asyncio.to_thread(self.engine.detach, "configuration reloaded")
            self.engine = engine
            self._retry = _Retry()
            self._waiting_for = None
            self._was_attached = False
        self._status = ""
        self.notifier.ready(f"configuration reloaded; serving {self.url}")
        say("configuration reloaded")

    async def _rebind(self, old: ServeConfig) -> None:
        """Serve with the new server options; if they cannot bind, go back to the old ones."""
        await self._stop_server()
        try:
            await self._start_server()
        except PerfdError as e:
            say(f"cannot serve with the reloaded server options ({e}); keeping the previous ones")
            self.config = self.config.model_copy(update={"server": old.server})
            await self._start_server()  # this address was ours a moment ago


def _needs_reattach(old: ServeConfig, new: ServeConfig) -> bool:
    return (old.target, old.sampling, old.sources) != (new.target, new.sampling, new.sources)


def _start_time(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0
