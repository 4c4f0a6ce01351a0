"""Open3D operation timings from uprobes (bcc, or tracefs without a compiler)."""

from perfd.uprobes.aggregate import UNATTRIBUTED
from perfd.uprobes.doctor import BackendCheck, check_backends
from perfd.uprobes.events import OpEvent
from perfd.uprobes.source import BACKENDS, UprobeSource, UprobeStatus

__all__ = ["UprobeSource", "UprobeStatus", "OpEvent", "UNATTRIBUTED", "BACKENDS", "BackendCheck", "check_backends"]
