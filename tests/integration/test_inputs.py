"""A producer's own events, end to end on the real broker: a CRM's JSON topic, a CloudEvents
topic (structured and binary) and a topic whose event id, time and customer come from the Kafka
record's key, timestamp and headers (`@` paths), mapped by `inputs:` and delivered to a strict
sandbox beside the canonical topic; a record whose mapping fails is dead-lettered as
invalid_event naming the field."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaProducer

from service.devtools.embedded import create_topics
from tests.conftest import GOAL_PURCHASE, goal_reach_vendor, read_topic, relay_config, wait_for

INPUTS = {
    "crm": {
        "topic": "",  # set per test: the topics are unique
        "format": "json",
        "fields": {
            "event_id": "$.order.uuid",
            "goal": {"from": "$.type", "map": {"order.paid": "purchase"}},
            "occurred_at": "$.ts | epoch_ms",
            "value": "$.order.total_cents / 100",
            "currency": {"from": "$.order.currency", "default": "EUR"},
            "customer.ids.sustain_impact": "$.customer.crm_id",
            "params.total": "$.order.total_cents / 100",
        },
    },
    "platform": {
        "topic": "",
        "format": "cloudevents",
        "fields": {
            "params.amount": "$.data.amount",
            "customer.ids.sustain_impact": "$.subject",
        },
    },
    "keyed": {
        "topic": "",
        "format": "json",
        "fields": {
            "event_id": "@key",
            "goal": "purchase",
            "occurred_at": "@timestamp | epoch_ms",
            "customer.ids.sustain_impact": "@headers.customer",
            "params.offset": "@offset | string",
        },
    },
}


def _crm(customer: str, ts_ms: object) -> bytes:
    return orjson.dumps(
        {
            "type": "order.paid",
            "ts": ts_ms,
            "order": {"uuid": str(uuid.uuid4()), "total_cents": 2599},
            "customer": {"crm_id": customer},
        }
    )


async def test_mapped_json_and_cloudevents_topics_are_delivered_and_a_bad_record_dead_lettered(
    broker, topics, sandbox_factory, run_relay
):
    """Two CRM records, a structured and a binary CloudEvent and a canonical event reach the
    sandbox with their mapped customer ids and values; a CRM record whose `ts` is no number is
    dead-lettered once as invalid_event, its error naming occurred_at and its source."""
    sandbox = await sandbox_factory()
    crm_topic, ce_topic = f"{topics.source}.crm", f"{topics.source}.ce"
    keyed_topic = f"{topics.source}.keyed"
    await create_topics(broker.bootstrap, {crm_topic: 2, ce_topic: 2, keyed_topic: 1})
    inputs = {
        name: {**entry, "topic": t}
        for (name, entry), t in zip(INPUTS.items(), (crm_topic, ce_topic, keyed_topic), strict=True)
    }
    config = relay_config(
        broker, topics, {"sustain_impact": goal_reach_vendor(sandbox)}, inputs=inputs
    )
    config["kafka"]["topics"] = [topics.source, crm_topic, ce_topic, keyed_topic]
    customers = [str(uuid.uuid4()) for _ in range(6)]
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(crm_topic, _crm(customers[0], now_ms))
        await producer.send_and_wait(crm_topic, _crm(str(uuid.uuid4()), "yesterday"))
        await producer.send_and_wait(crm_topic, _crm(customers[1], now_ms))
        structured = {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "/shop",
            "type": "purchase",
            "time": datetime.now(UTC).isoformat(),
            "subject": customers[2],
            "data": {"amount": 12.5},
        }
        await producer.send_and_wait(
            ce_topic,
            orjson.dumps(structured),
            headers=[("content-type", b"application/cloudevents+json; charset=utf-8")],
        )
        binary = [
            ("ce_specversion", b"1.0"),
            ("ce_id", str(uuid.uuid4()).encode()),
            ("ce_source", b"/crm"),
            ("ce_type", b"purchase"),
            ("ce_time", datetime.now(UTC).isoformat().encode()),
            ("ce_subject", customers[3].encode()),
            ("content-type", b"application/json"),
        ]
        await producer.send_and_wait(ce_topic, b'{"amount": 7}', headers=binary)
        canonical = {
            "event_id": str(uuid.uuid4()),
            "goal": "purchase",
            "occurred_at": datetime.now(UTC).isoformat(),
            "customer": {"ids": {"sustain_impact": customers[4]}},
        }
        await producer.send_and_wait(topics.source, orjson.dumps(canonical))
        # The value holds nothing the mapping reads: key, timestamp and a header carry it all.
        await producer.send_and_wait(
            keyed_topic,
            b"{}",
            key=b"deal-42",
            timestamp_ms=now_ms,
            headers=[("customer", customers[5].encode())],
        )
    finally:
        await producer.stop()

    relay = await run_relay(config)
    await wait_for(lambda: len(sandbox.accepted) >= 6, 30, "6 mapped events delivered")
    payloads = {p["CustomerId"]: p for p in sandbox.payloads()}
    assert set(payloads) == set(customers)
    assert all(p["GoalId"] == GOAL_PURCHASE for p in payloads.values())
    params = [payloads[c].get("CustomUserScopeParams") for c in customers]
    assert params == [
        {"total": "25.99"},
        {"total": "25.99"},
        {"amount": "12.5"},
        {"amount": "7"},
        None,
        {"offset": "0"},
    ]
    # The keyed record's time is its Kafka timestamp (Goal Reach's CreatedOnUtc, to the second).
    keyed_at = datetime.fromtimestamp(now_ms // 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    assert payloads[customers[5]]["CreatedOnUtc"].startswith(keyed_at)
    letters = await read_topic(broker.bootstrap, topics.dlq, 1)
    assert len(letters) == 1
    headers = {k: v.decode() for k, v in letters[0].headers}
    assert headers["relay-reason"] == "invalid_event"
    assert headers["relay-source-topic"] == crm_topic
    assert headers["relay-error"].startswith("occurred_at (from $.ts | epoch_ms): ")
    assert orjson.loads(letters[0].value)["ts"] == "yesterday"
    assert len(sandbox.accepted) == 6
    invalid = relay.metrics.registry.get_sample_value(
        "conversion_relay_events_invalid_total", {"vendor": "sustain_impact", "reason": "schema"}
    )
    assert invalid == 1
