"""perfd's server in its own process, serving an inflated snapshot (many nodes).

Used by the back-pressure test: frames big enough that a client which stops
reading fills its socket buffers within seconds. Prints ``READY <port>``.
"""

import asyncio
import sys
import time

from perfd.registry import Registry
from perfd.server import BROADCASTER_KEY, ServerOptions, bound_port, make_app, start_server
from perfd.snapshot import DagMetrics, DagNodeMetrics, TargetStatus


async def main(hz: float, nodes: int, stall_limit: float) -> None:
    registry = Registry()
    registry.attach(TargetStatus(pid=0, python="-", exe="-", attached_at=time.time()))
    registry.publish_dag(DagMetrics(
        nodes=[DagNodeMetrics(node_id=f"node-{i:05d}-" + "x" * 100, node_name=f"n{i}", node_type="voxel")
               for i in range(nodes)],
        total_nodes=nodes))
    options = ServerOptions(port=0, broadcast_hz=hz)
    app = make_app(registry, options)
    runner = await start_server(app, options)
    app[BROADCASTER_KEY].stall_limit = stall_limit
    print("READY", bound_port(runner), flush=True)
    while True:
        await asyncio.sleep(0.2)
        print("CLIENTS", app[BROADCASTER_KEY].client_count, flush=True)


asyncio.run(main(float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
