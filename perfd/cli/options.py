"""Options shared by the commands that attach (attach, snapshot, demo, serve)."""

from __future__ import annotations

from collections.abc import Callable

import click

from perfd.engine import UPROBE_BACKENDS, AttachOptions
from perfd.server import DEFAULT_HOST, DEFAULT_PORT, ServerOptions


def sampling_options(f: Callable) -> Callable:
    """--rate, --no-uprobes, --uprobes-backend, --no-capture, --profile."""
    decorators = [
        click.option("--rate", "rate_hz", type=float, default=250.0, show_default=True,
                     help="Stack sampling rate (Hz)."),
        click.option("--no-uprobes", is_flag=True, help="Do not place Open3D uprobes."),
        click.option("--uprobes-backend", type=click.Choice(UPROBE_BACKENDS), default="auto",
                     show_default=True, help="How to place uprobes."),
        click.option("--no-capture", is_flag=True, help="Do not capture the target's HTTP/WebSocket traffic."),
        click.option("--profile", type=click.Path(dir_okay=False), default=None,
                     help="App profile (default: the bundled lidar_scan.toml)."),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def server_options(f: Callable) -> Callable:
    """--host, --port, --token, --insecure, --broadcast-hz."""
    decorators = [
        click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to serve on."),
        click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="Port to serve on."),
        click.option("--token", envvar="PERFD_TOKEN", default=None,
                     help="Bearer token clients must send (required off loopback). Env: PERFD_TOKEN."),
        click.option("--insecure", is_flag=True, help="Allow a non-loopback bind without --token."),
        click.option("--broadcast-hz", type=float, envvar="METRICS_BROADCAST_HZ", default=1.0,
                     show_default=True, help="WebSocket push rate. Env: METRICS_BROADCAST_HZ."),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def make_attach_options(rate_hz: float, no_uprobes: bool, uprobes_backend: str, no_capture: bool,
                        profile: str | None, **_: object) -> AttachOptions:
    return AttachOptions(rate_hz=rate_hz, uprobes=not no_uprobes, uprobes_backend=uprobes_backend,
                         capture=not no_capture, profile=profile)


def make_server_options(host: str, port: int, token: str | None, insecure: bool, broadcast_hz: float,
                        **_: object) -> ServerOptions:
    return ServerOptions(host=host, port=port, token=token, insecure=insecure, broadcast_hz=broadcast_hz)
