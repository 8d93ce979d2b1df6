"""Progress above the commit point, kept in Kafka: written with each commit, read on assignment.

`GroupProgress` is one consumer group's store (a vendor pipeline's, or a replay group's): `save`
commits each partition's offset with its progress text (service.core.progress) as the
OffsetCommit metadata; `load` reads the committed offset and metadata back for newly assigned
partitions (aiokafka's `committed()` returns only the offset).

Some Kafka-compatible brokers accept commit metadata and drop it (the embedded Tansu 0.6 returns
"" for every commit: tests/integration/test_progress_store.py). `ProgressBook` is shared by the
process' groups: in `auto` it checks once, after the first commit that carried progress, whether
the broker kept it; where it did not (or with `progress_store: topic`) every progress text is
also written to a compacted progress topic (key `<group>|<topic>|<partition>`), after its offset
commit succeeded, and read from there when the metadata is empty. A progress record is only ever
a fact (those offsets were finished), so a late or stale one is harmless: seen from the group's
committed offset (`Progress.since`), what lies below it is dropped, and a record whose base is
above the committed offset (the group was moved back by an operator) is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from service.config import KafkaConfig
from service.core.progress import Progress, decode, encode
from service.kafka import client_kwargs, fetch_committed

log = logging.getLogger("conversion_relay.progress")
_TOPIC_EXISTS = 36
# How long reading the progress topic to its end may take before the assignment goes on
# without it (records then already delivered may be delivered again, as before progress).
_CATCH_UP_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
_READER_STOP_S = 1.0

Restored = tuple[int | None, Progress | None]  # (committed offset, progress seen from it)


class Committer(Protocol):
    """The part of aiokafka's consumer a group's progress store uses."""

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        """Commit offsets (with metadata)."""


class Producer(Protocol):
    """The part of aiokafka's producer the progress topic is written with."""

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        """Queue one record; the future resolves once it is acknowledged."""
        ...


def progress_key(group: str, tp: TopicPartition) -> bytes:
    """The progress topic's key for one group's partition."""
    return f"{group}|{tp.topic}|{tp.partition}".encode()


