"""Target: new code objects and new threads all the time.

Every 20 ms the main thread compiles a new function ``fresh_<n>`` (a code
object never seen before) and starts a short-lived thread running it, so a
sampler keeps meeting threads and code it has not read yet.
"""

import threading
import time

print("READY", flush=True)
n = 0
while True:
    n += 1
    space: dict = {}
    exec(f"def fresh_{n}(pause):\n    import time\n    time.sleep(pause)\n", space)
    threading.Thread(target=space[f"fresh_{n}"], args=(0.05,), name=f"churn-{n}", daemon=True).start()
    time.sleep(0.02)
