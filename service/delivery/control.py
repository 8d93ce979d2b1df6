"""The control topic: every vendor's operator state (paused, by whom, why), compacted, keyed by
vendor, read by every replica.

`ControlTopic` writes records with a producer of its own and reads with a consumer of its own:
the embedded Tansu answers a metadata request for two topics with one of them, so a client
shared with another topic (the DLQ producer) would lose one topic's leader. `read_all` reads the
topic to its end (what a command or a starting replica needs); `watch` keeps reading and calls
back on every record, so a pause reaches a running replica within a poll (0.2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from service.config import KafkaConfig
from service.core.control import PartitionOffsets, VendorControl, decode_control, encode_control
from service.kafka import client_kwargs, producer_kwargs

log = logging.getLogger("conversion_relay.control")
_TOPIC_EXISTS = 36
_CATCH_UP_TIMEOUT_S = 10.0
_READER_STOP_S = 1.0
_STOP_TIMEOUT_S = 5.0
POLL_TIMEOUT_MS = 200
FETCH_MAX_WAIT_MS = 100


def control_topic_name(kafka: KafkaConfig) -> str:
    """The control topic: `kafka.control_topic`, else `<group_prefix>.control`."""
    return kafka.control_topic or f"{kafka.group_prefix}.control"


class ControlTopic:
    """Reads and writes the control topic with clients of its own."""

    def __init__(self, kafka: KafkaConfig) -> None:
        self._kafka = kafka
        self.topic = control_topic_name(kafka)
        self.states: dict[str, VendorControl] = {}
        self._producer: AIOKafkaProducer | None = None
        self._reader: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []

    async def ensure_topic(self) -> None:
        """Create the topic (1 partition, compacted) unless it exists."""
        admin = AIOKafkaAdminClient(**client_kwargs(self._kafka))
        try:
            await admin.start()
            brokers = len(admin._client.cluster.brokers()) or 1
            topic = NewTopic(
                self.topic, 1, min(3, brokers), topic_configs={"cleanup.policy": "compact"}
            )
            response = await admin.create_topics([topic])
            for name, code, *_ in response.topic_errors:
                if code not in (0, _TOPIC_EXISTS):
                    raise KafkaError(f"cannot create the control topic {name}: error {code}")
        finally:
            await admin.close()

    async def write(self, state: VendorControl) -> None:
        """Write a vendor's state and wait for its acknowledgement."""
        if self._producer is None:
            await self.ensure_topic()
            producer = AIOKafkaProducer(**producer_kwargs(self._kafka))
            await producer.start()
            self._producer = producer
        await self._producer.send_and_wait(
            self.topic, value=encode_control(state), key=state.vendor.encode()
        )

    async def _start_reader(self) -> AIOKafkaConsumer:
        if self._reader is not None:
            return self._reader
        await self.ensure_topic()
        reader = AIOKafkaConsumer(
            **client_kwargs(self._kafka),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level=self._kafka.isolation_level,
            # A fetch waits this long at most for a record: a pause is seen within about it.
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        )
        await reader.start()
        self._reader = reader
        partitions = reader.partitions_for_topic(self.topic)
        deadline = time.monotonic() + _CATCH_UP_TIMEOUT_S
        while not partitions and time.monotonic() < deadline:
            await reader._client.force_metadata_update()
            partitions = reader.partitions_for_topic(self.topic)
            if not partitions:
                await asyncio.sleep(0.1)
        self._tps = [TopicPartition(self.topic, p) for p in sorted(partitions or {0})]
        reader.assign(self._tps)
        await reader.seek_to_beginning(*self._tps)
        return reader

    def _take(self, batch: dict[TopicPartition, list[Any]]) -> list[VendorControl]:
        seen = []
        for records in batch.values():
            for record in records:
                state = decode_control(record.key, record.value)
                if state is not None:
                    self.states[state.vendor] = state
                    seen.append(state)
        return seen

    async def read_all(self, timeout_s: float = _CATCH_UP_TIMEOUT_S) -> dict[str, VendorControl]:
        """Every vendor's latest state, reading the topic to its end first."""
        reader = await self._start_reader()
        ends = await reader.end_offsets(self._tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await reader.getmany(*self._tps, timeout_ms=100)
            self._take(batch)
            if batch:
                continue
            # Tansu's ListOffsets may undercount: the fetch's high watermark is the end too.
            at_end = True
            for tp in self._tps:
                end = max(ends.get(tp, 0), reader.highwater(tp) or 0)
                if await reader.position(tp) < end:
                    at_end = False
            if at_end:
                return dict(self.states)
        raise TimeoutError(f"the control topic {self.topic} was not read to its end in time")

    async def watch(self, on_state: Callable[[VendorControl], None]) -> None:
        """Keep reading (after `read_all`), calling `on_state` for each record; never returns."""
        reader = await self._start_reader()
        while True:
            try:
                batch = await reader.getmany(*self._tps, timeout_ms=POLL_TIMEOUT_MS)
            except KafkaError as exc:  # the broker went away: the client reconnects by itself
                log.debug("control topic not read (%r); trying again", exc)
                await asyncio.sleep(1.0)
                continue
            for state in self._take(batch):
                on_state(state)

    async def close(self) -> None:
        """Stop the reader and the producer (bounded)."""
        # The reader is in no group (nothing to commit or leave): a second is plenty.
        for client, bound_s in ((self._reader, _READER_STOP_S), (self._producer, _STOP_TIMEOUT_S)):
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.stop(), bound_s)
        self._reader = self._producer = None


