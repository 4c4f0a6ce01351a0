"""The live one-line status appears on a TTY and stays off a pipe."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time


def test_status_line_on_a_tty(spawn):
    target = spawn("idle.py", version="3.12")
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "perfd", "attach", str(target.pid), "--port", "0"],
                            stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and b"sources system" not in out:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                out += os.read(master, 4096)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
        os.close(master)
    text = out.decode(errors="replace")
    assert f"pid {target.pid} (Python 3.12" in text
    assert "\r\x1b[K" in text  # rewritten in place, not scrolled
