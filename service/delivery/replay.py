"""Dead-letter inspection and replay, on Kafka's own primitives.

`inspect` streams the DLQ topic from its start to its current end (no group) and counts or
lists the letters. A replay of a vendor is a member of that vendor's replay group
(`<group_prefix>.<vendor>.replay`): two replays of one vendor at once share the DLQ's partitions
instead of both sending everything. Its progress is the group's committed offset per partition
plus the offsets done above it (service.core.progress, kept with the commit or, on a broker that
drops commit metadata, in the compacted progress topic: service.delivery.progress). A letter is
*retired* for its vendor once that vendor's replay finished it (delivered, skipped, or written
back as a new letter) or `dlq discard` retired it; the rest are open.

Each run first takes the DLQ's end offsets and reads nothing at or past them (so it never sees
its own write-backs). It plans in two streaming passes, memory bounded whatever the DLQ size:
the first collects what retires letters besides the group's progress, namely the replay marks
older versions appended to the DLQ (honoured until the group's commit point passes them) and
write-backs whose letter the progress does not show retired (`relay-replay-of`: a run that
died between a write-back and the progress that retires its letter; the write-back supersedes
it); the second counts the open letters the filter takes.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from service.config import KafkaConfig
from service.core.progress import Progress, decode, encode
from service.core.replay_lane import Lane, Verdict, span_for
from service.delivery.dlq import (
    RELAY_PREFIX,
    DeadLetter,
    DeadLetterWriter,
    SourceRecord,
    parse_headers,
    to_headers,
)
from service.delivery.flow import KEEPALIVE
from service.delivery.progress import GroupProgress, ProgressBook, Restored
from service.kafka import client_kwargs, consumer_kwargs, producer_kwargs

log = logging.getLogger("conversion_relay.replay")
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# A replay mark (written by versions before replay groups; read, never written, now).
MARK_VENDOR = "relay-replay-vendor"
MARK_LETTERS = "relay-replay-letters"  # "<partition>:<ranges>", ranges like "0-41,45,47-90"
MARK_AT = "relay-replayed-at"
# On a write-back: the DLQ position (`<partition>:<offset>`) of the letter it replaces.
REPLAY_OF = "relay-replay-of"
# The relay-* headers a write-back gets from its letter as they were (to_headers writes the rest).
_WRITTEN = frozenset(
    name
    for name, _ in to_headers(
        DeadLetter(
            vendor="",
            reason="",
            error="",
            source=SourceRecord("", 0, 0, None, None),
            http_status=0,
            first_attempt_at=datetime.now(UTC),
            last_attempt_at=datetime.now(UTC),
        ),
        datetime.now(UTC),
    )
)
# A plan shows this many letters as rows; the rest are counted.
PLAN_SAMPLE = 10
# The most a streaming read fetches at once (per partition and per request).
_STREAM_FETCH_BYTES = 256 * 1024
# How often a replay commits the progress of what it only read (not this vendor's, retired).
_SAVE_EVERY_S = 1.0


def replay_group(kafka: KafkaConfig, vendor: str) -> str:
    """The consumer group of a vendor's replays."""
    return f"{kafka.group_prefix}.{vendor}.replay"


class LetterInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a dead letter's headers (and its value's event id) say about it."""

    vendor: str
    reason: str
    error: str
    http_status: int | None
    attempts: int
    failed_at: datetime | None
    source: str  # topic:partition:offset of the original record ("?" for an unknown part)
    dlq_partition: int
    dlq_offset: int
    event_id: str | None = None
    replayed: bool = False  # retired for its vendor (replayed or discarded)


class LetterFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which letters a command is about."""

    vendor: str | None = None
    reason: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    event_id: str | None = None

    def matches(self, info: LetterInfo) -> bool:
        """Whether a letter passes every given criterion."""
        if self.vendor is not None and info.vendor != self.vendor:
            return False
        if self.reason is not None and info.reason != self.reason:
            return False
        if self.event_id is not None and info.event_id != self.event_id:
            return False
        if self.since is not None and (info.failed_at is None or info.failed_at < self.since):
            return False
        return not (
            self.until is not None and (info.failed_at is None or info.failed_at >= self.until)
        )


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time, or a duration ago like `30m`, `2h`, `7d`; ValueError names the forms."""
    match = _RELATIVE.match(text.strip())
    if match:
        ago_s = float(match.group(1)) * _UNIT_S[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=ago_s)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: give an ISO time (2026-12-01T09:30Z) "
            "or a duration ago (30m, 2h, 7d)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class _Keyed(msgspec.Struct):
    event_id: str


_event_id_decoder = msgspec.json.Decoder(_Keyed)


def _event_id(record: Any) -> str | None:
    """The event id from the record's value, else its key (publish keys by event id), if any."""
    try:
        return _event_id_decoder.decode(getattr(record, "value", None) or b"").event_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    key = getattr(record, "key", None)
    if isinstance(key, bytes) and key:
        return key.decode("utf-8", "replace")
    return None


