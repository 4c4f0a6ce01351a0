"""``python -m perfd.demo``: run the demo LiDAR server alone.

Kept light at import: the sensor process is spawned, and a spawned child
re-imports this module as ``__mp_main__``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from perfd.demo.config import DEFAULT_HZ, DEFAULT_POINTS, DEFAULT_PORT, DemoConfig, parse_node_delay


def parse_args(argv: list[str] | None = None) -> tuple[DemoConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m perfd.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--hz", type=float, default=DEFAULT_HZ, help="sensor frame rate")
    parser.add_argument("--points", type=int, default=DEFAULT_POINTS, help="points per frame")
    parser.add_argument("--chain", type=int, default=None, help="a linear DAG of N processing nodes")
    parser.add_argument("--fanout", type=int, default=2, help="branches after outlier removal")
    parser.add_argument("--node-delay-ms", action="append", default=[], metavar="NAME=MS[:cpu|sleep]",
                        help="extra work in one node: sync CPU spin (default) or awaited sleep")
    parser.add_argument("--seed", type=int, default=0)
    metrics = parser.add_mutually_exclusive_group()
    metrics.add_argument("--metrics", dest="metrics", action="store_true", default=None,
                         help="ground truth on (default unless LIDAR_ENABLE_METRICS=0)")
    metrics.add_argument("--no-metrics", dest="metrics", action="store_false")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    try:
        delays = dict(parse_node_delay(spec) for spec in args.node_delay_ms)
        if args.metrics is None:
            from perfd.demo.config import metrics_enabled_from_env
            args.metrics = metrics_enabled_from_env()
        config = DemoConfig(host=args.host, port=args.port, hz=args.hz, points=args.points, chain=args.chain,
                            fanout=args.fanout, node_delays=delays, metrics=args.metrics, seed=args.seed)
    except ValueError as e:
        parser.error(str(e))
    return config, args


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal
    # into the handler it found: make that a normal exit, so atexit cleanup
    # (the sensor queue's semaphores) runs and a stop is not reported as a crash.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_cleanly)
    config, args = parse_args(argv)
    # Settled before the app modules import the collector singleton.
    os.environ["LIDAR_ENABLE_METRICS"] = "1" if config.metrics else "0"
    import uvicorn

    from perfd.demo.app import create_app
    from perfd.demo.metrics.arrival import ArrivalStampingProtocol

    try:
        app = create_app(config)
    except ValueError as e:  # e.g. a --node-delay-ms that names no node
        print(f"python -m perfd.demo: error: {e}", file=sys.stderr)
        return 2
    print(f"demo: serving http://{config.host}:{config.port} (pid {os.getpid()})", flush=True)
    # With the ground truth on, its endpoint clock starts when a request's bytes arrive.
    http = ArrivalStampingProtocol if config.metrics else "auto"
    uvicorn.run(app, host=config.host, port=config.port, log_level=args.log_level, lifespan="on", http=http)
    return 0


if __name__ == "__main__":
    sys.exit(main())
