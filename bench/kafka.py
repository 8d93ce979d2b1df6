"""Kafka side of the harness: the backlog preload and the steady producer of the latency run."""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from service.devtools.demo import sample_event
from service.devtools.embedded import create_topics
from service.devtools.publish import record_key
from service.events import encode_event

PARTITIONS = 4
# The latency run's producer: each record leaves as soon as the sender task can send it (no
# linger), acknowledged by the leader only. Its timestamp is taken just before `send`, so
# whatever the producer waits for (linger, the previous request in flight, batching) is part of
# the measured latency, as it would be for a user's own producer.
STEADY_PRODUCER: dict[str, Any] = {"acks": 1, "linger_ms": 0}
STEADY_TICK_S = 0.005  # the producer loop wakes this often and sends every event due by then


def steady_producer_settings() -> str:
    """The latency producer's settings, aiokafka's defaults included, for the report's notes."""
    defaults = {
        name: param.default
        for name, param in inspect.signature(AIOKafkaProducer.__init__).parameters.items()
        if param.default is not inspect.Parameter.empty
    }
    shown = {k: defaults.get(k) for k in ("max_batch_size", "compression_type")}
    shown.update(STEADY_PRODUCER)
    settings = ", ".join(f"{k}={v}" for k, v in shown.items())
    return (
        f"producer: aiokafka AIOKafkaProducer({settings}); the events due are sent every "
        f"{STEADY_TICK_S * 1000:g} ms, each stamped just before its send"
    )


async def make_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> None:
    """Create a topic (and its DLQ, one partition) explicitly."""
    await create_topics(bootstrap, {topic: partitions, f"{topic}.dlq": 1})


async def preload(bootstrap: str, topic: str, lines: Iterable[bytes]) -> int:
    """Append every line as one record (key = event_id, like `publish`); return the count."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    sent = 0
    try:
        pending: list[asyncio.Future[object]] = []
        for line in lines:
            pending.append(await producer.send(topic, value=line, key=record_key(line)))
            sent += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


async def steady(
    bootstrap: str, topic: str, per_s: float, duration_s: float, seed: int = 11
) -> int:
    """Produce `per_s` events a second for `duration_s`, each stamped with its send time.

    The record timestamp (CreateTime) and the event's `occurred_at` are the same instant, so the
    sink can measure Kafka append → receipt from the goal-reach body's `CreatedOnUtc`.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **STEADY_PRODUCER)
    await producer.start()
    rng = random.Random(seed)
    sent = 0
    started = time.monotonic()
    pending: list[asyncio.Future[object]] = []
    try:
        while True:
            elapsed_s = time.monotonic() - started
            if elapsed_s >= duration_s:
                break
            due = int(elapsed_s * per_s) + 1
            while sent < due:
                now_ms = int(time.time() * 1000)
                moment = datetime.fromtimestamp(now_ms / 1000, UTC)
                value = encode_event(sample_event(rng, sent, now=moment))
                pending.append(
                    await producer.send(
                        topic, value=value, key=record_key(value), timestamp_ms=now_ms
                    )
                )
                sent += 1
            if len(pending) > 2000:
                await asyncio.gather(*pending)
                pending.clear()
            await asyncio.sleep(STEADY_TICK_S)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent
