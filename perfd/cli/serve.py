"""``perfd serve``: the systemd daemon — find the target, follow it, serve forever."""

from __future__ import annotations

from pathlib import Path

import click

from perfd.cli.options import sampling_options, server_options
from perfd.config import ConfigError, Overrides, ServeConfig, load_config
from perfd.daemon.service import ServeDaemon
from perfd.runtime import run_until_signal

# click parameter -> (config section, key, how the flag's value maps onto the key)
_FLAG_KEYS = {
    "pid": ("target", "pid", None),
    "pidfile": ("target", "pidfile", None),
    "systemd_unit": ("target", "systemd_unit", None),
    "cmdline": ("target", "cmdline", None),
    "host": ("server", "host", None),
    "port": ("server", "port", None),
    "token": ("server", "token", None),
    "insecure": ("server", "insecure", None),
    "broadcast_hz": ("server", "broadcast_hz", None),
    "rate_hz": ("sampling", "rate_hz", None),
    "no_uprobes": ("sources", "uprobes", lambda v: not v),
    "uprobes_backend": ("sources", "uprobes_backend", None),
    "no_capture": ("sources", "capture", lambda v: not v),
    "profile": ("sources", "profile", None),
}


def given_flags(ctx: click.Context, values: dict) -> Overrides:
    """Only what the user actually set overrides the file: a flag's default must not."""
    out: Overrides = {}
    for name, (section, key, convert) in _FLAG_KEYS.items():
        source = ctx.get_parameter_source(name)
        if source in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT):
            value = values[name]
            out.setdefault(section, {})[key] = convert(value) if convert else value
    return out


def _require_target(config: ServeConfig) -> ServeConfig:
    if not config.target.is_set:
        raise ConfigError(
            "no target: set one of target.pid, target.pidfile, target.systemd_unit, target.cmdline "
            "in the config (or --pid/--pidfile/--systemd-unit/--cmdline)"
        )
    return config


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), envvar="PERFD_CONFIG",
              default=None, help="TOML configuration (see systemd/perfd.toml). Env: PERFD_CONFIG.")
@click.option("--pid", type=click.IntRange(min=1), default=None, help="Target PID (overrides target.pid).")
@click.option("--pidfile", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File holding the target's PID.")
@click.option("--systemd-unit", default=None, help="systemd unit whose main process is the target.")
@click.option("--cmdline", default=None, help="Regex matched against each process's full command line.")
@server_options
@sampling_options
def command(config_path: Path | None, **values: object) -> None:
    """Run as a daemon: find the target, attach, re-attach when it restarts, serve forever.

    Settings come from --config, then PERFD_<SECTION>_<KEY> environment
    variables, then flags. SIGHUP reloads the configuration. Under systemd
    (Type=notify) it reports READY=1, STATUS= and WATCHDOG=1.
    """
    flags = given_flags(click.get_current_context(), values)

    def load() -> ServeConfig:
        return _require_target(load_config(config_path, flags=flags))

    config = load()  # malformed → exit 2 naming the key, before anything binds
    daemon = ServeDaemon(config, load)
    raise SystemExit(run_until_signal(daemon.run))
