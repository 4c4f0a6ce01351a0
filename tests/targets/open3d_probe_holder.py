"""A stand-in perfd that attaches uprobes to a target and then hangs.

Used to test what happens when perfd is SIGKILLed with probes live: prints
``READY <json>`` with its backend and the ids of the BPF programs it holds.
"""

import json
import os
import signal
import sys

from perfd.registry import Registry
from perfd.uprobes import UprobeSource

pid, backend = int(sys.argv[1]), sys.argv[2]
source = UprobeSource(pid, Registry(), backend=backend)
if not source.start():
    print("FAILED", source.registry.perfd_status().sources["uprobes"].reason, flush=True)
    sys.exit(1)
prog_ids = []
for fd in os.listdir("/proc/self/fdinfo"):
    try:
        for line in open(f"/proc/self/fdinfo/{fd}"):
            if line.startswith("prog_id:"):
                prog_ids.append(int(line.split()[1]))
    except OSError:
        pass
print("READY " + json.dumps({"backend": source.backend.name, "prog_ids": sorted(set(prog_ids))}), flush=True)
while True:
    signal.pause()
