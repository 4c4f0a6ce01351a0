"""Runs a few threads, then exec()s itself into reader_stacks.py (same PID)."""

import os
import sys
import threading
import time

threading.Thread(target=lambda: time.sleep(3600), daemon=True).start()
print("READY", flush=True)
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)
script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reader_stacks.py")
os.execv(sys.executable, [sys.executable, script])
