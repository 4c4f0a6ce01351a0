"""``perfd demo``: the bundled demo LiDAR server, viewers, and perfd attached to it.

The zero-setup way to see perfd work (SPEC §3). The demo runs as separate
processes (``python -m perfd.demo`` and ``python -m perfd.demo.viewer``)
started by ``perfd.demo.launcher``; perfd itself never imports the demo app.
Everything started here is stopped on exit, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import click

from perfd.cli.options import make_attach_options, make_server_options, sampling_options, server_options
from perfd.demo.launcher import Demo, DemoSpec, DemoStartError, port_free
from perfd.errors import PerfdError, UsageError

DEMO_IMPORTS = "import fastapi, uvicorn, numpy, open3d, aiohttp"


class DemoFailed(PerfdError):
    """The demo server or a viewer did not start."""


class _Stop(BaseException):
    """Raised by our SIGINT/SIGTERM handler outside the serving loop."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


def _check_python(python: str) -> None:
    """The demo needs Open3D and FastAPI in the interpreter that runs it."""
    try:
        result = subprocess.run([python, "-c", DEMO_IMPORTS], capture_output=True, text=True, timeout=120)
    except OSError as e:
        raise UsageError(f"--python {python}: cannot run it ({e.strerror})") from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        raise UsageError(f"--python {python} cannot run the demo ({last}); "
                         "install the demo extra there: pip install 'perfd[demo]'")


def _announce_demo(demo: Demo) -> None:
    pids = demo.pids()
    viewers = ", ".join(str(p) for p in pids["viewers"]) or "none"
    click.echo("\n".join([
        f"demo LiDAR server  {demo.url}  pid {pids['server']} (sensor pid {pids['sensor']})",
        f"  ground truth     {demo.url}/api/metrics",
        f"  viewers          pid {viewers}",
    ]))


def _announce_perfd(url: str) -> None:
    """Called once perfd is bound and attached (the real port, even for --port 0)."""
    click.echo("\n".join([
        f"perfd              {url}/api/metrics  pid {os.getpid()}",
        f"  live stream      {url.replace('http', 'ws', 1)}/ws/system_metrics",
        f"  prometheus       {url}/metrics",
        f"  dashboard        {url}/",
    ]))


def _sleep_until_stopped(duration: float | None) -> None:
    deadline = None if duration is None else time.monotonic() + duration
    while deadline is None or time.monotonic() < deadline:
        time.sleep(0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic())))


@click.command()
@click.option("--hz", type=float, default=10.0, show_default=True, help="Sensor frame rate.")
@click.option("--points", type=int, default=65_536, show_default=True, help="Points per frame.")
@click.option("--app-port", type=int, default=8005, show_default=True, help="Port of the demo LiDAR server.")
@click.option("--clients", type=click.IntRange(0, 64), default=1, show_default=True,
              help="WebSocket viewer processes subscribed to every node topic.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after this many seconds (default: until Ctrl-C).")
@click.option("--no-attach", is_flag=True, help="Run the demo and its viewers without perfd.")
@click.option("--python", "python", default=sys.executable, show_default="this interpreter",
              help="Interpreter that runs the demo server (needs Open3D and FastAPI).")
@click.option("--chain", type=click.IntRange(min=1), default=None, help="A linear DAG of N processing nodes.")
@click.option("--fanout", type=click.IntRange(min=1), default=None, help="Branches after outlier removal.")
@click.option("--node-delay-ms", multiple=True, metavar="NAME=MS[:cpu|sleep]",
              help="Extra work in one node (sync CPU spin or awaited sleep).")
@server_options
@sampling_options
def command(hz: float, points: int, app_port: int, clients: int, duration: float | None, no_attach: bool,
            python: str, chain: int | None, fanout: int | None, node_delay_ms: tuple[str, ...],
            **kwargs: object) -> None:
    """Run the bundled demo LiDAR server with viewers, and attach perfd to it.

    Prints the URLs and PIDs; stops everything it started on exit.
    """
    server = make_server_options(**kwargs)
    attach = make_attach_options(**kwargs)
    if python != sys.executable:
        _check_python(python)
    if not port_free(app_port):
        raise UsageError(f"--app-port {app_port} is in use; pick another with --app-port")
    if not no_attach and not port_free(server.port, server.host):
        raise UsageError(f"--port {server.port} is in use; pick another with --port")
    spec = DemoSpec(app_port=app_port, hz=hz, points=points, clients=clients, python=python, chain=chain,
                    fanout=fanout, node_delays=node_delay_ms)
    raise SystemExit(run_demo(spec, None if no_attach else (server, attach), duration))


def run_demo(spec: DemoSpec, attach_with: tuple | None, duration: float | None) -> int:
    """Start the demo, serve (attached or not) until stopped, always tear down."""
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    demo = Demo(spec)
    timer: threading.Timer | None = None
    rc = 0
    try:
        try:
            demo.start()
        except DemoStartError as e:
            if e.returncode == 2:  # the demo rejected an argument we passed through (e.g. --node-delay-ms)
                raise UsageError(str(e).rsplit("error: ", 1)[-1]) from None
            if "No module named" in str(e):
                raise UsageError(f"{spec.python} cannot run the demo ({str(e).splitlines()[-1]}); install the "
                                 "demo extra (pip install 'perfd[demo]') or pick an interpreter with --python") from None
            raise DemoFailed(str(e)) from None
        _announce_demo(demo)
        if attach_with is None:
            click.echo("perfd              not attached (--no-attach)")
            _sleep_until_stopped(duration)
        else:
            from perfd.cli.attach import serve_attached

            server, attach = attach_with

            def ready(url: str) -> None:
                nonlocal timer
                _announce_perfd(url)
                if duration is not None:  # counted from attach; the serving loop stops on SIGTERM
                    timer = threading.Timer(duration, os.kill, (os.getpid(), signal.SIGTERM))
                    timer.daemon = True
                    timer.start()

            rc = serve_attached(demo.pid, server, attach, status=True, on_ready=ready)
    except _Stop:
        pass
    finally:
        if timer is not None:
            timer.cancel()
        for sig in previous:  # a second Ctrl-C must not cut the teardown short
            signal.signal(sig, signal.SIG_IGN)
        demo.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        click.echo("demo: stopped the demo server and its viewers", err=True)
    return rc
