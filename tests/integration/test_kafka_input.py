"""What real producers write, read by the relay: every codec librdkafka uses, header names that
are not UTF-8, tombstones and null keys in one batch, and read_committed on every consumer.
Real Tansu broker, confluent-kafka (librdkafka) producers, a strict sandbox."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import orjson
import pytest
from confluent_kafka import Producer

from service.delivery.replay import _assigned_consumer
from tests.conftest import committed_offsets, goal_reach_vendor, relay_config, wait_for


def _event(index: int) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"ev-{index}-{uuid.uuid4().hex[:6]}",
            "goal": "purchase",
            "occurred_at": datetime.now(UTC).isoformat(),
            "customer": {"ids": {"sustain_impact": str(uuid.uuid4())}},
        }
    )


def _produce(bootstrap: str, topic: str, partition: int, records: list[dict], codec: str) -> None:
    """Produce with librdkafka in one batch per partition (linger), the codec given."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": codec,
            "linger.ms": 50,
            "batch.num.messages": 10_000,
            "api.version.request": True,
        }
    )
    for spec in records:
        producer.produce(topic, partition=partition, **spec)
    assert producer.flush(30) == 0


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_every_codec_librdkafka_writes_is_delivered(
    broker, topics, sandbox_factory, run_relay, codec
):
    """A batch compressed with gzip, snappy, lz4 or zstd by librdkafka is delivered in full."""
    si = await sandbox_factory()
    _produce(broker.bootstrap, topics.source, 1, [{"value": _event(i)} for i in range(50)], codec)
    config = relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)})
    await run_relay(config)
    await wait_for(lambda: len(si.accepted) >= 50, 30, f"50 {codec} events delivered")
    assert len(si.accepted) == 50


async def test_a_batch_larger_than_fetch_max_bytes_still_arrives_whole(
    broker, topics, sandbox_factory, run_relay
):
    """fetch_max_bytes bounds what one fetch holds, never what can be read: a broker answers
    with the first batch even when it is larger (KIP-74), so a big batch is delivered in full."""
    si = await sandbox_factory()
    _produce(broker.bootstrap, topics.source, 0, [{"value": _event(i)} for i in range(300)], "none")
    config = relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)})
    config["kafka"]["fetch_max_bytes"] = 4096  # the batch is ~60 KiB
    await run_relay(config)
    await wait_for(lambda: len(si.accepted) >= 300, 30, "300 events of one big batch delivered")
    assert len(si.accepted) == 300


async def test_odd_records_in_one_batch_never_stop_its_partition(
    broker, topics, sandbox_factory, run_relay
):
    """Among valid events in one librdkafka batch: a header name that is not UTF-8 (delivered,
    the name read as bytes), a tombstone and a null-key null-value record (skipped as
    tombstones), a forged relay-* header; every valid event arrives and every offset commits."""
    si = await sandbox_factory()
    records = [{"value": _event(i)} for i in range(20)]
    records[3] = {"value": _event(3), "headers": [(b"\xff\xfebad-name", b"x")]}
    records[7] = {"key": b"k", "value": None}
    records[8] = {"value": None}
    records[9] = {
        "value": _event(9),
        "headers": [("relay-attempts", None), ("relay-source-topic", b"x")],
    }
    _produce(broker.bootstrap, topics.source, 2, records, "lz4")
    config = relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)})
    relay = await run_relay(config)
    await wait_for(lambda: len(si.accepted) >= 18, 30, "18 valid events delivered")
    group = f"{config['kafka']['group_prefix']}.sustain_impact"

    deadline = time.monotonic() + 20
    offsets = await committed_offsets(broker.bootstrap, group, topics.source, 4)
    while offsets[2] != 20 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        offsets = await committed_offsets(broker.bootstrap, group, topics.source, 4)
    assert offsets[2] == 20, offsets
    sample = relay.metrics.registry.get_sample_value
    assert (
        sample(
            "conversion_relay_skipped_total", {"vendor": "sustain_impact", "reason": "tombstone"}
        )
        == 2
    )
    assert len(si.accepted) == 18


async def test_read_committed_reaches_pipeline_replay_and_end_offset_consumers(
    broker, topics, sandbox_factory, run_relay
):
    """Every consumer the relay makes reads with isolation_level=read_committed by default (the
    embedded Tansu broker does not enforce it, so the setting itself is what is checked)."""
    si = await sandbox_factory()
    config = relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)})
    relay = await run_relay(config)
    pipeline = relay.pipelines["sustain_impact"]
    assert pipeline._consumer._isolation_level == "read_committed"  # also the lag's end offsets
    consumer = await _assigned_consumer(relay.config.kafka, topics.dlq)
    try:
        assert consumer._isolation_level == "read_committed"
        assert consumer._fetcher._isolation_level == 1  # aiokafka's READ_COMMITTED
    finally:
        await consumer.stop()
