"""Run ``perfd`` itself as a subprocess and talk to it over real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import jsonschema

PERFD = [sys.executable, "-m", "perfd"]
_SERVING = re.compile(r"serving (http://\S+?)/api/metrics")


def run_perfd(*args: str, timeout: float = 30.0, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PERFD, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


class PerfdServer:
    """``perfd attach PID`` on a free port; ``url`` once it serves."""

    def __init__(self, pid: int, *extra: str, env: dict | None = None) -> None:
        self.proc = subprocess.Popen(
            [*PERFD, "attach", str(pid), "--port", "0", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.stderr_lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.stderr_lines.append(line)
            match = _SERVING.search(line)
            if match:
                self.url = match.group(1)
                return
        self.stop()
        raise RuntimeError(f"perfd did not start: {''.join(self.stderr_lines)}{self.proc.stderr.read()}")

    def get(self, path: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
        req = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def get_json(self, path: str, headers: dict | None = None) -> tuple[int, dict]:
        status, body, _ = self.get(path, headers)
        return status, json.loads(body)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")

    def terminate(self, timeout: float = 5.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        return rc, time.monotonic() - t0

    def stop(self) -> None:
        """SIGTERM, the way systemd stops perfd (it detaches: probes, sockets
        go); SIGKILL only when it hangs, which would leave tracefs probes behind."""
        if self.proc.poll() is None:
            try:
                self.terminate()
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def __enter__(self) -> "PerfdServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def text_frames(ws, seconds: float):  # noqa: ANN001 - aiohttp ClientWebSocketResponse
    """Yield the text frames ``ws`` receives until ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await ws.receive(timeout=left)
        except asyncio.TimeoutError:
            return
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        yield msg.data


def validate(instance: dict, schema: dict, definition: str | None = None) -> None:
    """Validate against the whole schema or one of its ``$defs``."""
    if definition is not None:
        schema = {"$ref": f"#/$defs/{definition}", "$defs": schema["$defs"]}
    jsonschema.Draft202012Validator(schema).validate(instance)


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")