def letter_info(record: Any, replayed: bool = False) -> LetterInfo:
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
        event_id=_event_id(record),
        replayed=replayed,
    )


# ---- replay marks (legacy) ---------------------------------------------------------------------


def encode_ranges(offsets: Iterable[int]) -> str:
    """Ascending offsets as compact ranges: [0, 1, 2, 5, 7, 8] → "0-2,5,7-8"."""
    parts: list[str] = []
    start = prev = None
    for offset in sorted(set(offsets)):
        if prev is not None and offset == prev + 1:
            prev = offset
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = offset
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(parts)


def range_pairs(text: str) -> list[tuple[int, int]]:
    """The (first, last) pairs of `encode_ranges` text, never expanded; unreadable parts are
    ignored (marks are data)."""
    pairs = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            continue
        first, last = int(low), int(high or low)
        if first <= last:
            pairs.append((first, last))
    return pairs


def decode_ranges(text: str) -> set[int]:
    """The offsets of `encode_ranges` text (small texts only: tests and tools)."""
    offsets: set[int] = set()
    for first, last in range_pairs(text):
        if last - first <= 10_000_000:
            offsets.update(range(first, last + 1))
    return offsets


def mark_headers(
    vendor: str, partition: int, offsets: Iterable[int], at: datetime
) -> list[tuple[str, bytes]]:
    """The headers of a replay mark as versions before replay groups wrote them."""
    return [
        (MARK_VENDOR, vendor.encode()),
        (MARK_LETTERS, f"{partition}:{encode_ranges(offsets)}".encode()),
        (MARK_AT, at.astimezone(UTC).isoformat().encode()),
    ]


def _mark_parts(headers: Iterable[tuple[Any, Any]]) -> tuple[str, int, str] | None:
    found: dict[str, str] = {}
    for key, value in headers or ():
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        if name in (MARK_VENDOR, MARK_LETTERS) and isinstance(value, bytes | str):
            found[name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if MARK_LETTERS not in found:
        return None
    partition, _, ranges = found[MARK_LETTERS].partition(":")
    return found.get(MARK_VENDOR, ""), int(partition) if partition.isdigit() else -1, ranges


def parse_mark(headers: Iterable[tuple[Any, Any]]) -> tuple[str, int, set[int]] | None:
    """(vendor, partition, offsets) of a replay mark, or None when the record is a letter."""
    parts = _mark_parts(headers)
    if parts is None:
        return None
    vendor, partition, ranges = parts
    return vendor, partition, decode_ranges(ranges) if partition >= 0 else set()


class Intervals:
    """Offsets as merged (first, last) intervals: a mark naming a million offsets is one pair."""

    __slots__ = ("_firsts", "_lasts", "_pairs")

    def __init__(self) -> None:
        self._pairs: list[tuple[int, int]] = []
        self._firsts: list[int] = []
        self._lasts: list[int] = []

    def add(self, first: int, last: int) -> None:
        """Add [first, last] (call `seal` before asking)."""
        self._pairs.append((first, last))

    def seal(self) -> None:
        """Merge what was added."""
        merged: list[tuple[int, int]] = []
        for first, last in sorted(self._pairs):
            if merged and first <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], last))
            else:
                merged.append((first, last))
        self._pairs = merged
        self._firsts = [f for f, _ in merged]
        self._lasts = [last for _, last in merged]

    def __contains__(self, offset: object) -> bool:
        if not isinstance(offset, int):
            return False
        i = bisect.bisect_right(self._firsts, offset) - 1
        return i >= 0 and offset <= self._lasts[i]


# ---- what retires letters ----------------------------------------------------------------------


