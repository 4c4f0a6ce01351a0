"""``perfd doctor [PID] [--json]``: which sources can run here and how to fix the rest."""

from __future__ import annotations

import json
import sys

import click

from perfd.doctor import run_checks


@click.command(name="doctor")
@click.argument("pid", type=click.IntRange(min=1), required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def command(pid: int | None, as_json: bool) -> None:
    """Check ptrace-read, BPF/bcc, kernel headers, tracefs, AF_PACKET and setns
    (against PID when given) and print the exact fix for each that fails.

    Exit code 0 when every required check passes, 1 otherwise, 2 when PID does
    not exist.
    """
    report = run_checks(pid)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(report.render())
    sys.exit(0 if report.ok else 1)
