"""Ceiling 2: a plain aiohttp client posting the goal-reach bodies to the sink, no Kafka.

    python -m bench.ceilings.http_client --url BASE --events N --concurrency C

The bodies are built first (from the same sample events, with the relay's adapter), then C
tasks share one ClientSession (connection pool of C) and post them as fast as the sink answers.
The harness measures rate and CPU from outside, exactly as for every other contender.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp

from bench.workload import GOAL_REACH_HEADERS, goal_reach_builder
from service.devtools.demo import sample_lines


async def post_all(args: argparse.Namespace) -> None:
    """Post every body with `args.concurrency` concurrent requests."""
    url, build = goal_reach_builder(args.url)
    bodies = [b for b in map(build, sample_lines(args.events)) if b is not None]
    pending = iter(bodies)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for body in pending:
                async with session.post(url, data=body, headers=GOAL_REACH_HEADERS) as resp:
                    await resp.read()
                    if resp.status != 200:
                        print(f"unexpected status {resp.status}", flush=True)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    print(f"posted {len(bodies)} requests; waiting to be stopped", flush=True)
    # Like every other contender, it runs until the harness stops it (CPU and RSS are read then).
    await asyncio.Event().wait()


def main() -> None:
    """Parse the arguments and post on uvloop."""
    parser = argparse.ArgumentParser(prog="python -m bench.ceilings.http_client")
    parser.add_argument("--url", required=True, help="the sink's base URL")
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    import uvloop

    uvloop.run(post_all(args))


if __name__ == "__main__":
    main()
