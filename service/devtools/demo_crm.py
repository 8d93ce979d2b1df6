"""Dev mode's own-JSON stream: a CRM's orders and leads in its own JSON shape, the one
docs/guide/producers.md's CRM example shows; the demo config's `inputs.crm` maps them to canonical
events with the guide's mapping (plus the other vendors' ids, so every vendor gets them)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from service.devtools.demo import sample_event

# How the demo config (dev_config.yaml, inputs.crm) maps a CRM record: the guide's CRM mapping,
# with `customer.ids` copied from the buyer so the vendors other than sustain_impact match too.
CRM_FIELDS: dict[str, Any] = {
    "event_id": "$.order.uuid",
    "goal": {"from": "$.type", "map": {"order.paid": "purchase", "lead.created": "lead"}},
    "occurred_at": "$.ts | epoch_ms",
    "value": "$.order.total_cents / 100",
    "currency": {"from": "$.order.currency", "default": "EUR"},
    "customer.email": "$.buyer.email",
    "customer.ids": "$.buyer.ids",
    "customer.ids.sustain_impact": "$.buyer.crm_id",
    "params": "$.properties",
    "params.first_sku": "$.order.items[0].sku",
    "attributes.source": "crm",
}
PLANS = ("free", "pro", "team")


def sample_crm_record(rng: random.Random, index: int) -> dict[str, Any]:
    """A paid order (two in three) or a new lead in the CRM's shape, with the demo's vendor ids."""
    paid = index % 3 != 2
    # sample_event's goal cycles purchase, signup, lead: index * 3 (+ 2) picks a purchase (a lead).
    event = sample_event(rng, index * 3 if paid else index * 3 + 2)
    ids = dict(event.customer.ids)
    crm_id = ids.pop("sustain_impact")
    order: dict[str, Any] = {"uuid": event.event_id}
    if paid:  # no currency: the mapping's default (EUR) stands in, as in the guide
        order["total_cents"] = round((event.value or 0) * 100)
        order["items"] = [{"sku": f"SKU-{index % 7 + 1}", "qty": 1 + index % 3}]
    return {
        "type": "order.paid" if paid else "lead.created",
        "ts": int(datetime.now(UTC).timestamp() * 1000),
        "order": order,
        "buyer": {"email": event.customer.email, "crm_id": crm_id, "ids": ids},
        "properties": {"plan": PLANS[index % len(PLANS)], "coupon": "WINTER"},
        "internal": {"trace": f"crm-{index}"},  # no field reads it: the decode skips it
    }


async def crm_traffic(bootstrap: str, topic: str, per_s: float, stop: asyncio.Event) -> None:
    """Publish `per_s` CRM records a second, keyed by the order's uuid, until `stop` is set."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    rng = random.Random()
    index = 0
    try:
        while not stop.is_set():
            index += 1
            record = sample_crm_record(rng, index)
            await producer.send(
                topic, value=orjson.dumps(record), key=record["order"]["uuid"].encode()
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0 / per_s)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 0.5)
