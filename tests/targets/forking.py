"""A target that forks a worker with the same command line (like a server and its workers).

Prints ``READY <child pid>`` once the child runs; the child exits with its parent.
"""

import os
import signal
import sys
import time

parent = os.getpid()
child = os.fork()
if child == 0:
    while os.getppid() == parent:
        time.sleep(0.05)
    sys.exit(0)
signal.signal(signal.SIGTERM, lambda *_: (os.kill(child, signal.SIGKILL), sys.exit(0)))
print(f"READY {child}", flush=True)
while True:
    time.sleep(0.1)
