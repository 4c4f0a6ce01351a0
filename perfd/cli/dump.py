"""``perfd dump PID``: every thread's Python stack once, like ``py-spy dump``."""

from __future__ import annotations

import json

import click

from perfd.cpython.dump import dump_json, dump_text, take_dump


@click.command()
@click.argument("pid", type=int)
@click.option("--locals", "with_locals", is_flag=True, help="Show each frame's local variables.")
@click.option("--tasks", "with_tasks", is_flag=True, help="Also list asyncio tasks with their await chains.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def command(pid: int, with_locals: bool, with_tasks: bool, as_json: bool) -> None:
    """Print the Python stack of every thread of PID, innermost frame first.

    Read-only: the target is never stopped. With --tasks the JSON becomes
    {"threads": [...], "tasks": [...]}.
    """
    sample = take_dump(pid, with_locals=with_locals, with_tasks=with_tasks)
    if as_json:
        click.echo(json.dumps(dump_json(sample), indent=2, ensure_ascii=False))
    else:
        click.echo(dump_text(sample))
