"""Find and remove tracefs probes left behind by a perfd that died (SIGKILL).

A killed perfd cannot clean up, and its ``uprobe_events`` definitions outlive
it (BPF programs and perf-event uprobes do not: the kernel frees them with the
process's file descriptors). The owner's PID is in every name perfd creates,
so a name whose owner is no longer running is stale.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from perfd.uprobes.tracefs import (
    GROUP_PREFIX,
    INSTANCE_PREFIX,
    TracefsError,
    remove_events,
    remove_instance,
    tracefs_root,
    write_control,
)

# perfd's own group, or libbcc's: when it cannot attach through the perf PMU it
# writes uprobe_events itself, under group "uprobes", with the event name
# perfd gave it ("perfd_<owner>_<target>_p0" + "_bcc_<pid>").
_GROUP = re.compile(
    rf"^[pr]:(?:(?P<group>{GROUP_PREFIX}(?P<owner>\d+)_\d+)/(?P<event>\w+)"
    rf"|(?P<bcc_group>uprobes)/(?P<bcc_event>{GROUP_PREFIX}(?P<bcc_owner>\d+)_\d+_\w+))\s"
)
_INSTANCE = re.compile(rf"^{INSTANCE_PREFIX}(?P<owner>\d+)-\d+$")


@dataclass
class StaleProbes:
    events: list[str] = field(default_factory=list)  # "group/event"
    instances: list[Path] = field(default_factory=list)


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def find_stale(root: Path | None = None) -> StaleProbes:
    """perfd probes and instances whose owning perfd is not running."""
    root = root or tracefs_root()
    found = StaleProbes()
    try:
        definitions = (root / "uprobe_events").read_text().splitlines()
    except OSError:
        definitions = []
    for line in definitions:
        m = _GROUP.match(line)
        if not m:
            continue
        if m["group"] and not _alive(int(m["owner"])):
            found.events.append(f"{m['group']}/{m['event']}")
        elif m["bcc_group"] and not _alive(int(m["bcc_owner"])):
            found.events.append(f"{m['bcc_group']}/{m['bcc_event']}")
    instances = root / "instances"
    if instances.is_dir():
        for entry in sorted(instances.iterdir()):
            m = _INSTANCE.match(entry.name)
            if m and not _alive(int(m["owner"])):
                found.instances.append(entry)
    return found


def remove_stale(root: Path | None = None) -> StaleProbes:
    """Remove stale perfd probes; returns what was removed. Instances go first:
    removing an instance disables its events, which lets the definitions go."""
    root = root or tracefs_root()
    stale = find_stale(root)
    removed = StaleProbes()
    for inst in stale.instances:
        for enable in inst.glob(f"events/{GROUP_PREFIX}*/enable"):
            try:
                write_control(enable, "0")
            except TracefsError:
                pass
        try:
            remove_instance(inst)
            removed.instances.append(inst)
        except TracefsError:
            pass
    failed = set(remove_events(root, stale.events))
    removed.events = [e for e in stale.events if e not in failed]
    return removed
