"""Baseline 2: a FastStream subscriber that posts each event, as the FastStream docs suggest.

    BENCH_BOOTSTRAP=H:P BENCH_TOPIC=T BENCH_GROUP=G BENCH_URL=BASE [BENCH_MAX_WORKERS=64] \
        python -m bench.baselines.faststream_relay

Everything at FastStream's defaults (acknowledgement, logging of each message) except the group,
reading from the earliest offset, and the same session timeouts as every other Kafka contender.
The handler takes the raw message and decodes its value with the relay's msgspec decoder, like
every other contender (FastStream's own body decoding still runs, as it does for any user). With
BENCH_MAX_WORKERS set, the subscriber gets `max_workers=N` (concurrent handlers).
"""

from __future__ import annotations

import os

import aiohttp
from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from bench.workload import GOAL_REACH_HEADERS, consumer_settings, goal_reach_builder

URL, build = goal_reach_builder(os.environ["BENCH_URL"])
MAX_WORKERS = int(os.environ["BENCH_MAX_WORKERS"]) if os.environ.get("BENCH_MAX_WORKERS") else None

broker = KafkaBroker(os.environ["BENCH_BOOTSTRAP"])
app = FastStream(broker)
http: dict[str, aiohttp.ClientSession] = {}


@app.on_startup
async def open_session() -> None:
    """One HTTP session for the app."""
    http["session"] = aiohttp.ClientSession()


@app.after_shutdown
async def close_session() -> None:
    """Close it on the way out."""
    await http["session"].close()


@broker.subscriber(
    os.environ["BENCH_TOPIC"],
    group_id=os.environ["BENCH_GROUP"],
    **consumer_settings(),
    **({"max_workers": MAX_WORKERS} if MAX_WORKERS else {}),
)
async def handle(msg: KafkaMessage) -> None:
    """Post the event to the vendor (the raw record value, decoded as every contender does)."""
    body = build(msg.body)
    if body is None:
        return
    async with http["session"].post(URL, data=body, headers=GOAL_REACH_HEADERS) as resp:
        await resp.read()


if __name__ == "__main__":
    import uvloop

    uvloop.run(app.run())
