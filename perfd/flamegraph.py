"""Profile exports: collapsed stacks (flamegraph.pl, py-spy, the dashboard) and speedscope."""

from __future__ import annotations

FORMATS = ("collapsed", "speedscope")
SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"


def speedscope(name: str, stacks: dict[str, int]) -> dict:
    """A speedscope "sampled" profile of collapsed ``stacks`` (outermost frame first)."""
    frames: list[dict] = []
    index: dict[str, int] = {}
    samples, weights = [], []
    for stack, count in sorted(stacks.items()):
        ids = []
        for frame in stack.split(";"):
            if frame not in index:
                index[frame] = len(frames)
                frames.append({"name": frame})
            ids.append(index[frame])
        samples.append(ids)
        weights.append(count)
    return {
        "$schema": SPEEDSCOPE_SCHEMA,
        "exporter": "perfd",
        "name": name,
        "shared": {"frames": frames},
        "profiles": [{"type": "sampled", "name": name, "unit": "none", "startValue": 0,
                      "endValue": sum(weights), "samples": samples, "weights": weights}],
    }
