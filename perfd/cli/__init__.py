"""The ``perfd`` command: one module per subcommand, each thin over the library.

Every deliberate error is a ``PerfdError``; here it becomes one line on
stderr and its exit code (2 for bad usage or a bad target).
"""

from __future__ import annotations

import importlib
import sys

import click

from perfd import __version__
from perfd.errors import PerfdError

# name -> module under perfd.cli that defines ``command``
COMMANDS = {
    "attach": "attach",
    "snapshot": "snapshot",
    "doctor": "doctor",
    "demo": "demo",
    "serve": "serve",
    "dump": "dump",
}


class _Group(click.Group):
    """Loads subcommands lazily (start-up stays fast) and turns PerfdError into exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = COMMANDS.get(name)
        if module is None:
            return None
        return importlib.import_module(f"perfd.cli.{module}").command

    def invoke(self, ctx: click.Context):  # noqa: ANN201 - click's signature
        try:
            return super().invoke(ctx)
        except PerfdError as e:
            click.echo(f"perfd: error: {e}", err=True)
            sys.exit(e.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="perfd")
def main() -> None:
    """Profile a running Python LiDAR server from the outside and serve
    MetricsSnapshot v1.0.0 over REST, WebSocket and Prometheus."""
