"""The bundled demo LiDAR server: a stand-in for the apps perfd profiles.

Same shape as a real LiDAR Standalone server (SPEC §5): FastAPI + uvicorn, a
node registry, a sensor worker process feeding a multiprocessing queue, a
DataRouter that awaits each node's ``on_input``, Open3D work in threads, and
WebSocket topics. It also carries the in-process ground-truth collector the
accuracy tests compare perfd against.

perfd never imports this package; it is launched as ``python -m perfd.demo``.
Importing the package itself is cheap (no FastAPI, no Open3D).
"""
