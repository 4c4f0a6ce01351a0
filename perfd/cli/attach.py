"""``perfd attach PID``: attach to a running CPython and serve until stopped."""

from __future__ import annotations

import asyncio

import click

from perfd.cli.options import make_attach_options, make_server_options, sampling_options, server_options
from perfd.engine import AttachOptions, Engine
from perfd.registry import Registry
from perfd.runtime import StatusLine, StopEvent, run_until_signal, serve_registry
from perfd.server import ServerOptions


def status_text(registry: Registry, url: str) -> str:
    """The live one-liner: who, whether attached, and what the sources are doing."""
    status = registry.perfd_status()
    target = status.target
    who = f"pid {target.pid} (Python {target.python})" if target else "no target"
    if not registry.attached:
        return f"perfd {who} | DETACHED: {registry.detached_reason} | {url}"
    active = ",".join(name for name, src in status.sources.items() if src.active) or "none"
    sampler = status.sampler
    return (
        f"perfd {who} | sources {active} | {sampler.achieved_hz:.0f} samples/s"
        f" ({sampler.samples_failed} failed) | {url}"
    )


def serve_attached(
    pid: int,
    server: ServerOptions,
    attach: AttachOptions,
    *,
    status: bool = True,
    on_ready: "callable | None" = None,
) -> int:
    """Bind, attach to ``pid`` and serve until SIGINT/SIGTERM; detach on the way out.

    Binding comes first so a taken port fails before the target is touched;
    a bad target raises ``TargetError`` (exit 2) before anything is served.
    """
    registry = Registry()
    engine = Engine(registry, attach)
    line = StatusLine() if status else None

    async def main(stop: StopEvent) -> int:
        url = f"http://{server.host}:{server.port}"

        async def bound(port: int) -> None:
            nonlocal url
            url = f"http://{server.host}:{port}"
            await asyncio.to_thread(engine.attach, pid)  # the server keeps answering meanwhile
            click.echo(f"perfd: attached to PID {pid}; serving {url}/api/metrics (dashboard {url}/)", err=True)
            if on_ready is not None:
                on_ready(url)

        def tick() -> None:
            if line is not None:
                line.show(status_text(registry, url))

        try:
            await serve_registry(registry, server, stop, on_bound=bound, every_second=tick)
        finally:
            engine.detach("perfd stopped")
            if line is not None:
                line.close()
        return 0

    return run_until_signal(main)


@click.command()
@click.argument("pid", type=int)
@server_options
@sampling_options
def command(pid: int, **kwargs: object) -> None:
    """Attach to the CPython process PID and serve its metrics until Ctrl-C.

    Detaching leaves the target exactly as it was.
    """
    raise SystemExit(serve_attached(pid, make_server_options(**kwargs), make_attach_options(**kwargs)))
