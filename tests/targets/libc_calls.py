"""A target that calls 20 side-effect-free libc functions on demand: exact ground truth for uprobes.

Prints ``READY`` then ``FUNCS <name,...>``. Each SIGUSR1 calls every
function ``argv[1]`` times (through ctypes: one libc call each) and answers
``DONE``. The functions are chosen so that none
calls another one of the set (``getpgrp`` is left out: glibc implements it
as ``getpgid(0)``).
"""

import ctypes
import signal
import sys

libc = ctypes.CDLL("libc.so.6", use_errno=True)
u = ctypes.c_uint()
NULL = None

CALLS = {
    "getpid": lambda: libc.getpid(),
    "getppid": lambda: libc.getppid(),
    "gettid": lambda: libc.gettid(),
    "getuid": lambda: libc.getuid(),
    "geteuid": lambda: libc.geteuid(),
    "getgid": lambda: libc.getgid(),
    "getegid": lambda: libc.getegid(),
    "getsid": lambda: libc.getsid(0),
    "getpgid": lambda: libc.getpgid(0),
    "getpriority": lambda: libc.getpriority(0, 0),
    "sched_yield": lambda: libc.sched_yield(),
    "sched_getscheduler": lambda: libc.sched_getscheduler(0),
    "sched_get_priority_max": lambda: libc.sched_get_priority_max(0),
    "sched_get_priority_min": lambda: libc.sched_get_priority_min(0),
    "getpagesize": lambda: libc.getpagesize(),
    "getdtablesize": lambda: libc.getdtablesize(),
    "getauxval": lambda: libc.getauxval(6),  # AT_PAGESZ
    "getgroups": lambda: libc.getgroups(0, NULL),
    "getcpu": lambda: libc.getcpu(ctypes.byref(u), NULL),
    "getresuid": lambda: libc.getresuid(ctypes.byref(u), ctypes.byref(u), ctypes.byref(u)),
}

iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 100
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
print("READY", flush=True)
print("FUNCS " + ",".join(CALLS), flush=True)
fns = list(CALLS.values())
while True:
    signal.sigwait({signal.SIGUSR1})
    for _ in range(iterations):
        for fn in fns:
            fn()
    print("DONE", flush=True)
