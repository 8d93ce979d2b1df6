"""Progress above the commit point kept in Kafka (service/delivery/progress.py), against the
embedded Tansu broker: what the broker does with commit metadata, the store it makes `auto`
choose, and a retry budget that survives restarts of the relay."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from service.app import Relay
from service.config import KafkaConfig, parse_config
from service.core.progress import Attempt, decode, encode, progress
from service.delivery.progress import GroupProgress, ProgressBook
from service.devtools.demo import sample_lines
from service.devtools.embedded import create_topics
from service.devtools.publish import publish
from service.kafka import fetch_committed
from tests.conftest import read_topic, relay_config, wait_for
from tests.reliability.conftest import all_goals_vendor


async def _member(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    """A consumer that joined `group` and holds every partition of `topic`."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=2000,
        heartbeat_interval_ms=300,
    )
    await consumer.start()
    deadline = time.monotonic() + 30
    while not consumer.assignment():
        assert time.monotonic() < deadline, "never assigned"
        await consumer.getmany(timeout_ms=200)
    return consumer


def _kafka(broker: Any, **settings: Any) -> KafkaConfig:
    return KafkaConfig(
        bootstrap_servers=[broker.bootstrap],
        topics=["unused"],
        group_prefix=f"progress-{uuid.uuid4().hex[:6]}",
        **settings,
    )


async def test_the_embedded_broker_accepts_commit_metadata_but_gives_back_none(broker, topics):
    """Tansu 0.6 answers OffsetFetch with empty metadata whatever was committed: the reason the
    `auto` store falls back to a progress topic there."""
    consumer = await _member(broker.bootstrap, topics.source, f"meta-{uuid.uuid4().hex[:6]}")
    try:
        tp = TopicPartition(topics.source, 0)
        await consumer.commit({tp: OffsetAndMetadata(0, "cr1R-anything")})
        committed = await fetch_committed(consumer, [tp])
        assert committed[tp].offset == 0
        assert committed[tp].metadata == ""
    finally:
        await consumer.stop()


async def test_progress_saved_by_one_member_is_loaded_by_the_next_through_the_topic(broker, topics):
    """`auto` notices the dropped metadata after its first commit and keeps progress in the
    compacted topic; a later member of the group (another process) reads it back whole."""
    group = f"group-{uuid.uuid4().hex[:6]}"
    kafka = _kafka(broker)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    tp = TopicPartition(topics.source, 1)
    kept = progress(7, [9, 10, 12], [Attempt(7, 1_796_000_000, 4, 2)])
    first_book = ProgressBook(kafka, producer)
    consumer = await _member(broker.bootstrap, topics.source, group)
    try:
        store = GroupProgress(consumer, group, first_book)
        await store.save({tp: (7, encode(kept, store.max_chars))})
        assert first_book.uses_topic
    finally:
        await consumer.stop()
        await first_book.close()

    second_book = ProgressBook(kafka, producer)
    consumer = await _member(broker.bootstrap, topics.source, group)
    try:
        loaded = await GroupProgress(consumer, group, second_book).load([tp])
        assert loaded[tp] == (7, kept)
        # The group moved on (a later commit without a progress record): only what is above.
        await consumer.commit({tp: 10})
        loaded = await GroupProgress(consumer, group, second_book).load([tp])
        assert loaded[tp] == (10, progress(10, [12]))
        # Moved back by an operator: the record no longer applies.
        await consumer.commit({tp: 3})
        assert (await GroupProgress(consumer, group, second_book).load([tp]))[tp] == (3, None)
    finally:
        await consumer.stop()
        await second_book.close()
        await producer.stop()


async def test_the_metadata_store_reads_progress_from_the_commit_itself(broker, topics):
    """With `progress_store: metadata` the text goes only into the commit, and is read back from
    there (here through a member whose commit metadata is faked kept, as on Kafka)."""
    group = f"group-{uuid.uuid4().hex[:6]}"
    book = ProgressBook(_kafka(broker, progress_store="metadata"), None)
    consumer = await _member(broker.bootstrap, topics.source, group)
    try:
        store = GroupProgress(consumer, group, book)
        tp = TopicPartition(topics.source, 0)
        text = encode(progress(4, [6]), store.max_chars)
        await store.save({tp: (4, text)})
        assert not book.uses_topic

        async def kept_metadata(partitions: list[TopicPartition]) -> dict[Any, Any]:
            return {tp: OffsetAndMetadata(4, text)}  # what Kafka answers

        consumer._coordinator.fetch_committed_offsets = kept_metadata
        assert (await store.load([tp]))[tp] == (4, decode(text))
    finally:
        await consumer.stop()


