"""Ceiling: the relay's H1Transport (asyncio.Protocol + httptools) posting the goal-reach bodies.

    python -m bench.ceilings.h1_client --url BASE --events N --concurrency C

The same shape as `bench.ceilings.http_client`: the bodies are built first (from the same sample
events, with the relay's adapter), then C tasks share one H1Transport (a pool of C keep-alive
connections) and send them as fast as the sink answers. The harness measures rate and CPU from
outside, exactly as for every other contender.
"""

from __future__ import annotations

import argparse
import asyncio

from bench.workload import GOAL_REACH_HEADERS, goal_reach_builder
from service.core.exchange import VendorRequest
from service.delivery.h1 import H1Transport
from service.devtools.demo import sample_lines


async def post_all(args: argparse.Namespace) -> None:
    """Send every body with `args.concurrency` concurrent requests."""
    url, build = goal_reach_builder(args.url)
    requests = [
        VendorRequest("POST", url, GOAL_REACH_HEADERS, b)
        for b in map(build, sample_lines(args.events))
        if b is not None
    ]
    pending = iter(requests)
    transport = H1Transport(
        "sink", pool_size=args.concurrency, timeout_s=10.0, connect_timeout_s=5.0
    )

    async def worker() -> None:
        for request in pending:
            response = await transport.send(request)
            if response.status != 200:
                print(f"unexpected status {response.status}", flush=True)

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    print(f"posted {len(requests)} requests; waiting to be stopped", flush=True)
    # Like every other contender, it runs until the harness stops it (CPU and RSS are read then).
    try:
        await asyncio.Event().wait()
    finally:
        await transport.aclose()


def main() -> None:
    """Parse the arguments and send on uvloop."""
    parser = argparse.ArgumentParser(prog="python -m bench.ceilings.h1_client")
    parser.add_argument("--url", required=True, help="the sink's base URL")
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    import uvloop

    uvloop.run(post_all(args))


if __name__ == "__main__":
    main()