class Retired:
    """Per vendor and DLQ partition: the replay group's commit point and progress above it,
    legacy replay marks, and letters superseded by a write-back the progress does not show."""

    def __init__(self) -> None:
        self.points: dict[tuple[str, int], int] = {}  # (vendor, partition) → committed offset
        self.done: dict[tuple[str, int], frozenset[int]] = {}  # done above the commit point
        self.marks: dict[tuple[str, int], Intervals] = {}
        self.superseded: set[tuple[str, int, int]] = set()

    def by_progress(self, vendor: str, partition: int, offset: int) -> bool:
        """Whether the vendor's replay group has this letter done."""
        point = self.points.get((vendor, partition))
        if point is not None and offset < point:
            return True
        return offset in self.done.get((vendor, partition), frozenset())

    def __call__(self, vendor: str, partition: int, offset: int) -> bool:
        """Whether the letter is retired for its vendor."""
        if self.by_progress(vendor, partition, offset):
            return True
        marks = self.marks.get((vendor, partition))
        if marks is not None and offset in marks:
            return True
        return (vendor, partition, offset) in self.superseded

    def start(self, vendor: str, partition: int) -> int:
        """The first offset a vendor's replay has to read in a partition."""
        return self.points.get((vendor, partition), 0)


def replay_of(headers: Iterable[tuple[Any, Any]]) -> tuple[int, int] | None:
    """The DLQ position a write-back replaces, if it names one."""
    for key, value in headers or ():
        if key == REPLAY_OF and isinstance(value, bytes):
            partition, _, offset = value.decode("ascii", "replace").partition(":")
            if partition.isdigit() and offset.isdigit():
                return int(partition), int(offset)
    return None


async def load_progress(
    kafka: KafkaConfig, vendor: str, partitions: Iterable[TopicPartition], retired: Retired
) -> None:
    """Read a vendor's replay group's committed offsets and progress into `retired`."""
    group = replay_group(kafka, vendor)
    consumer = AIOKafkaConsumer(**client_kwargs(kafka), group_id=group, enable_auto_commit=False)
    await consumer.start()
    book = ProgressBook(kafka, None)
    try:
        loaded = await GroupProgress(consumer, group, book).load(list(partitions))
    finally:
        await book.close()
        await consumer.stop()
    for tp, (offset, kept) in loaded.items():
        if offset is not None:
            retired.points[(vendor, tp.partition)] = offset
        if kept is not None:
            retired.done[(vendor, tp.partition)] = frozenset(kept.done)


# ---- reading the DLQ ---------------------------------------------------------------------------


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
    # A small fetch: it is only read for its high watermark (the embedded broker answers a
    # partition limit alone with everything it has, so the request's limit is small too).
    consumer = await _assigned_consumer(
        kafka, topic, max_partition_fetch_bytes=1024, fetch_max_bytes=1024
    )
    try:
        return await _high_watermarks(consumer, timeout_s)
    finally:
        await consumer.stop()


async def stream_records(
    kafka: KafkaConfig,
    topic: str,
    ends: dict[TopicPartition, int],
    starts: Callable[[TopicPartition], int] | None = None,
) -> AsyncIterator[Any]:
    """Every record from each partition's start (its beginning by default) below its end, in
    batches, holding none. A partition is read once the consumer's position reached its end with
    nothing more returned: an emptied partition (log start = end, retention) ends at once, and
    records retention deletes meanwhile are simply not there."""
    # Small fetches: what is buffered ahead of the reader, not the DLQ's size, bounds memory.
    consumer = await _assigned_consumer(
        kafka,
        topic,
        max_partition_fetch_bytes=_STREAM_FETCH_BYTES,
        fetch_max_bytes=_STREAM_FETCH_BYTES,
    )
    try:
        if starts is not None:
            for tp in ends:
                start = starts(tp)
                if start > 0:
                    consumer.seek(tp, start)
        pending = {tp for tp, end in ends.items() if end > 0}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=200)
            for tp, records in batch.items():
                end = ends[tp]
                for record in records:
                    if record.offset < end:
                        yield record
                if records and records[-1].offset + 1 >= end:
                    pending.discard(tp)
            for tp in list(pending):
                if not batch.get(tp) and await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()


def _is_mark(record: Any) -> bool:
    return _mark_parts(record.headers or ()) is not None


async def collect_retired(
    kafka: KafkaConfig,
    topic: str,
    ends: dict[TopicPartition, int],
    vendors: Sequence[str],
) -> Retired:
    """What retires letters for these vendors: their replay groups' progress, then one pass for
    legacy marks and superseding write-backs (only those the progress does not cover are kept)."""
    retired = Retired()
    for vendor in vendors:
        await load_progress(kafka, vendor, ends, retired)

    def start(tp: TopicPartition) -> int:
        return min((retired.start(v, tp.partition) for v in vendors), default=0)

    async for record in stream_records(kafka, topic, ends, starts=start):
        headers = record.headers or ()
        parts = _mark_parts(headers)
        if parts is not None:
            vendor, partition, ranges = parts
            if partition >= 0 and vendor in vendors:
                marks = retired.marks.setdefault((vendor, partition), Intervals())
                for low, high in range_pairs(ranges):
                    marks.add(low, high)
            continue
        target = replay_of(headers)
        if target is not None:
            vendor = parse_headers(headers).vendor
            if not retired.by_progress(vendor, *target):
                retired.superseded.add((vendor, *target))
    for marks in retired.marks.values():
        marks.seal()
    return retired


def letters_of(records: Iterable[Any]) -> list[LetterInfo]:
    """The letters among DLQ records (a list), each flagged when a legacy replay mark of its
    vendor among them covers it."""
    records = list(records)
    marks: dict[tuple[str, int], Intervals] = {}
    for record in records:
        parts = _mark_parts(record.headers or ())
        if parts is not None and parts[1] >= 0:
            covered = marks.setdefault((parts[0], parts[1]), Intervals())
            for low, high in range_pairs(parts[2]):
                covered.add(low, high)
    for covered in marks.values():
        covered.seal()
    letters = []
    for record in records:
        if _is_mark(record):
            continue
        info = letter_info(record)
        of_vendor = marks.get((info.vendor, info.dlq_partition))
        if of_vendor is not None and info.dlq_offset in of_vendor:
            info = msgspec.structs.replace(info, replayed=True)
        letters.append(info)
    return letters


async def iter_letters(
    kafka: KafkaConfig,
    topic: str,
    vendors: Sequence[str] | None = None,
    ends: dict[TopicPartition, int] | None = None,
) -> AsyncIterator[LetterInfo]:
    """Every letter from the start of the DLQ topic to its end as of now (or `ends`), flagged
    when retired for its vendor (`vendors`: whose replay groups to read; default all seen)."""
    async for _, info in iter_records(kafka, topic, vendors, ends):
        yield info


async def iter_records(
    kafka: KafkaConfig,
    topic: str,
    vendors: Sequence[str] | None = None,
    ends: dict[TopicPartition, int] | None = None,
) -> AsyncIterator[tuple[Any, LetterInfo]]:
    """`iter_letters` with each letter's record (headers, key and value as stored)."""
    if ends is None:
        ends = await end_offsets(kafka, topic)
    if vendors is None:
        seen: set[str] = set()
        async for record in stream_records(kafka, topic, ends):
            if not _is_mark(record):
                seen.add(parse_headers(record.headers or ()).vendor)
        vendors = sorted(v for v in seen if v)
    retired = await collect_retired(kafka, topic, ends, vendors)
    async for record in stream_records(kafka, topic, ends):
        if _is_mark(record):
            continue
        info = letter_info(record)
        if retired(info.vendor, info.dlq_partition, info.dlq_offset):
            info = msgspec.structs.replace(info, replayed=True)
        yield record, info


async def follow_letters(
    kafka: KafkaConfig, topic: str, starts: dict[TopicPartition, int]
) -> AsyncIterator[LetterInfo]:
    """The letters written from `starts` on, as they arrive, until cancelled (all open: a
    replay never retires a letter it has not read, and it reads nothing written after it
    started)."""
    consumer = await _assigned_consumer(kafka, topic, max_partition_fetch_bytes=_STREAM_FETCH_BYTES)
    try:
        for tp, start in starts.items():
            consumer.seek(tp, start)
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    if not _is_mark(record):
                        yield letter_info(record)
    finally:
        await consumer.stop()


async def read_letters(
    kafka: KafkaConfig, topic: str, vendors: Sequence[str] | None = None
) -> list[LetterInfo]:
    """`iter_letters` as a list (small DLQs: tests and tools)."""
    return [info async for info in iter_letters(kafka, topic, vendors)]


class ReplayPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What a replay will do: the DLQ end offsets it stops at, how many letters it replays
    (counted by reason and status), and the first few of them."""

    vendor: str
    ends: dict[int, int]  # DLQ partition → end offset taken when planning
    count: int
    by: list[dict[str, Any]]  # open letters counted by reason and status
    sample: list[LetterInfo]  # the first PLAN_SAMPLE letters, in DLQ order
    retired: Any = None  # the Retired read when planning (marks, superseded letters)


def take(info: LetterInfo, vendor: str, wanted: LetterFilter, retired: Retired) -> bool:
    """Whether a replay for `vendor` sends this letter: its own, open, matching."""
    if info.vendor != vendor or retired(vendor, info.dlq_partition, info.dlq_offset):
        return False
    return msgspec.structs.replace(wanted, vendor=vendor).matches(info)


def select(letters: Iterable[LetterInfo], vendor: str, wanted: LetterFilter) -> list[LetterInfo]:
    """The letters a replay for `vendor` takes from a list: its own, matching, not retired."""
    only_vendor = msgspec.structs.replace(wanted, vendor=vendor)
    return [i for i in letters if not i.replayed and only_vendor.matches(i)]


async def plan_replay(
    kafka: KafkaConfig, topic: str, vendor: str, wanted: LetterFilter
) -> ReplayPlan:
    """Take the DLQ's end offsets, stream up to them, count; dry run and real run both use it."""
    ends = await end_offsets(kafka, topic)
    retired = await collect_retired(kafka, topic, ends, [vendor])
    counts: Counter[tuple[str, int | None]] = Counter()
    sample: list[LetterInfo] = []
    async for record in stream_records(
        kafka, topic, ends, starts=lambda tp: retired.start(vendor, tp.partition)
    ):
        if _is_mark(record):
            continue
        info = letter_info(record)
        if not take(info, vendor, wanted, retired):
            continue
        counts[(info.reason, info.http_status)] += 1
        if len(sample) < PLAN_SAMPLE:
            sample.append(info)
    by = [
        {"reason": reason or None, "status": status, "count": n}
        for (reason, status), n in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    ]
    return ReplayPlan(
        vendor=vendor,
        ends={tp.partition: end for tp, end in ends.items()},
        count=sum(counts.values()),
        by=by,
        sample=sample,
        retired=retired,
    )


def group_key(info: LetterInfo, by: Sequence[str]) -> tuple[str | int | None, ...]:
    """A letter's values of the fields it is counted by (vendor, reason, status, state, ...)."""
    values: list[str | int | None] = []
    for field in by:
        if field == "status":
            values.append(info.http_status)
        elif field == "state":
            values.append("replayed" if info.replayed else "open")
        elif field in ("hour", "day"):
            fmt = "%Y-%m-%dT%H:00Z" if field == "hour" else "%Y-%m-%d"
            values.append(info.failed_at.astimezone(UTC).strftime(fmt) if info.failed_at else None)
        else:
            values.append(getattr(info, field) or None)
    return tuple(values)


def count_rows(
    counts: Counter[tuple[str | int | None, ...]], by: Sequence[str]
) -> list[dict[str, Any]]:
    """Rows of counts per combination of fields, largest first (ties by value)."""
    return [
        {**dict(zip(by, k, strict=True)), "count": n}
        for k, n in sorted(
            counts.items(), key=lambda item: (-item[1], tuple(str(v) for v in item[0]))
        )
    ]


def aggregate(letters: Iterable[LetterInfo], by: Sequence[str]) -> list[dict[str, Any]]:
    """Count letters per combination of fields (vendor, reason, status, state, hour, day)."""
    return count_rows(Counter(group_key(info, by) for info in letters), by)


AGGREGATE_FIELDS = ("vendor", "reason", "status", "hour", "day")


# ---- feeding the pipeline ----------------------------------------------------------------------


class _Letter(msgspec.Struct, frozen=True):
    """A DLQ record as the pipeline sees it during a replay (headers made canonical)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    timestamp: int | None = None


def canonical(record: Any) -> _Letter:
    """The record with its relay-* headers rewritten by the one codec, so a null, non-UTF-8 or
    missing header can neither break the pipeline nor be copied into a write-back; the relay-*
    headers the codec does not write (`relay-value-truncated-from`, ...) are kept as they are,
    and `relay-replay-of` names this letter's DLQ position for a write-back to carry."""
    parsed = parse_headers(record.headers or ())
    kept = [
        (k, v)
        for k, v in record.headers or ()
        if isinstance(k, str) and isinstance(v, bytes) and not k.startswith(RELAY_PREFIX)
    ]
    extra = [
        (k, v)
        for k, v in record.headers or ()
        if isinstance(k, str)
        and isinstance(v, bytes)
        and k.startswith(RELAY_PREFIX)
        and k not in _WRITTEN
        and k != REPLAY_OF
    ]
    topic, partition, offset = parsed.source_topic, parsed.source_partition, parsed.source_offset
    if topic is None or partition is None or offset is None:
        # The original position is unreadable: the letter's own DLQ position stands in for it.
        topic, partition, offset = record.topic, record.partition, record.offset
    source = SourceRecord(topic, partition, offset, record.key, record.value, kept)
    letter = DeadLetter(
        vendor=parsed.vendor,
        reason=parsed.reason,
        error=parsed.error,
        source=source,
        http_status=parsed.http_status,
        attempts=parsed.attempts,
        first_attempt_at=parsed.first_attempt_at,
        last_attempt_at=parsed.last_attempt_at,
    )
    failed_at = parsed.failed_at or datetime.fromtimestamp(0, UTC)
    headers = to_headers(letter, failed_at)
    headers += extra
    headers.append((REPLAY_OF, f"{record.partition}:{record.offset}".encode()))
    return _Letter(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.value,
        headers,
        getattr(record, "timestamp", None),
    )


