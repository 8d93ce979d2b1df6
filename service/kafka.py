"""aiokafka at one boundary: client settings from the config (bootstrap, security, timeouts,
isolation level), and the lenient reading of fetched records that no record can crash."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import aiokafka.codec as aiokafka_codec
import aiokafka.consumer.fetcher as _fetcher
from aiokafka.helpers import create_ssl_context
from aiokafka.record.default_records import DefaultRecordBatch as _DefaultRecordBatch
from aiokafka.record.memory_records import MemoryRecords as _MemoryRecords
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from service.config import KafkaConfig
from service.core import records


def client_kwargs(kafka: KafkaConfig) -> dict[str, Any]:
    """Connection and security settings shared by consumers, the producer and the admin client."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": ",".join(kafka.bootstrap_servers),
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = create_ssl_context(
            cafile=kafka.ssl_cafile, certfile=kafka.ssl_certfile, keyfile=kafka.ssl_keyfile
        )
    if kafka.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = kafka.sasl_mechanism
        kwargs["sasl_plain_username"] = kafka.sasl_username
        kwargs["sasl_plain_password"] = kafka.sasl_password
    return kwargs


def consumer_kwargs(kafka: KafkaConfig, group_id: str) -> dict[str, Any]:
    """Settings of a vendor pipeline's consumer: its own group, manual commits."""
    return {
        **client_kwargs(kafka),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": kafka.auto_offset_reset,
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
        "max_poll_interval_ms": kafka.max_poll_interval_ms,
        "isolation_level": kafka.isolation_level,
        "fetch_max_wait_ms": kafka.fetch_max_wait_ms,
        "fetch_max_bytes": kafka.fetch_max_bytes,
    }


def producer_kwargs(kafka: KafkaConfig) -> dict[str, Any]:
    """Settings of the DLQ producer: acknowledged by every in-sync replica."""
    return {
        **client_kwargs(kafka),
        "acks": "all",
        "enable_idempotence": kafka.enable_idempotence,
        "linger_ms": 5,
    }


