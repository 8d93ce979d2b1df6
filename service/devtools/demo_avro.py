"""Dev mode's Avro stream: a shop backend's orders in its own Avro schema, registered with the
stand-in Schema Registry and framed as confluent-kafka's AvroSerializer frames them; the demo
config's `inputs.shop` maps them to canonical events (docs/guide/producers.md)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from service.config import SchemaRegistryConfig
from service.core.registry import avro_value, parse_for_writing
from service.delivery.registry import SchemaRegistryClient
from service.devtools.demo import sample_event

ORDER_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [
        {"name": "uuid", "type": "string"},
        {"name": "type", "type": "string"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "total_cents", "type": "long"},
        {"name": "currency", "type": "string"},
        {
            "name": "buyer",
            "type": {
                "type": "record",
                "name": "Buyer",
                "fields": [
                    {"name": "email", "type": "string"},
                    {"name": "ids", "type": {"type": "map", "values": "string"}},
                ],
            },
        },
    ],
}

# How the demo config (dev_config.yaml, inputs.shop) maps an order; the bench reads it too.
ORDER_FIELDS: dict[str, Any] = {
    "event_id": "$.uuid",
    "goal": {"from": "$.type", "map": {"order.paid": "purchase"}},
    "occurred_at": "$.ts | epoch_ms",
    "value": "$.total_cents / 100",
    "currency": "$.currency",
    "customer.email": "$.buyer.email",
    "customer.ids": "$.buyer.ids",
}


def sample_order(rng: random.Random, index: int) -> dict[str, Any]:
    """A paid order in the shop's shape, with the demo's vendor ids (as `sample_event` has)."""
    event = sample_event(rng, index * 3)  # index * 3: a purchase, with a value
    return {
        "uuid": event.event_id,
        "type": "order.paid",
        "ts": int(datetime.now(UTC).timestamp() * 1000),
        "total_cents": round((event.value or 0) * 100),
        "currency": "EUR",
        "buyer": {"email": event.customer.email or "", "ids": dict(event.customer.ids)},
    }


async def avro_traffic(
    bootstrap: str, topic: str, registry_url: str, per_s: float, stop: asyncio.Event
) -> None:
    """Register the schema under `<topic>-value`, then publish `per_s` orders a second."""
    client = SchemaRegistryClient(SchemaRegistryConfig(url=registry_url))
    try:
        schema_id = await client.register(f"{topic}-value", orjson.dumps(ORDER_SCHEMA).decode())
    finally:
        await client.aclose()
    parsed = parse_for_writing(ORDER_SCHEMA)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    rng = random.Random()
    index = 0
    try:
        while not stop.is_set():
            index += 1
            await producer.send(
                topic, value=avro_value(schema_id, parsed, sample_order(rng, index))
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0 / per_s)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 0.5)
