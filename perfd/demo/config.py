"""Demo server settings: the scenario knobs tests and benchmarks turn."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_HZ = 5.0
DEFAULT_POINTS = 65_536
DEFAULT_PORT = 8005
DELAY_MODES = ("cpu", "sleep")


@dataclass(frozen=True)
class NodeDelay:
    """Extra work in one node: ``cpu`` spins synchronously in ``on_input``
    (blocks the event loop, as careless app code does); ``sleep`` awaits."""

    ms: float
    mode: str = "cpu"

    def __post_init__(self) -> None:
        if self.ms < 0:
            raise ValueError(f"delay must be >= 0 ms, got {self.ms}")
        if self.mode not in DELAY_MODES:
            raise ValueError(f"delay mode must be one of {DELAY_MODES}, got {self.mode!r}")


@dataclass(frozen=True)
class DemoConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    hz: float = DEFAULT_HZ
    points: int = DEFAULT_POINTS
    chain: int | None = None  # a linear DAG of N processing nodes instead of the default
    fanout: int = 2  # branches after outlier removal in the default DAG
    node_delays: dict[str, NodeDelay] = field(default_factory=dict)  # node name/slug/id -> delay
    metrics: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.hz <= 1000:
            raise ValueError(f"--hz must be in (0, 1000], got {self.hz}")
        if self.points < 16:
            raise ValueError(f"--points must be >= 16, got {self.points}")
        if self.chain is not None and self.chain < 1:
            raise ValueError(f"--chain must be >= 1, got {self.chain}")
        if self.fanout < 1:
            raise ValueError(f"--fanout must be >= 1, got {self.fanout}")


def parse_node_delay(spec: str) -> tuple[str, NodeDelay]:
    """``NAME=MS`` or ``NAME=MS:sleep`` / ``NAME=MS:cpu``."""
    name, sep, value = spec.partition("=")
    if not sep or not name:
        raise ValueError(f"node delay must look like NAME=MS[:cpu|sleep], got {spec!r}")
    ms, _, mode = value.partition(":")
    return name, NodeDelay(float(ms), mode or "cpu")


def metrics_enabled_from_env(default: bool = True) -> bool:
    """``LIDAR_ENABLE_METRICS``: on unless set to 0/false/no/off."""
    raw = os.environ.get("LIDAR_ENABLE_METRICS")
    if raw is None:
        return default
    return raw.strip().lower() not in ("0", "false", "no", "off", "")
