"""``perfd snapshot PID``: attach, measure for a while, print one snapshot."""

from __future__ import annotations

import json
import time

import click

from perfd.cli.options import make_attach_options, sampling_options
from perfd.engine import Engine
from perfd.errors import NotAttached, PerfdError
from perfd.registry import Registry
from perfd.snapshot import dump


class TargetLost(PerfdError):
    """The target went away before the snapshot was complete."""


def take_snapshot(pid: int, seconds: float, engine: Engine) -> dict:
    engine.attach(pid)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and engine.registry.attached:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        try:
            return dump(engine.registry.snapshot())
        except NotAttached as e:
            raise TargetLost(f"no snapshot: {e}") from None
    finally:
        engine.detach("snapshot taken")


@click.command()
@click.argument("pid", type=int)
@click.option("--seconds", type=click.FloatRange(min=0.0), default=2.0, show_default=True,
              help="How long to measure before printing.")
@click.option("--indent", type=int, default=2, show_default=True, help="JSON indent (0 for one line).")
@sampling_options
def command(pid: int, seconds: float, indent: int, **kwargs: object) -> None:
    """Attach to PID, measure for SECONDS, print one MetricsSnapshot as JSON."""
    engine = Engine(Registry(), make_attach_options(**kwargs))
    data = take_snapshot(pid, seconds, engine)
    click.echo(json.dumps(data, indent=indent or None))
