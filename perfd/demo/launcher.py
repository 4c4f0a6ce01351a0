"""Start and stop a demo: the server process and its viewer processes.

Used by ``perfd demo`` and by the tests' demo fixture. Standard library
only — it launches the demo, it never imports it. Children are put in their
own session (a Ctrl-C reaches only the launcher, which stops them in order)
and get SIGTERM if the launcher dies without cleaning up (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1
READY_TIMEOUT_S = 60.0


class DemoStartError(RuntimeError):
    """The demo server or a viewer did not come up; ``returncode`` 2 means it rejected its arguments."""

    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode


@dataclass(frozen=True)
class DemoSpec:
    host: str = "127.0.0.1"
    app_port: int = 8005
    hz: float = 10.0
    points: int = 65_536
    clients: int = 1
    python: str = sys.executable
    metrics: bool = True
    chain: int | None = None
    fanout: int | None = None
    node_delays: tuple[str, ...] = ()  # "NAME=MS[:cpu|sleep]"
    poll_interval: float = 1.0  # viewers' REST polling
    extra_args: tuple[str, ...] = ()

    def server_argv(self) -> list[str]:
        argv = [self.python, "-m", "perfd.demo", "--host", self.host, "--port", str(self.app_port),
                "--hz", f"{self.hz:g}", "--points", str(self.points),
                "--metrics" if self.metrics else "--no-metrics"]
        if self.chain is not None:
            argv += ["--chain", str(self.chain)]
        if self.fanout is not None:
            argv += ["--fanout", str(self.fanout)]
        for delay in self.node_delays:
            argv += ["--node-delay-ms", delay]
        return argv + list(self.extra_args)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.app_port}"


@dataclass
class Demo:
    """A running demo. ``stop()`` (or leaving the ``with``) ends every process it started."""

    spec: DemoSpec
    server: subprocess.Popen | None = None
    viewers: list[subprocess.Popen] = field(default_factory=list)
    viewer_stats: list[dict] = field(default_factory=list)
    sensor_pid: int | None = None
    server_output: str = ""  # the server's stdout+stderr, kept after stop()
    _workdir: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return self.spec.url

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    def pids(self) -> dict[str, int | list[int]]:
        return {"server": self.pid, "sensor": self.sensor_pid or 0, "viewers": [v.pid for v in self.viewers]}

    def get_json(self, path: str, timeout: float = 5.0) -> object:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.load(response)

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> "Demo":
        self._workdir = tempfile.TemporaryDirectory(prefix="perfd-demo-")
        env = {**os.environ, "LIDAR_ENABLE_METRICS": "1" if self.spec.metrics else "0", "PYTHONUNBUFFERED": "1"}
        try:
            self.server = _spawn(self.spec.server_argv(), env, Path(self._workdir.name) / "server.log")
            status = self._wait_server_ready()
            self.sensor_pid = status.get("sensor_pid")
            for i in range(self.spec.clients):
                self.viewers.append(self._start_viewer(i, env))
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_server_ready(self) -> dict:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise DemoStartError(f"demo server exited with {self.server.returncode}: "
                                     f"{self.server_log().strip()[-2000:]}", self.server.returncode)
            try:
                return self.get_json("/api/status", timeout=1.0)
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        raise DemoStartError(f"demo server not ready on {self.url} within {READY_TIMEOUT_S:g}s: "
                             f"{self.server_log()[-2000:]}")

    def _start_viewer(self, index: int, env: dict) -> subprocess.Popen:
        stats = Path(self._workdir.name) / f"viewer{index}.json"
        argv = [self.spec.python, "-m", "perfd.demo.viewer", "--url", self.url,
                "--poll-interval", f"{self.spec.poll_interval:g}", "--stats", str(stats)]
        viewer = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                  start_new_session=True, preexec_fn=_die_with_parent)
        line = viewer.stdout.readline()
        if not line.startswith("READY"):
            viewer.kill()
            viewer.wait()
            raise DemoStartError(f"viewer {index} did not start: {line!r} {viewer.stderr.read()[-2000:]}")
        return viewer

    def server_log(self) -> str:
        if self._workdir is None:
            return ""
        path = Path(self._workdir.name) / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_viewers(self, timeout: float = 10.0) -> list[dict]:
        """Stop the viewers and keep their final counters in ``viewer_stats``."""
        for index, viewer in enumerate(self.viewers):
            if viewer.returncode is not None:
                continue
            _terminate(viewer, timeout)
            stats = Path(self._workdir.name) / f"viewer{index}.json" if self._workdir else None
            if stats is not None and stats.exists():
                with contextlib.suppress(ValueError):
                    self.viewer_stats.append(json.loads(stats.read_text()))
        return self.viewer_stats

    def stop(self, timeout: float = 10.0) -> None:
        """Viewers first, then the server (which reaps its sensor process)."""
        self.stop_viewers(timeout)
        if self.server is not None:
            _terminate(self.server, timeout)
        if self.sensor_pid:  # the server reaps it; make sure even if the server was killed
            _wait_gone(self.sensor_pid, timeout)
        if self._workdir is not None:
            self.server_output = self.server_log()
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> "Demo":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the launcher goes away."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _spawn(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, preexec_fn=_die_with_parent)


def _terminate(proc: subprocess.Popen, timeout: float) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
