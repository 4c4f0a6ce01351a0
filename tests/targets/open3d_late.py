"""A target that imports Open3D only when asked, like an app that loads it lazily.

READY -> (SIGUSR1) import open3d, print LOADED -> (SIGUSR1) three crop calls,
print ``RESULT <calls>`` -> idle until killed.
"""

import signal
import time

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
print("READY", flush=True)
signal.sigwait({signal.SIGUSR1})

import numpy as np  # noqa: E402
import open3d as o3d  # noqa: E402

cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.random.default_rng(1).random((5000, 3))))
box = o3d.geometry.AxisAlignedBoundingBox([0, 0, 0], [0.5, 0.5, 0.5])
print("LOADED", flush=True)
signal.sigwait({signal.SIGUSR1})
for _ in range(3):
    cloud.crop(box)
print("RESULT 3", flush=True)
while True:
    time.sleep(1)
