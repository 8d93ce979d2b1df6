"""Baseline 1: the naive relay, as most people write it first.

    python -m bench.baselines.naive --bootstrap H:P --topic T --group G --url BASE

Fetch a batch, post each event in turn (`await session.post`, one at a time), commit the batch.
"""

from __future__ import annotations

import argparse

import aiohttp
from aiokafka import AIOKafkaConsumer

from bench.workload import GOAL_REACH_HEADERS, consumer_settings, goal_reach_builder


async def relay(args: argparse.Namespace) -> None:
    """Run until killed."""
    url, build = goal_reach_builder(args.url)
    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        **consumer_settings(),
    )
    await consumer.start()
    try:
        async with aiohttp.ClientSession() as session:
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    for record in records:
                        body = build(record.value)
                        if body is None:
                            continue
                        async with session.post(url, data=body, headers=GOAL_REACH_HEADERS) as r:
                            await r.read()
                if batch:
                    await consumer.commit()
    finally:
        await consumer.stop()


def main() -> None:
    """Parse the arguments and relay on uvloop."""
    parser = argparse.ArgumentParser(prog="python -m bench.baselines.naive")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--url", required=True, help="the sink's base URL")
    args = parser.parse_args()
    import uvloop

    uvloop.run(relay(args))


if __name__ == "__main__":
    main()
