"""A replay's memory stays bounded whatever the DLQ's size (issue 21): at its in-flight caps it
reads each letter once (no fetched batch thrown away and read again: dropped batches sit in
garbage until the collector runs), and its in-memory dedup store remembers a few windows of
deliveries, not every letter. Against the embedded broker, in-process, default settings."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import yaml
from aiokafka import AIOKafkaProducer

from service.config import parse_config
from service.delivery.dedup import MemoryDedupStore
from service.delivery.replay import LetterFilter, plan_replay
from service.replay_run import REPLAY_WINDOW_PER_CONCURRENCY, Replay
from tests.conftest import goal_reach_vendor, relay_config
from tests.integration.test_dlq_replay import _events, _headers

VENDOR = "sustain_impact"
LETTERS = 1_500
CONCURRENCY = 4


async def _letters(bootstrap: str, topic: str, events: list[bytes]) -> None:
    """The letters in a few large batches (as a relay under load writes them)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        sent = [
            await producer.send(topic, value=event, headers=_headers(VENDOR, "rejected", n))
            for n, event in enumerate(events)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def test_a_long_replay_reads_each_letter_once_and_remembers_a_bounded_window(
    monkeypatch, broker, topics, sandbox_factory
):
    """1,500 letters through a window of 16: each letter unpacked from a fetch at most ~once
    (at most 1.2x in all), and the dedup store holds at most 16 windows of pairs, not 1,500."""
    from service import kafka as kafka_module

    unpacked: Counter[int] = Counter()
    real = kafka_module.LenientPartitionRecords._consumer_record

    def counting(self: Any, tp: Any, record: Any) -> Any:
        if tp.topic == topics.dlq:
            unpacked[record.offset] += 1
        return real(self, tp, record)

    monkeypatch.setattr(kafka_module.LenientPartitionRecords, "_consumer_record", counting)
    si = await sandbox_factory()
    raw = relay_config(broker, topics, {VENDOR: goal_reach_vendor(si, concurrency=CONCURRENCY)})
    config = parse_config(yaml.safe_load(yaml.safe_dump(raw)))
    events = _events(LETTERS)
    await _letters(broker.bootstrap, topics.dlq, events)
    plan = await plan_replay(config.kafka, topics.dlq, VENDOR, LetterFilter())
    assert plan.count == LETTERS
    unpacked.clear()  # planning streams the DLQ twice on purpose; the run is what is measured
    replay = Replay(config, VENDOR, LetterFilter(), plan=plan)
    counts = await asyncio.wait_for(replay.run(), 120)
    assert counts["delivered"] == LETTERS, counts
    assert len(si.accepted) == LETTERS
    read = sum(unpacked.values())
    assert read <= 1.2 * LETTERS, f"{read} letters unpacked for {LETTERS}: fetched again"
    store = replay.relay._dedup
    assert isinstance(store, MemoryDedupStore)
    window = REPLAY_WINDOW_PER_CONCURRENCY * CONCURRENCY
    assert len(store) <= 16 * window, f"{len(store)} pairs remembered for a window of {window}"
