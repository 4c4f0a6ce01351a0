"""The sensor worker process: synthetic LiDAR frames into the data queue.

A separate *process* like a real driver, so frames cross a
``multiprocessing.Queue`` and the app's queue depth is real. Frames are
N×3 float32: a noisy ground plane, a few boxes (cars, posts) drifting
slowly, and scattered noise points. Imports numpy only.
"""

from __future__ import annotations

import os
import queue
import signal
import time
from dataclasses import dataclass

import numpy as np

GROUND_SHARE = 0.6
NOISE_SHARE = 0.02
N_BOXES = 8
EXTENT_M = 30.0


@dataclass
class SceneGenerator:
    points: int
    seed: int = 0

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._centers = self._rng.uniform(-EXTENT_M * 0.8, EXTENT_M * 0.8, (N_BOXES, 2))
        self._sizes = self._rng.uniform(0.8, 3.0, (N_BOXES, 3))
        self._velocity = self._rng.uniform(-0.3, 0.3, (N_BOXES, 2))

    def frame(self) -> np.ndarray:
        rng = self._rng
        n_ground = int(self.points * GROUND_SHARE)
        n_noise = int(self.points * NOISE_SHARE)
        n_boxes = self.points - n_ground - n_noise
        out = np.empty((self.points, 3), dtype=np.float32)
        out[:n_ground, :2] = rng.uniform(-EXTENT_M, EXTENT_M, (n_ground, 2))
        out[:n_ground, 2] = rng.normal(0.0, 0.03, n_ground)
        per_box = np.full(N_BOXES, n_boxes // N_BOXES)
        per_box[: n_boxes % N_BOXES] += 1
        at = n_ground
        for center, size, count in zip(self._centers, self._sizes, per_box):
            block = out[at : at + count]
            block[:, :2] = center + rng.uniform(-1.0, 1.0, (count, 2)) * size[:2]
            block[:, 2] = rng.uniform(0.0, size[2], count)
            at += count
        out[at:] = rng.uniform((-EXTENT_M * 1.3, -EXTENT_M * 1.3, -2.0), (EXTENT_M * 1.3, EXTENT_M * 1.3, 8.0),
                               (n_noise, 3))
        self._centers += self._velocity
        bounce = np.abs(self._centers) > EXTENT_M * 0.8
        self._velocity[bounce] *= -1
        return out


def sensor_worker(data_queue, hz: float, points: int, seed: int = 0) -> None:  # noqa: ANN001 - mp.Queue
    """Produce frames at ``hz`` until the parent goes away.

    A full queue drops the frame (a real driver cannot wait either); the
    paced schedule never drifts because deadlines advance by the period.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the server's to handle
    parent = os.getppid()
    scene = SceneGenerator(points, seed)
    period = 1.0 / hz
    deadline = time.monotonic()
    frame_id = 0
    while os.getppid() == parent:
        deadline += period
        payload = {"points": scene.frame(), "frame_id": frame_id, "timestamp": time.time()}
        try:
            data_queue.put(payload, timeout=period)
        except queue.Full:
            pass
        frame_id += 1
        delay = deadline - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -1.0:  # far behind (machine stalled): resynchronise instead of bursting
            deadline = time.monotonic()
