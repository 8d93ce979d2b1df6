"""Dead-letter inspection and replay.

`inspect` reads the DLQ topic from its start to its current end (no consumer group) and lists or
aggregates the letters. `replay` re-delivers matching letters to one vendor through the same
pipeline, sender and dead-letter writer as live traffic, under its own consumer group
(`<group_prefix>.replay.<vendor>`) so an interrupted replay resumes where it stopped; letters
that fail again go back to the DLQ with their attempt count increased.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.config import KafkaConfig
from service.delivery.dlq import parse_headers
from service.kafka import client_kwargs

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class LetterInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a dead letter's headers say about it."""

    vendor: str
    reason: str
    error: str
    http_status: int | None
    attempts: int
    failed_at: datetime | None
    source: str  # topic:partition:offset of the original record
    dlq_partition: int
    dlq_offset: int


class LetterFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which letters a command is about."""

    vendor: str | None = None
    reason: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, info: LetterInfo) -> bool:
        """Whether a letter passes every given criterion."""
        if self.vendor is not None and info.vendor != self.vendor:
            return False
        if self.reason is not None and info.reason != self.reason:
            return False
        if self.since is not None and (info.failed_at is None or info.failed_at < self.since):
            return False
        return not (
            self.until is not None and (info.failed_at is None or info.failed_at >= self.until)
        )


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time, or a duration ago like `30m`, `2h`, `7d`."""
    match = _RELATIVE.match(text.strip())
    if match:
        ago_s = float(match.group(1)) * _UNIT_S[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=ago_s)
    moment = datetime.fromisoformat(text.strip())
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def letter_info(record: Any) -> LetterInfo:
    """Read a DLQ record's relay-* headers (absent or unreadable ones become empty values)."""
    parsed = parse_headers(record.headers or ())
    return LetterInfo(
        vendor=parsed.vendor,
        reason=parsed.reason,
        error=parsed.error,
        http_status=parsed.http_status,
        attempts=parsed.attempts,
        failed_at=parsed.failed_at,
        source=":".join(
            "?" if part is None else str(part)
            for part in (parsed.source_topic, parsed.source_partition, parsed.source_offset)
        ),
        dlq_partition=record.partition,
        dlq_offset=record.offset,
    )


async def _assigned_consumer(kafka: KafkaConfig, topic: str, **extra: Any) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        **client_kwargs(kafka),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=kafka.isolation_level,
        **extra,
    )
    await consumer.start()
    partitions = [
        TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
    ]
    consumer.assign(partitions)
    if partitions:
        await consumer.seek_to_beginning(*partitions)
    return consumer


async def _high_watermarks(
    consumer: AIOKafkaConsumer, timeout_s: float
) -> dict[TopicPartition, int]:
    """End offsets as the larger of ListOffsets and a fetch's high watermark.

    The embedded Tansu broker answers ListOffsets(latest) with the last batch's base offset + 1,
    which undercounts batched topics; a fetch response's high watermark is right on both.
    """
    partitions = list(consumer.assignment())
    if not partitions:
        return {}
    listed: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline and any(consumer.highwater(tp) is None for tp in partitions):
        await consumer.getmany(timeout_ms=100, max_records=1)
    return {tp: max(listed.get(tp, 0), consumer.highwater(tp) or 0) for tp in partitions}


async def end_offsets(
    kafka: KafkaConfig, topic: str, timeout_s: float = 5.0
) -> dict[TopicPartition, int]:
    """The current end offset of every partition of a topic."""
    consumer = await _assigned_consumer(kafka, topic, max_partition_fetch_bytes=1024)
    try:
        return await _high_watermarks(consumer, timeout_s)
    finally:
        await consumer.stop()


async def read_letters(kafka: KafkaConfig, topic: str) -> list[LetterInfo]:
    """Every letter from the start of the DLQ topic to its end as of now."""
    ends = await end_offsets(kafka, topic)
    consumer = await _assigned_consumer(kafka, topic)
    letters: list[LetterInfo] = []
    try:
        pending = {tp for tp, end in ends.items() if end > 0}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < ends[tp]:
                        letters.append(letter_info(record))
                # position() may run ahead of what was returned; the last offset seen may not
                if records and records[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
        return letters
    finally:
        await consumer.stop()


def aggregate(letters: Iterable[LetterInfo], by: list[str]) -> list[dict[str, Any]]:
    """Count letters per combination of the given fields (vendor, reason, status, hour, day)."""

    def key(info: LetterInfo) -> tuple[str, ...]:
        values = []
        for field in by:
            if field == "status":
                values.append(str(info.http_status or "-"))
            elif field in ("hour", "day"):
                fmt = "%Y-%m-%dT%H:00Z" if field == "hour" else "%Y-%m-%d"
                values.append(
                    info.failed_at.astimezone(UTC).strftime(fmt) if info.failed_at else "-"
                )
            else:
                values.append(str(getattr(info, field)))
        return tuple(values)

    counts = Counter(key(info) for info in letters)
    return [
        {**dict(zip(by, k, strict=True)), "count": n}
        for k, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    ]


def record_filter(letters: LetterFilter) -> Callable[[Any], str | None]:
    """The pipeline's accept hook for a replay: None to replay a record, else why not."""

    def accept(record: Any) -> str | None:
        return None if letters.matches(letter_info(record)) else "replay_filtered"

    return accept


async def wait_caught_up(
    committed: Callable[[], Awaitable[dict[TopicPartition, int]]],
    ends: dict[TopicPartition, int],
    stop: asyncio.Event,
    poll_s: float = 0.2,
) -> None:
    """Return once every partition's commit reached its end offset (or when stopped)."""
    targets = {tp: end for tp, end in ends.items() if end > 0}
    while not stop.is_set():
        done = await committed()
        if all(done.get(tp, 0) >= end for tp, end in targets.items()):
            return
        await asyncio.sleep(poll_s)
