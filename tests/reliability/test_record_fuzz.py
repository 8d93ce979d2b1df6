"""Fuzz at the Kafka record level: thousands of seeded records varying key, value, headers,
compression codec and batch shape, produced by librdkafka (confluent-kafka) to the real broker.
The relay (a real subprocess at its defaults) delivers every valid event, dead-letters every
invalid one with its reason, skips every tombstone, answers /livez throughout and never
restarts a pipeline or a task."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import Producer

from service.delivery.dlq import parse_headers
from tests.conftest import goal_reach_vendor, read_topic, relay_config, wait_for
from tests.reliability.conftest import http_status, metric, scrape

SEED = 20261201
RECORDS = 3000
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def _key(rng: random.Random) -> bytes | None:
    return rng.choice([None, b"", b"k", rng.randbytes(rng.randint(1, 300))])


def _headers(rng: random.Random) -> list[tuple[Any, bytes | None]]:
    """Anything Kafka allows: non-UTF-8 and empty names, null values, forged relay-* headers."""
    choices: list[tuple[Any, bytes | None]] = [
        ("trace", rng.randbytes(8)),
        (b"\xff\xfe" + rng.randbytes(3), b"v"),
        ("", b"empty name"),
        ("nil", None),
        ("relay-attempts", None),
        ("relay-attempts", b"not a number"),
        ("relay-source-topic", None),
        ("relay-source-offset", b"99999999999999999999999"),
        ("relay-reason", rng.randbytes(5)),
    ]
    return rng.sample(choices, rng.randint(0, 4))


def _valid(rng: random.Random, customer: str) -> bytes:
    event = {
        "event_id": uuid.UUID(int=rng.getrandbits(128)).hex,
        "goal": "purchase",
        "occurred_at": datetime.now(UTC).isoformat(),
        "customer": {"ids": {"sustain_impact": customer}},
        "params": {"n": rng.randint(0, 10**6)},
    }
    return orjson.dumps(event)


def _invalid(rng: random.Random) -> bytes:
    return rng.choice(
        [
            b"",
            b"{",
            b"\xff\xfe\xfd",
            b'{"event_id": 5}',
            b"[" * 6000,
            orjson.dumps({"event_id": "x", "goal": "purchase"}),
            rng.randbytes(rng.randint(1, 2000)),
        ]
    )


def _records(rng: random.Random) -> tuple[list[dict[str, Any]], set[str], int, int]:
    """The records, the customers of the valid ones, and the invalid and tombstone counts."""
    records, customers, invalid, tombstones = [], set(), 0, 0
    for _ in range(RECORDS):
        roll = rng.random()
        spec: dict[str, Any] = {"key": _key(rng), "headers": _headers(rng)}
        if roll < 0.7:
            customer = str(uuid.UUID(int=rng.getrandbits(128)))
            customers.add(customer)
            spec["value"] = _valid(rng, customer)
        elif roll < 0.9:
            invalid += 1
            spec["value"] = _invalid(rng)
        else:
            tombstones += 1
            spec["value"] = None
        records.append(spec)
    return records, customers, invalid, tombstones


def _produce(
    bootstrap: str, topic: str, partitions: int, records: list[dict[str, Any]], rng: random.Random
) -> None:
    """Chunks of records, each by a producer with a random codec and batch shape."""
    pos = 0
    while pos < len(records):
        size = rng.choice([1, 7, 50, 400])
        chunk, pos = records[pos : pos + size], pos + size
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "compression.type": rng.choice(CODECS),
                "linger.ms": rng.choice([0, 5, 50]),
                "batch.num.messages": rng.choice([1, 10, 1000]),
            }
        )
        partition = rng.randrange(partitions)
        for spec in chunk:
            producer.produce(topic, partition=partition, **spec)
        assert producer.flush(30) == 0


async def test_seeded_records_of_every_shape_never_stop_the_relay(
    broker, topics, sandbox_factory, relay_process
):
    """Every valid event delivered, every invalid one in the DLQ with a reason, every tombstone
    skipped, /livez always answering, no pipeline or task ever restarted."""
    rng = random.Random(SEED)
    records, customers, invalid, tombstones = _records(rng)
    si = await sandbox_factory()
    vendor = goal_reach_vendor(si)
    relay = relay_process(relay_config(broker, topics, {"sustain_impact": vendor}))
    relay.start()
    await relay.wait_ready(60)
    live_failures: list[int | None] = []
    probing = True

    async def probe() -> None:
        while probing:
            status = await http_status(relay.http_port, "/livez")
            if status != 200:
                live_failures.append(status)
            await asyncio.sleep(0.5)

    prober = asyncio.create_task(probe())
    await asyncio.to_thread(
        _produce, broker.bootstrap, topics.source, topics.partitions, records, rng
    )
    await wait_for(lambda: len(si.accepted) >= len(customers), 120, "every valid event")
    letters = await read_topic(broker.bootstrap, topics.dlq, invalid, timeout_s=60)
    samples = await scrape(relay.http_port)
    probing = False
    await prober
    assert {p["CustomerId"] for p in si.payloads()} == customers
    assert len(si.accepted) == len(customers)
    assert len(letters) == invalid
    assert {parse_headers(r.headers).reason for r in letters} == {"invalid_event"}
    assert metric(samples, "conversion_relay_skipped_total", reason="tombstone") == tombstones
    assert metric(samples, "conversion_relay_task_failures_total") == 0
    assert metric(samples, "conversion_relay_rebalances_total") == 1
    assert live_failures == []
    assert relay.process is not None and relay.process.poll() is None
    assert "pipeline failed" not in relay.logs()
