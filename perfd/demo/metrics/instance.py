"""The process-wide ground-truth collector, chosen once from ``LIDAR_ENABLE_METRICS``.

The demo's entry point settles the variable before anything imports this.
"""

from __future__ import annotations

from perfd.demo.config import metrics_enabled_from_env
from perfd.demo.metrics.collector import DisabledCollector, GroundTruthCollector

collector: GroundTruthCollector = GroundTruthCollector() if metrics_enabled_from_env() else DisabledCollector()

