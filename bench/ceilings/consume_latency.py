"""Latency ceiling: produce → consume with the relay's own consumer settings, no HTTP.

    python -m bench.ceilings.consume_latency --config RELAY.yaml --group G --port P

Builds its consumer exactly as the relay builds a vendor pipeline's (`service.kafka.
consumer_kwargs` from the same config file, lenient record reader included) and polls it as the
pipeline's fetch loop does (`getmany` with the loop's `timeout_ms`, `max_records` = the config's
`pipeline.max_in_flight`, all the room an idle pipeline has). For each record it keeps
now − record timestamp and the receipt time, decoding the value as the relay does. It serves them
like the sandbox sink does (`GET /_bench/stats`, `GET /_bench/samples`), so the harness reads
this contender and the sinks alike; `stats` also says `ready` once partitions are assigned.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import signal
import time
from array import array
from pathlib import Path

from aiohttp import web
from aiokafka import AIOKafkaConsumer

from service.config import KafkaConfig, load_config
from service.delivery import pipeline
from service.events import decode_event
from service.kafka import consumer_kwargs

# aiokafka's fetch settings that decide how long a fetch waits for records; shown with the value
# in force (the relay's when consumer_kwargs sets one, aiokafka's default otherwise).
FETCH_SETTINGS = ("fetch_max_wait_ms", "fetch_min_bytes", "max_partition_fetch_bytes")


def describe_consumer(kafka: KafkaConfig) -> str:
    """The consumer settings the relay (and this ceiling) use that bear on latency."""
    kwargs = consumer_kwargs(kafka, "group")
    defaults = {
        name: param.default
        for name, param in inspect.signature(AIOKafkaConsumer.__init__).parameters.items()
        if param.default is not inspect.Parameter.empty
    }
    shown = [
        f"{name}={kwargs[name] if name in kwargs else defaults.get(name)}"
        + ("" if name in kwargs else " (aiokafka default)")
        for name in (*FETCH_SETTINGS, "session_timeout_ms", "heartbeat_interval_ms")
    ]
    return ", ".join(shown)


class Recorder:
    """Receipt times and record-timestamp → receipt delays, served like the sandbox sink's."""

    def __init__(self) -> None:
        self.ready = False
        self.count = 0
        self.first_s = 0.0
        self.last_s = 0.0
        self.receipts_s = array("d")
        self.latencies_s = array("d")

    def add(self, at_s: float, timestamp_ms: int) -> None:
        """One consumed record."""
        if not self.first_s:
            self.first_s = at_s
        self.last_s = at_s
        self.count += 1
        self.receipts_s.append(at_s)
        self.latencies_s.append(at_s - timestamp_ms / 1000)

    async def stats(self, request: web.Request) -> web.Response:
        """The sink's /_bench/stats shape: every consumed record counts as accepted."""
        return web.json_response(
            {
                "accepted": self.count,
                "refused": 0,
                "first_s": self.first_s,
                "last_s": self.last_s,
                "statuses": {},
                "refusals": [],
                "ready": self.ready,
            }
        )

    async def samples(self, request: web.Request) -> web.Response:
        """The sink's /_bench/samples shape."""
        return web.json_response(
            {"receipts_s": self.receipts_s.tolist(), "latencies_s": self.latencies_s.tolist()}
        )


async def consume(args: argparse.Namespace) -> None:
    """Consume until SIGTERM, recording each record's delay."""
    config = load_config(Path(args.config))
    timeout_ms = pipeline.POLL_TIMEOUT_MS
    max_records = config.pipeline.max_in_flight
    recorder = Recorder()
    app = web.Application()
    app.router.add_get("/_bench/stats", recorder.stats)
    app.router.add_get("/_bench/samples", recorder.samples)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    consumer = AIOKafkaConsumer(**consumer_kwargs(config.kafka, args.group))
    consumer.subscribe(list(config.kafka.topics))
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"consuming with getmany(timeout_ms={timeout_ms}, max_records={max_records})", flush=True)
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
            recorder.ready = recorder.ready or bool(consumer.assignment())
            for records in batch.values():
                for record in records:
                    with contextlib.suppress(Exception):  # the relay dead-letters these
                        decode_event(record.value)
                    recorder.add(time.time(), record.timestamp)
    finally:
        await consumer.stop()
        await runner.cleanup()


def main() -> None:
    """Parse the arguments and consume on uvloop, as the relay does."""
    parser = argparse.ArgumentParser(prog="python -m bench.ceilings.consume_latency")
    parser.add_argument("--config", required=True, help="the relay config the relay run uses")
    parser.add_argument("--group", required=True)
    parser.add_argument("--port", type=int, required=True, help="where to serve the samples")
    args = parser.parse_args()
    import uvloop

    uvloop.run(consume(args))


if __name__ == "__main__":
    main()