def coordinator_known(consumer: Any) -> bool:
    """Whether a group consumer currently knows (and so reaches) its group coordinator.

    aiokafka exposes no public signal for this; its coordinator forgets the coordinator's node
    when heartbeats or requests to it fail, and finds it again when the broker is back.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    return coordinator is not None and getattr(coordinator, "coordinator_id", None) is not None


async def fetch_committed(
    consumer: Any, partitions: list[TopicPartition]
) -> dict[TopicPartition, OffsetAndMetadata]:
    """The group's committed offset and metadata per partition (those with a commit).

    aiokafka's `committed()` returns the offset alone; its coordinator's OffsetFetch has the
    metadata too. A consumer without one (a test's fake) gives offsets with empty metadata.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    fetch = getattr(coordinator, "fetch_committed_offsets", None)
    if fetch is not None:
        return dict(await fetch(partitions))
    found = {}
    for tp in partitions:
        offset = await consumer.committed(tp)
        if offset is not None:
            found[tp] = OffsetAndMetadata(offset, "")
    return found


# ---- reading fetched records: the one boundary with aiokafka's record parser ---------------


def _decompress(codec: int, data: bytes) -> bytes:
    """A batch body through aiokafka's codec (cramjam provides snappy, lz4 and zstd)."""
    if codec == 1:
        return bytes(aiokafka_codec.gzip_decode(data))
    if codec == 2:
        return bytes(aiokafka_codec.snappy_decode(data))
    if codec == 3:
        return bytes(aiokafka_codec.lz4_decode(data))
    if codec == 4:
        return bytes(aiokafka_codec.zstd_decode(data))
    raise ValueError(f"unknown compression codec {codec}")


class _KeptMemoryRecords:
    """aiokafka's MemoryRecords that also keeps the fetched bytes, for the lenient reader."""

    def __init__(self, data: bytes) -> None:
        self.raw = data
        self._inner = _MemoryRecords(data)

    def size_in_bytes(self) -> int:
        return int(self._inner.size_in_bytes())

    def has_next(self) -> bool:
        return bool(self._inner.has_next())

    def next_batch(self) -> Any:
        return self._inner.next_batch()


class LenientPartitionRecords(_fetcher.PartitionRecords):  # type: ignore[misc]
    """aiokafka's per-partition record iterator, reading batch by batch so that nothing in one
    batch can stop the partition: the fast (compiled) reader first; if it raises, the lenient
    reader keeps every readable record and yields an `Unreadable` for each one it cannot read."""

    next_fetch_offset: int

    def _consumer_record(self, tp: TopicPartition, record: Any) -> Any:
        """A `Fetched` (aiokafka's dataclass costs a Python __init__ and a __dict__ each)."""
        if self._key_deserializer or self._value_deserializer:
            return super()._consumer_record(tp, record)
        key, value = record.key, record.value
        return records.Fetched(
            tp.topic,
            tp.partition,
            record.offset,
            record.timestamp,
            record.timestamp_type,
            key,
            value,
            record.checksum,
            len(key) if key is not None else -1,
            len(value) if value is not None else -1,
            tuple(record.headers),
        )

    def _unpack_records(self) -> Iterator[Any]:
        raw = getattr(self._records, "raw", None)
        if raw is None:  # not fetched through the patched fetcher: aiokafka's own way
            yield from super()._unpack_records()
            return
        for view in records.split_batches(raw):
            yield from self._batch(view)

    def _batch(self, view: memoryview) -> Iterator[Any]:
        header = records.read_header(view)
        if header is None or header.magic < 2:
            yield from self._legacy(view)
            return
        if header.next_offset <= self.next_fetch_offset:
            return  # already consumed (a fetch may start inside a batch)
        try:
            batch = _DefaultRecordBatch(bytes(view))
            crc_ok = not self._check_crcs or batch.validate_crc()
        except Exception as exc:  # unreadable header fields
            yield from self._step_over(header, f"unreadable batch: {exc!r}")
            return
        if not crc_ok:
            yield from self._step_over(header, "corrupt batch: CRC mismatch")
            return
        try:
            if self._skip_transactional(batch):
                return
        except Exception as exc:
            yield from self._step_over(header, f"unreadable control batch: {exc!r}")
            return
        try:
            fast = [self._consumer_record(self._tp, r) for r in batch]
        except Exception:  # the compiled reader gave up on something: read record by record
            fast = list(self._lenient(view, header))
        for record in fast:
            if record.offset >= self.next_fetch_offset:
                self.next_fetch_offset = record.offset + 1
                yield record
        self.next_fetch_offset = max(self.next_fetch_offset, header.next_offset)

    def _skip_transactional(self, batch: Any) -> bool:
        """aiokafka's read_committed and control-batch handling; True to skip the batch."""
        if self._isolation_level == _fetcher.READ_COMMITTED and batch.producer_id is not None:
            self._consume_aborted_up_to(batch.base_offset)
            if batch.is_control_batch and self._contains_abort_marker(batch):
                self._aborted_producers.discard(batch.producer_id)
            if batch.is_transactional and batch.producer_id in self._aborted_producers:
                self.next_fetch_offset = batch.next_offset
                return True
        if batch.is_control_batch:
            self.next_fetch_offset = batch.next_offset
            return True
        return False

    def _lenient(self, view: memoryview, header: records.BatchHeader) -> Iterator[Any]:
        tp = self._tp
        for item in records.read_records(view, header, _decompress):
            if isinstance(item, tuple):
                offset, why = item
                yield records.unreadable(tp.topic, tp.partition, offset, why)
                continue
            yield records.Fetched(
                tp.topic,
                tp.partition,
                item.offset,
                item.timestamp,
                item.timestamp_type,
                item.key,
                item.value,
                None,
                len(item.key) if item.key is not None else -1,
                len(item.value) if item.value is not None else -1,
                item.headers,
            )

    def _step_over(self, header: records.BatchHeader, why: str) -> Iterator[Any]:
        """A batch that cannot be read at all: every offset it spans, accounted for."""
        tp = self._tp
        start = max(header.base_offset, self.next_fetch_offset)
        for offset in range(start, header.next_offset):
            yield records.unreadable(tp.topic, tp.partition, offset, why)
        self.next_fetch_offset = max(self.next_fetch_offset, header.next_offset)

    def _legacy(self, view: memoryview) -> Iterator[Any]:
        """A v0/v1 message set (no producer writes these today): aiokafka's reader, guarded."""
        tp = self._tp
        (base,) = struct.unpack_from(">q", view, 0)
        try:
            batch = _MemoryRecords(bytes(view)).next_batch()
            found = [self._consumer_record(tp, r) for r in batch]
        except Exception as exc:
            if base >= self.next_fetch_offset:
                yield records.unreadable(tp.topic, tp.partition, base, f"legacy: {exc!r}")
                self.next_fetch_offset = base + 1
            return
        for record in found:
            if record.offset >= self.next_fetch_offset:
                self.next_fetch_offset = record.offset + 1
                yield record


def install_lenient_reader() -> None:
    """Make every consumer of this process read fetched records through LenientPartitionRecords.

    aiokafka builds both in its fetcher module (`MemoryRecords(...)`, `PartitionRecords(...)`);
    replacing those two names there is the one place its record parsing is wrapped.
    """
    _fetcher.MemoryRecords = _KeptMemoryRecords
    _fetcher.PartitionRecords = LenientPartitionRecords


install_lenient_reader()
