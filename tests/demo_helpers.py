"""Start the bundled demo LiDAR server for a test, and prove it is gone after.

Use the context manager::

    from demo_helpers import running_demo
    with running_demo(hz=10, clients=1) as demo:
        demo.pid, demo.sensor_pid, demo.url, demo.spec.app_port, demo.get_json("/api/metrics")

or the fixture (import it into the test module: ``from demo_helpers import demo_factory``)::

    def test_x(demo_factory):
        demo = demo_factory(hz=10, points=16384, clients=2)

Both pick free ports, wait until the server answers and has processed
``wait_frames`` frames and every viewer is subscribed, and stop everything
afterwards (``demo.viewer_stats`` then holds each viewer's final counters).
``assert_all_gone(demo)`` checks no process of the demo remains and its port
is free.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from perfd.demo.launcher import Demo, DemoSpec, free_port, port_free


def demo_spec(*, hz: float = 10.0, points: int = 65_536, clients: int = 1, metrics: bool = True,
              chain: int | None = None, fanout: int | None = None, node_delays: tuple[str, ...] = (),
              poll_interval: float = 1.0, python: str | None = None, app_port: int | None = None) -> DemoSpec:
    extra = {"python": python} if python else {}
    return DemoSpec(app_port=app_port or free_port(), hz=hz, points=points, clients=clients, metrics=metrics,
                    chain=chain, fanout=fanout, node_delays=tuple(node_delays), poll_interval=poll_interval,
                    **extra)


def wait_frames(demo: Demo, frames: int, timeout: float = 30.0) -> dict:
    """Wait until the demo has taken ``frames`` frames off its sensor queue."""
    deadline = time.monotonic() + timeout
    while True:
        status = demo.get_json("/api/status")
        if status["frames_received"] >= frames:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"demo processed {status['frames_received']} < {frames} frames in {timeout}s")
        time.sleep(0.1)


@contextmanager
def running_demo(*, wait_for_frames: int = 1, **spec: object) -> Iterator[Demo]:
    """A started demo (see ``demo_spec`` for the knobs); stopped on exit."""
    demo = Demo(demo_spec(**spec)).start()
    try:
        if wait_for_frames:
            wait_frames(demo, wait_for_frames)
        yield demo
    finally:
        demo.stop()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def assert_all_gone(pids: list[int], ports: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids) or not all(port_free(p) for p in ports):
        if time.monotonic() > deadline:
            alive = [p for p in pids if pid_alive(p)]
            busy = [p for p in ports if not port_free(p)]
            pytest.fail(f"left behind: processes {alive}, ports {busy}")
        time.sleep(0.1)


def demo_pids(demo: Demo) -> list[int]:
    pids = demo.pids()
    return [pids["server"], pids["sensor"], *pids["viewers"]]


@pytest.fixture
def demo_factory() -> Iterator[Callable[..., Demo]]:
    """``demo_factory(**knobs) -> Demo``: started and ready; all stopped after the test."""
    started: list[Demo] = []

    def start(*, wait_for_frames: int = 1, **spec: object) -> Demo:
        demo = Demo(demo_spec(**spec))
        started.append(demo)
        demo.start()
        if wait_for_frames:
            wait_frames(demo, wait_for_frames)
        return demo

    yield start
    for demo in started:
        pids, port = demo_pids(demo), demo.spec.app_port
        demo.stop()
        assert_all_gone(pids, [port])