# ---- a vendor group's offsets, read and moved from outside the group ----------------------


async def _partitions(consumer: AIOKafkaConsumer, topics: list[str]) -> list[TopicPartition]:
    """Every partition of these topics (metadata refreshed once if one is not known yet)."""
    found: list[TopicPartition] = []
    for topic in topics:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        found.extend(TopicPartition(topic, p) for p in sorted(partitions or ()))
    return found


async def _log_ends(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], timeout_s: float = 3.0
) -> dict[TopicPartition, int]:
    """Each partition's log end: ListOffsets, raised to a fetch's high watermark (Tansu's
    ListOffsets undercounts partitions written in batches; a fetch from there tells the end)."""
    listed = await consumer.end_offsets(tps)
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, listed[tp])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await consumer.getmany(*tps, timeout_ms=100)
        if all(consumer.highwater(tp) is not None for tp in tps):
            break
    return {tp: max(listed[tp], consumer.highwater(tp) or 0) for tp in tps}


async def read_offsets(
    kafka: KafkaConfig, group: str, topics: list[str], at_ms: int | None = None
) -> list[PartitionOffsets]:
    """Each partition's committed offset for the group, earliest and log-end offsets, and (with
    `at_ms`) the first offset at or after that time: read by a consumer that has the group's
    id and never joins it (the admin API's ListConsumerGroupOffsets fails on Tansu)."""
    consumer = AIOKafkaConsumer(**client_kwargs(kafka), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await _partitions(consumer, topics)
        if not tps:
            return []
        earliest = await consumer.beginning_offsets(tps)
        latest = await _log_ends(consumer, tps)
        at_time: dict[TopicPartition, Any] = {}
        if at_ms is not None:
            at_time = await consumer.offsets_for_times({tp: at_ms for tp in tps})
        result = []
        for tp in tps:
            found = at_time.get(tp)
            result.append(
                PartitionOffsets(
                    tp.topic,
                    tp.partition,
                    await consumer.committed(tp),
                    earliest[tp],
                    latest[tp],
                    found.offset if found is not None else None,
                )
            )
        return result
    finally:
        await consumer.stop()


async def group_members(kafka: KafkaConfig, group: str) -> int:
    """How many members the broker lists in the group (one that left stays listed until its
    session times out; Tansu keeps it until the group next rebalances)."""
    admin = AIOKafkaAdminClient(**client_kwargs(kafka))
    try:
        await admin.start()
        described = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    for response in described:
        for entry in response.groups:
            error_code, name, _state, _protocol_type, _protocol, members = entry[:6]
            if name == group and error_code == 0:
                return len(members)
    return 0


async def commit_as_member(
    kafka: KafkaConfig,
    group: str,
    topics: list[str],
    offsets: dict[TopicPartition, int],
    timeout_s: float = 30.0,
) -> None:
    """Join the group for a moment and commit these offsets (a broker refuses a commit from
    outside a group with members, and Tansu keeps a member that left listed until the next
    rebalance). KafkaError when another live member holds one of the partitions."""
    from aiokafka.structs import OffsetAndMetadata

    from service.core.progress import Progress, encode
    from service.kafka import consumer_kwargs

    consumer = AIOKafkaConsumer(**consumer_kwargs(kafka, group))
    consumer.subscribe(topics)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        # Once partitions are assigned, a session more: a member that left but is still listed
        # is dropped by then; a live one keeps its share.
        settle_s = kafka.session_timeout_ms / 1000 + 1.0
        assigned_at: float | None = None
        wanted = set(offsets)
        while not wanted <= consumer.assignment() and time.monotonic() < deadline:
            consumer.pause(*consumer.assignment())  # nothing is read: only the assignment counts
            await consumer.getmany(timeout_ms=100)
            if consumer.assignment() and assigned_at is None:
                assigned_at = time.monotonic()
            if assigned_at is not None and time.monotonic() - assigned_at > settle_s:
                break
        missing = wanted - consumer.assignment()
        if missing:
            held = ", ".join(sorted(f"{tp.topic}:{tp.partition}" for tp in missing))
            raise KafkaError(f"another live member of {group} holds {held}")
        # A base-only progress text: a broker keeping metadata then has no older progress.
        await consumer.commit(
            {tp: OffsetAndMetadata(o, encode(Progress(o), 4000)) for tp, o in offsets.items()}
        )
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), _STOP_TIMEOUT_S)


async def forget_progress(
    kafka: KafkaConfig, group: str, offsets: dict[TopicPartition, int]
) -> None:
    """Write a base-only progress record for each moved partition, so progress kept above an
    older commit point (service.delivery.progress) never marks a re-delivered record done."""
    if kafka.progress_store == "metadata":
        return  # no progress topic: the commit's metadata was rewritten with the offset
    from service.delivery.progress import ProgressBook

    async def producer() -> AIOKafkaProducer:
        made = AIOKafkaProducer(**producer_kwargs(kafka))
        await made.start()
        return made

    book = ProgressBook(kafka, None, make_producer=producer)
    try:
        await book.write(group, {tp: (o, "") for tp, o in offsets.items()})
    finally:
        await book.close()