class ProgressBook:
    """What the process' groups share: whether the broker keeps commit metadata, and the
    progress topic (written and read only where it does not)."""

    def __init__(
        self,
        kafka: KafkaConfig,
        producer: Producer | None,
        make_producer: Callable[[], Awaitable[Producer]] | None = None,
    ) -> None:
        self._kafka = kafka
        self._producer = producer
        # Started on the first progress record when given (and stopped by `close`): a producer
        # of the progress topic alone. The embedded Tansu answers a metadata request for two
        # topics with one of them, so a producer shared with the DLQ lost the DLQ topic's leader
        # and letters queued meanwhile waited for ever.
        self._make_producer = make_producer
        self._own_producer: Any = None
        self.topic = kafka.progress_topic or f"{kafka.group_prefix}.progress"
        self.max_chars = kafka.commit_metadata_max_bytes
        # None until checked (auto); True: commit metadata is enough; False: use the topic too.
        self.metadata_kept: bool | None = {"auto": None, "metadata": True, "topic": False}[
            kafka.progress_store
        ]
        self._checking = asyncio.Lock()
        self._reading = asyncio.Lock()
        self._topic_ready = False
        self._reader: AIOKafkaConsumer | None = None
        self._latest: dict[bytes, bytes] = {}

    @property
    def uses_topic(self) -> bool:
        """Whether progress goes to (and comes from) the progress topic."""
        return self.metadata_kept is False

    async def check(self, consumer: Any, group: str, written: dict[TopicPartition, str]) -> None:
        """After a commit that carried progress: read one partition's back, once per process."""
        if self.metadata_kept is not None:
            return
        tp = next((tp for tp, text in written.items() if text), None)
        if tp is None:
            return
        async with self._checking:
            if self.metadata_kept is not None:
                return
            committed = await fetch_committed(consumer, [tp])
            kept = tp in committed and bool(committed[tp].metadata)  # Tansu gives back ""
            self.metadata_kept = kept
            if not kept:
                log.info(
                    "the broker does not keep commit metadata: progress above the commit point "
                    "is kept in the compacted topic %s",
                    self.topic,
                )

    async def write(self, group: str, entries: dict[TopicPartition, tuple[int, str]]) -> None:
        """Write each partition's progress record (every offset it names is committed)."""
        if self._producer is None:
            if self._make_producer is None:
                return
            self._producer = self._own_producer = await self._make_producer()
        await self._ensure_topic()
        futures = []
        for tp, (offset, text) in entries.items():
            value = text or encode(Progress(offset), self.max_chars)  # no progress: just the base
            futures.append(
                await self._producer.send(
                    self.topic, value=value.encode(), key=progress_key(group, tp)
                )
            )
        await asyncio.gather(*futures)

    async def read(
        self, group: str, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, str]:
        """The latest progress record of each partition, reading the topic to its end first."""
        async with self._reading:
            await self._catch_up()
        found = {}
        for tp in partitions:
            value = self._latest.get(progress_key(group, tp))
            if value is not None:
                found[tp] = value.decode("ascii", errors="replace")
        return found

    async def _ensure_topic(self) -> None:
        if self._topic_ready:
            return
        admin = AIOKafkaAdminClient(**client_kwargs(self._kafka))
        try:
            await admin.start()
            brokers = len(admin._client.cluster.brokers()) or 1
            response = await admin.create_topics(
                [
                    NewTopic(
                        self.topic, 1, min(3, brokers), topic_configs={"cleanup.policy": "compact"}
                    )
                ]
            )
            for name, code, *_ in response.topic_errors:
                if code not in (0, _TOPIC_EXISTS):
                    raise KafkaError(f"cannot create the progress topic {name}: error {code}")
            self._topic_ready = True
        finally:
            await admin.close()

    async def _catch_up(self) -> None:
        """Read every progress record written so far (the topic is compacted: one per key)."""
        reader = self._reader
        if reader is None:
            reader = AIOKafkaConsumer(
                **client_kwargs(self._kafka),
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level=self._kafka.isolation_level,
            )
            await reader.start()
            self._reader = reader
        partitions = reader.partitions_for_topic(self.topic)
        if not partitions:
            await reader._client.force_metadata_update()
            partitions = reader.partitions_for_topic(self.topic)
        if not partitions:
            return  # nothing was ever written
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        if set(reader.assignment()) != set(tps):
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
        ends = await reader.end_offsets(tps)
        deadline = time.monotonic() + _CATCH_UP_TIMEOUT_S
        while time.monotonic() < deadline:
            batch = await reader.getmany(*tps, timeout_ms=100)
            for records in batch.values():
                for record in records:
                    if record.key is not None and record.value is not None:
                        self._latest[record.key] = record.value
            if batch:
                continue
            # Tansu's ListOffsets may undercount: the fetch's high watermark is the end too.
            at_end = True
            for tp in tps:
                end = max(ends.get(tp, 0), reader.highwater(tp) or 0)
                if await reader.position(tp) < end:
                    at_end = False
            if at_end:
                return
        log.warning("the progress topic %s was not read to its end in time", self.topic)

    async def close(self) -> None:
        """Stop the progress topic's reader, and its producer if this book started it."""
        if self._reader is not None:
            reader, self._reader = self._reader, None
            # In no group (nothing to commit or leave): bounded, so a stuck broker cannot hold
            # the stop.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader.stop(), _READER_STOP_S)
        if self._own_producer is not None:
            producer, self._own_producer = self._own_producer, None
            self._producer = None
            # Bounded: a progress record not acknowledged by now is only a repeat saved.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), _STOP_TIMEOUT_S)


class GroupProgress:
    """One consumer group's progress: offsets committed with their progress, read back."""

    def __init__(self, consumer: Any, group: str, book: ProgressBook) -> None:
        self._consumer = consumer
        self.group = group
        self.book = book

    @property
    def max_chars(self) -> int:
        """Longest progress text a commit carries."""
        return self.book.max_chars

    async def save(self, entries: dict[TopicPartition, tuple[int, str]]) -> None:
        """Commit each partition's offset with its progress (and, where needed, the record)."""
        await self._consumer.commit(
            {tp: OffsetAndMetadata(offset, text) for tp, (offset, text) in entries.items()}
        )
        book = self.book
        await book.check(self._consumer, self.group, {tp: t for tp, (_, t) in entries.items()})
        if book.uses_topic:
            try:
                await book.write(self.group, entries)
            except (KafkaError, TimeoutError, OSError) as exc:
                # The offsets are committed; without this record a restart repeats what was
                # finished above them, as before progress was kept.
                log.warning("progress record not written (%r)", exc, extra={"group": self.group})

    async def load(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, Restored]:
        """Each partition's committed offset and the progress kept above it."""
        wanted = list(partitions)
        committed = await fetch_committed(self._consumer, wanted)
        result: dict[TopicPartition, Restored] = {}
        missing = []
        for tp in wanted:
            entry = committed.get(tp)
            offset = entry.offset if entry is not None and entry.offset >= 0 else None
            kept = decode(entry.metadata) if entry is not None else None
            if offset is not None and kept is not None and kept.base == offset:
                result[tp] = (offset, kept)
                continue
            result[tp] = (offset, None)
            if offset is not None and self.book.metadata_kept is not True:
                missing.append(tp)
        if missing:
            texts = await self.book.read(self.group, missing)
            for tp, text in texts.items():
                offset = result[tp][0]
                kept = decode(text)
                if offset is not None and kept is not None:
                    result[tp] = (offset, kept.since(offset))
        return result