async def test_a_record_that_always_fails_is_dead_lettered_although_the_relay_restarts_often(
    broker, sandbox_factory
):
    """max_elapsed_s 4 and a relay restarted cleanly every ~1.5 s (each run holds the record
    less than its budget): its first-attempt time survives the restarts, so it is dead-lettered
    once, and the events after it are delivered."""
    name = f"budget-{uuid.uuid4().hex[:8]}"
    await create_topics(broker.bootstrap, {name: 1, f"{name}.dlq": 1})
    topics = type("T", (), {"source": name, "dlq": f"{name}.dlq", "partitions": 1})()
    sandbox = await sandbox_factory()
    lines = list(sample_lines(21, seed=2104))
    poison = orjson.loads(lines[0])
    sandbox.faults.fail_matching = poison["customer"]["ids"]["sustain_impact"].encode()
    vendor = all_goals_vendor(
        sandbox, retry={"initial_backoff_s": 0.05, "max_backoff_s": 0.1, "max_elapsed_s": 4}
    )
    config = parse_config(
        relay_config(broker, topics, {"sustain_impact": vendor}, pipeline={"shutdown_grace_s": 1})
    )
    await publish(broker.bootstrap, name, lines)
    runs = 0
    letters: list[Any] = []
    while runs < 6:
        runs += 1
        relay = Relay(config)
        task = asyncio.create_task(relay.run(install_signals=False))
        await wait_for(
            lambda r=relay, t=task: not r.not_ready_reasons() or t.done(), 30, "relay ready"
        )
        await asyncio.sleep(1.5)
        relay.request_stop()
        assert await asyncio.wait_for(task, 30) == 0
        letters = await read_topic(broker.bootstrap, topics.dlq, 1, timeout_s=0.5)
        if letters:
            break
    assert [orjson.loads(r.value)["event_id"] for r in letters] == [poison["event_id"]]
    assert runs <= 5, runs
    assert len(sandbox.accepted) >= len(lines) - 1


async def test_dead_letters_keep_flowing_after_progress_is_written_to_its_topic(
    broker, sandbox_factory
):
    """The embedded broker answers a metadata request for two topics with one of them: had the
    progress records gone through the dead-letter producer, it would lose the DLQ topic's
    leader and letters queued then would wait for ever (a stop then hung in its flush). Rounds
    of rejected events after progress is on its topic are all dead-lettered, and the relay
    stops within its bound."""
    name = f"letters-{uuid.uuid4().hex[:8]}"
    await create_topics(broker.bootstrap, {name: 1, f"{name}.dlq": 1})
    topics = type("T", (), {"source": name, "dlq": f"{name}.dlq", "partitions": 1})()
    sandbox = await sandbox_factory()
    sandbox.faults.error_status = 400  # every request rejected: each event a dead letter
    sandbox.faults.error_rate = 1.0
    vendor = all_goals_vendor(sandbox)
    data = relay_config(
        broker, topics, {"sustain_impact": vendor}, pipeline={"shutdown_grace_s": 1}
    )
    data["kafka"]["progress_store"] = "topic"  # a progress record with every commit
    relay = Relay(parse_config(data))
    task = asyncio.create_task(relay.run(install_signals=False))
    try:
        await wait_for(lambda: not relay.not_ready_reasons() or task.done(), 30, "relay ready")
        lines = list(sample_lines(600, seed=2105))
        routed = sum(
            1
            for line in lines
            if "sustain_impact" in orjson.loads(line)["customer"]["ids"]
            and orjson.loads(line)["goal"] in ("purchase", "signup")
        )
        for start in range(0, len(lines), 100):  # letters and progress records interleave
            await publish(broker.bootstrap, name, lines[start : start + 100])
            await asyncio.sleep(0.05)
        deadline = time.monotonic() + 30
        while len(letters := await read_topic(broker.bootstrap, topics.dlq, 1, 0.3)) < routed:
            assert time.monotonic() < deadline, f"{len(letters)} of {routed} letters written"
    finally:
        relay.request_stop()
        stopped_s = time.monotonic()
        assert await asyncio.wait_for(task, 30) == 0
    assert time.monotonic() - stopped_s < 5