class ReplaySource:
    """The consumer a replay gives the vendor's pipeline: a member of the vendor's replay group
    on the DLQ topic that feeds only the letters to send, never a record at or past the end
    offsets taken when planning, and keeps the group's progress exactly (service.core.replay_lane).

    It also is the pipeline's progress store (`save`/`load`): the pipeline says which fed
    letters finished, this commits the group's offsets and progress above them.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        topic: str,
        vendor: str,
        wanted: LetterFilter,
        plan: ReplayPlan,
        producer: Any,
    ) -> None:
        self._topic = topic
        self._vendor = vendor
        self._wanted = msgspec.structs.replace(wanted, vendor=vendor)
        self._retired: Retired = plan.retired if plan.retired is not None else Retired()
        self._ends = {TopicPartition(topic, p): end for p, end in plan.ends.items()}
        self.group = replay_group(kafka, vendor)
        kwargs = consumer_kwargs(kafka, self.group)
        kwargs["auto_offset_reset"] = "earliest"
        # Small fetches: a replay is not throughput-bound by them, and what aiokafka buffers
        # ahead (raw and decoded) is most of its memory (127.8 → 101.7 MiB peak over 5,000).
        kwargs["fetch_max_bytes"] = min(kafka.fetch_max_bytes, _STREAM_FETCH_BYTES)
        kwargs["max_partition_fetch_bytes"] = _STREAM_FETCH_BYTES
        self._consumer = AIOKafkaConsumer(**kwargs)
        # The progress topic gets a producer of its own: the embedded Tansu answers a metadata
        # request for two topics with one, and the write-back producer would lose its topic.
        self._book = ProgressBook(kafka, None, make_producer=lambda: _started_producer(kafka))
        self._group = GroupProgress(self._consumer, self.group, self._book)
        self._span = span_for(self._book.max_chars)
        self.lanes: dict[TopicPartition, Lane] = {}
        self._listener: Any = None
        self._flow_paused: set[TopicPartition] = set()
        self._stopping = False
        self._last_save_s = 0.0
        self.assigned_once = False
        self._rebalancing = False  # between a revocation and the assignment that follows
        self.finished = asyncio.Event()
        self.sent = 0  # letters this run finished (delivered, skipped or written back)
        self.left_in_flight = 0  # letters fed and not finished when the run stopped

    # ---- the pipeline's consumer -----------------------------------------------------------

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        """Join the vendor's replay group on the DLQ topic; the pipeline's listener is told
        after the partitions' progress was read."""
        self._listener = listener
        self._consumer.subscribe([self._topic], listener=_Rebalance(self))

    async def start(self) -> None:
        """Connect and join."""
        await self._consumer.start()

    def assignment(self) -> set[TopicPartition]:
        """The partitions this member owns."""
        return set(self.lanes)

    def stop_feeding(self) -> None:
        """Stop: no letter is fed any more (in-flight ones finish in the pipeline's grace)."""
        self._stopping = True

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[_Letter]]:
        """The next letters to send; everything read is classified in its lane.

        Only the partitions asked for and not paused are read (`KEEPALIVE` when none: the call
        still polls for the group): aiokafka throws away what it fetched for a partition that a
        getmany finds paused and fetches it again, and at the pipeline's caps that re-read most
        of every fetch and left each thrown-away batch to the collector.
        """
        self._apply_pauses()
        paused = self._paused() if not self._stopping else set(self.lanes)
        asked = partitions or tuple(self.lanes)
        fetchable = tuple(tp for tp in asked if tp in self.lanes and tp not in paused)
        batch = await self._consumer.getmany(
            *(fetchable or (KEEPALIVE,)), timeout_ms=timeout_ms, max_records=max_records
        )
        out: dict[TopicPartition, list[_Letter]] = {}
        for tp, records in batch.items():
            lane = self.lanes.get(tp)
            if lane is None or self._stopping:
                continue  # revoked meanwhile, or stopping: the next reader gets them again
            kept = self._classify(tp, lane, records)
            if kept:
                out[tp] = kept
        for tp, lane in self.lanes.items():
            if (
                not lane.read_to_end
                and not batch.get(tp)
                and tp not in self._paused()
                and await self._consumer.position(tp) >= lane.end
            ):
                lane.reach(lane.end)  # read to the end (or nothing is left there)
        if time.monotonic() - self._last_save_s >= _SAVE_EVERY_S or self._all_complete():
            await self.save_lanes()
        self.check_finished()
        return out

    def _classify(self, tp: TopicPartition, lane: Lane, records: list[Any]) -> list[_Letter]:
        kept = []
        vendor, retired = self._vendor, self._retired
        for record in records:
            offset = record.offset
            if offset < lane.scanned:
                continue  # fetched again after a seek
            if offset >= lane.end:
                lane.reach(lane.end)
                break
            if lane.full:  # read this again once the head is done
                self._consumer.seek(tp, offset)
                break
            headers = record.headers or ()
            if lane.retired(offset) or _mark_parts(headers) is not None:
                lane.advance(offset, Verdict.DONE)
                continue
            info = letter_info(record)
            if info.vendor != vendor or retired(vendor, record.partition, offset):
                lane.advance(offset, Verdict.DONE)
            elif self._wanted.matches(info):
                lane.advance(offset, Verdict.SEND)
                kept.append(canonical(record))
            else:
                lane.advance(offset, Verdict.HOLD)
        return kept

    def _paused(self) -> set[TopicPartition]:
        stopped = {tp for tp, lane in self.lanes.items() if lane.full or lane.read_to_end}
        return self._flow_paused | stopped

    def _apply_pauses(self) -> None:
        paused = self._paused() if not self._stopping else set(self.lanes)
        assigned = set(self._consumer.assignment())
        pause = paused & assigned
        resume = assigned - paused
        if pause:
            self._consumer.pause(*pause)
        if resume:
            self._consumer.resume(*resume)

    def pause(self, *partitions: TopicPartition) -> None:
        """The pipeline is at its caps for these."""
        self._flow_paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        """The pipeline has room for these again."""
        self._flow_paused.difference_update(partitions)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Fed letters below these points are finished (a pipeline without a store)."""
        for tp, point in offsets.items():
            lane = self.lanes.get(tp)
            if lane is not None:
                for offset in lane.pending:
                    if offset < point and lane.finish(offset):
                        self.sent += 1
        await self.save_lanes()

    async def committed(self, tp: TopicPartition) -> int | None:
        """The group's commit point as this member keeps it."""
        lane = self.lanes.get(tp)
        return lane.commit_point() if lane is not None else None

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The end offsets taken when planning (the replay's end, not the topic's)."""
        return {tp: self._ends.get(tp, 0) for tp in partitions}

    def highwater(self, tp: TopicPartition) -> int | None:
        """The planned end offset."""
        return self._ends.get(tp)

    async def stop(self) -> None:
        """Commit what every lane finished, leave the group, close."""
        self.left_in_flight = sum(len(lane.pending) for lane in self.lanes.values())
        await self.save_lanes(force=True)
        await self._consumer.stop()
        await self._book.close()

    # ---- the pipeline's progress store -----------------------------------------------------

    @property
    def max_chars(self) -> int:
        """The pipeline's own progress text is read here, never sent: no broker limit."""
        return 1 << 20

    async def save(self, entries: dict[TopicPartition, tuple[int, str]]) -> None:
        """The pipeline's progress: fed letters below its point, or done above it, finished."""
        for tp, (point, text) in entries.items():
            lane = self.lanes.get(tp)
            if lane is None:
                continue
            kept = decode(text)
            done = set(kept.done) if kept is not None else set()
            for offset in lane.pending:
                if (offset < point or offset in done) and lane.finish(offset):
                    self.sent += 1
        await self.save_lanes()
        self.check_finished()

    async def load(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, Restored]:
        """Nothing for the pipeline to restore: the lanes hold the group's progress."""
        return {tp: (None, None) for tp in partitions}

    # ---- the group's progress --------------------------------------------------------------

    async def save_lanes(
        self, lanes: Iterable[TopicPartition] | None = None, force: bool = False
    ) -> None:
        """Commit each changed lane's commit point with the offsets done above it."""
        chosen = list(self.lanes) if lanes is None else [tp for tp in lanes if tp in self.lanes]
        entries: dict[TopicPartition, tuple[int, str]] = {}
        marks: dict[TopicPartition, int] = {}
        for tp in chosen:
            lane = self.lanes[tp]
            if not lane.unsaved and not force:
                continue
            kept: Progress = lane.progress()
            entries[tp] = (kept.base, encode(kept, self._book.max_chars))
            marks[tp] = lane.changes
        self._last_save_s = time.monotonic()
        if not entries:
            return
        try:
            await self._group.save(entries)
        except KafkaError as exc:
            log.warning("replay progress not committed: %r", exc, extra={"vendor": self._vendor})
            return
        for tp, change in marks.items():
            self.lanes[tp].saved = change

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """The pipeline finishes what it started of these, then their progress is committed."""
        self._rebalancing = True
        if self._listener is not None:
            await self._listener.on_partitions_revoked(revoked)
        await self.save_lanes(revoked)
        for tp in revoked:
            self.lanes.pop(tp, None)
            self._flow_paused.discard(tp)  # the pipeline forgets its pauses of these too
        self.check_finished()

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Read the group's progress for new partitions, seek to it, then tell the pipeline."""
        loaded = await self._group.load(assigned)
        for tp in assigned:
            committed, kept = loaded.get(tp, (None, None))
            base = committed if committed is not None else 0
            lane = Lane(base, kept.done if kept else (), self._ends.get(tp, 0), self._span)
            self.lanes[tp] = lane
            self._consumer.seek(tp, base)
        self.assigned_once = True
        self._rebalancing = False
        if self._listener is not None:
            await self._listener.on_partitions_assigned(assigned)
        self.check_finished()

    def _all_complete(self) -> bool:
        return all(lane.complete for lane in self.lanes.values())

    def check_finished(self) -> None:
        """Done once this member was assigned (not in the middle of a rebalance: an empty
        assignment then says nothing) and everything it owns is complete and committed."""
        if (
            self.assigned_once
            and not self._rebalancing
            and self._all_complete()
            and not any(lane.unsaved for lane in self.lanes.values())
        ):
            self.finished.set()

    def retire(self, tp: TopicPartition, offsets: Iterable[int]) -> None:
        """Finish fed letters without sending them (`dlq discard`)."""
        lane = self.lanes.get(tp)
        if lane is None:
            return
        for offset in offsets:
            if lane.finish(offset):
                self.sent += 1

    @property
    def held(self) -> int:
        """Open letters of the vendor the filter left, in the partitions this member read."""
        return sum(lane.held for lane in self.lanes.values())

    @property
    def blocked(self) -> list[int]:
        """Partitions whose span is full: a filtered replay left letters it cannot read past."""
        return [
            tp.partition for tp, lane in self.lanes.items() if lane.full and not lane.read_to_end
        ]


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: ReplaySource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._source.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._source.on_assigned(set(assigned))


