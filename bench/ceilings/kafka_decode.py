"""Ceiling 1: aiokafka consume + msgspec decode of every record, nothing else.

    python -m bench.ceilings.kafka_decode --bootstrap H:P --topic T --group G --events N

Consumes N records (fresh consumer group), decodes each with the relay's own msgspec decoder and
prints one JSON line: records/s, CPU µs per record and peak RSS, measured from the arrival of
the first fetched batch (group join and the first fetch are not counted) to the N-th record.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from bench.workload import consumer_settings
from service.events import decode_event


def _hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


async def consume(args: argparse.Namespace) -> dict[str, float]:
    """Consume and decode `args.events` records; return the figures."""
    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        **consumer_settings(),
    )
    await consumer.start()
    try:
        count = 0
        started = cpu_started = 0.0
        while count < args.events:
            batch = await consumer.getmany(timeout_ms=500)
            if batch and not started:
                started, cpu_started = time.perf_counter(), time.process_time()
            for records in batch.values():
                for record in records:
                    decode_event(record.value)
                count += len(records)
        elapsed_s = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
    finally:
        await consumer.stop()
    measured = count
    return {
        "events": count,
        "measured": measured,
        "elapsed_s": elapsed_s,
        "events_per_s": measured / elapsed_s if elapsed_s > 0 else 0.0,
        "cpu_s": cpu_s,
        "cpu_us_per_event": cpu_s / measured * 1e6 if measured else 0.0,
        "peak_rss_bytes": _hwm_bytes(),
    }


def main() -> None:
    """Parse the arguments, run on uvloop, print the JSON result."""
    parser = argparse.ArgumentParser(prog="python -m bench.ceilings.kafka_decode")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--events", type=int, required=True)
    args = parser.parse_args()
    import uvloop

    print("RESULT " + json.dumps(uvloop.run(consume(args))), flush=True)


if __name__ == "__main__":
    main()
