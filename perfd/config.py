"""The ``perfd serve`` configuration: a TOML file, environment overrides, CLI flags.

Precedence, lowest first: defaults < the TOML file < ``PERFD_<SECTION>_<KEY>``
environment variables (plus the established ``PERFD_TOKEN`` and
``METRICS_BROADCAST_HZ``) < command-line flags. Every knob of ``perfd attach``
has a key here. Validation happens on the merged result so an error can name
the exact key and where it came from; a malformed config is a ``UsageError``
(exit 2) at start-up and a rejected reload (the running config stays) later.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from perfd.engine import UPROBE_BACKENDS, AttachOptions
from perfd.errors import UsageError
from perfd.server import DEFAULT_HOST, DEFAULT_PORT, ServerOptions, is_loopback

ENV_PREFIX = "PERFD_"
# Variables perfd already honoured before the config file existed: (section, key).
LEGACY_ENV = {"PERFD_TOKEN": ("server", "token"), "METRICS_BROADCAST_HZ": ("server", "broadcast_hz")}


class ConfigError(UsageError):
    """The configuration is unreadable or invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetConfig(_Section):
    """How to find the target; every selector that is set is tried in this order."""

    pid: int | None = Field(None, ge=1)
    pidfile: Path | None = None
    systemd_unit: str | None = Field(None, min_length=1)
    cmdline: str | None = Field(None, min_length=1)

    @field_validator("cmdline")
    @classmethod
    def _is_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f"not a valid regular expression: {e}") from None
        return value

    @property
    def is_set(self) -> bool:
        return any(v is not None for v in (self.pid, self.pidfile, self.systemd_unit, self.cmdline))


class ServerConfig(_Section):
    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    token: str | None = Field(None, min_length=1)
    insecure: bool = False
    broadcast_hz: float = Field(1.0, gt=0, le=100)


class SamplingConfig(_Section):
    rate_hz: float = Field(250.0, ge=1, le=5000)
    system_hz: float = Field(2.0, gt=0, le=100)


class SourcesConfig(_Section):
    uprobes: bool = True
    uprobes_backend: str = "auto"
    capture: bool = True
    profile: Path | None = None

    @field_validator("uprobes_backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in UPROBE_BACKENDS:
            raise ValueError(f"must be one of {', '.join(UPROBE_BACKENDS)}")
        return value


class ServeConfig(_Section):
    target: TargetConfig = Field(default_factory=TargetConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    sources: SourcesConfig = Field(default_factory=SourcesConfig)

    @model_validator(mode="after")
    def _safe_bind(self) -> "ServeConfig":
        s = self.server
        if not is_loopback(s.host) and not s.token and not s.insecure:
            raise ValueError(
                f"server.host {s.host} is not loopback: set server.token (clients send "
                "'Authorization: Bearer TOKEN') or server.insecure = true"
            )
        return self

    def server_options(self) -> ServerOptions:
        s = self.server
        return ServerOptions(host=s.host, port=s.port, token=s.token, insecure=s.insecure,
                             broadcast_hz=s.broadcast_hz)

    def attach_options(self) -> AttachOptions:
        src = self.sources
        return AttachOptions(
            rate_hz=self.sampling.rate_hz,
            system_hz=self.sampling.system_hz,
            uprobes=src.uprobes,
            uprobes_backend=src.uprobes_backend,
            capture=src.capture,
            profile=str(src.profile) if src.profile else None,
        )


SECTIONS: dict[str, type[_Section]] = {
    "target": TargetConfig,
    "server": ServerConfig,
    "sampling": SamplingConfig,
    "sources": SourcesConfig,
}

Overrides = dict[str, dict[str, Any]]  # section -> key -> value


def env_overrides(environ: Mapping[str, str]) -> tuple[Overrides, dict[tuple[str, str], str]]:
    """``PERFD_SERVER_PORT=9200`` → ``{"server": {"port": "9200"}}``, plus which variable set each key."""
    found: Overrides = {}
    origin: dict[tuple[str, str], str] = {}
    for name, value in environ.items():
        if value == "":
            continue  # an empty Environment= line in a unit means "not set"
        if name in LEGACY_ENV:
            section, key = LEGACY_ENV[name]
        elif name.startswith(ENV_PREFIX):
            rest = name[len(ENV_PREFIX):].lower()
            section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
            if section is None:
                continue  # PERFD_REQUIRE_PRIVILEGED and friends are not config
            key = rest[len(section) + 1:]
        else:
            continue
        found.setdefault(section, {})[key] = value
        origin[(section, key)] = name
    return found, origin


def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"config {path}: cannot read: {e.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path}: not valid TOML: {e}") from None


def load_config(
    path: Path | str | None,
    *,
    environ: Mapping[str, str] | None = None,
    flags: Overrides | None = None,
) -> ServeConfig:
    """Merge file, environment and flags, then validate; ``ConfigError`` names the bad key."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = read_toml(Path(path)) if path is not None else {}
    origin_of: dict[tuple[str, str], str] = {}
    file_label = f"config {path}" if path is not None else "config"
    for section, keys in data.items():
        if isinstance(keys, dict):
            for key in keys:
                origin_of[(section, key)] = file_label
    env, env_origin = env_overrides(environ)
    origin_of.update(env_origin)
    for label, layer in (("env", env), ("flag", flags or {})):
        for section, keys in layer.items():
            merged = data.setdefault(section, {})
            if not isinstance(merged, dict):
                break  # the file's bad shape is reported by validation below
            for key, value in keys.items():
                merged[key] = value
                if label == "flag":
                    origin_of[(section, key)] = f"--{key.replace('_', '-')}"
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, file_label, origin_of)) from None


def _describe(error: ValidationError, file_label: str, origin_of: dict[tuple[str, str], str]) -> str:
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join(loc) or "(top level)"
    where = origin_of.get(tuple(loc[:2]), file_label) if len(loc) >= 2 else file_label
    if first["type"] == "extra_forbidden":
        known = SECTIONS.get(loc[0]).model_fields if len(loc) == 2 and loc[0] in SECTIONS else SECTIONS
        return f"{where}: unknown key {key} (known: {', '.join(known)})"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "value_error" and not loc:  # whole-config rules name their own keys
        return f"{where}: {msg}"
    return f"{where}: {key}: {msg}"