class WriteBackWriter(DeadLetterWriter):
    """The replay's dead-letter writer: a letter failing again goes back once, with the new
    reason, `relay-attempts` increased (a replay counts as an attempt even when it failed
    before a request was sent, e.g. a mapping the vendor still cannot take), every relay-*
    header the codec does not write kept, and `relay-replay-of` naming the letter it replaces."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reasons: Counter[str] = Counter()

    async def write(self, letter: DeadLetter, extra: Sequence[tuple[str, bytes]] = ()) -> None:
        """Write the letter with attempts above the replayed letter's."""
        headers = letter.source.headers
        prior = parse_headers(headers).attempts
        if letter.attempts <= prior:
            letter = msgspec.structs.replace(letter, attempts=prior + 1)
        kept = [
            (k, v)
            for k, v in headers
            if isinstance(k, str)
            and isinstance(v, bytes)
            and k.startswith(RELAY_PREFIX)
            and k not in _WRITTEN
        ]
        await super().write(letter, extra=[*kept, *extra])
        self.reasons[letter.reason] += 1


async def discard_letters(
    kafka: KafkaConfig,
    topic: str,
    vendor: str,
    wanted: LetterFilter,
    plan: ReplayPlan,
    producer: Any,
    stop: asyncio.Event,
) -> ReplaySource:
    """Retire the open letters a replay with this filter would send, sending nothing: as a
    member of the vendor's replay group, so a replay running meanwhile never sends them."""
    source = ReplaySource(kafka, topic, vendor, wanted, plan, producer)
    source.subscribe([topic])
    await source.start()
    try:
        while not source.finished.is_set() and not stop.is_set():
            batch = await source.getmany(timeout_ms=200)
            for tp, letters in batch.items():
                source.retire(tp, [letter.offset for letter in letters])
            if batch:
                await source.save_lanes()
                source.check_finished()
    finally:
        source.stop_feeding()
        await source.stop()
    return source


async def _started_producer(kafka: KafkaConfig) -> AIOKafkaProducer:
    """A started producer (for the progress topic alone)."""
    producer = AIOKafkaProducer(**producer_kwargs(kafka))
    await asyncio.wait_for(producer.start(), 30)
    return producer
