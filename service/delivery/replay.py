"""Dead-letter inspection and replay.

`inspect` reads the DLQ topic from its start to its current end (no consumer group) and lists or
aggregates the letters. `replay` plans first: it takes the DLQ's end offsets, reads up to them,
and selects the letters of its vendor that match the filter and that no earlier replay handled.
Then it feeds exactly those letters, and nothing past the end offsets, through the vendor's
pipeline. Progress is kept in the DLQ itself: once the pipeline has finished a letter (delivered,
or written back as a new letter), the replay appends a small *replay mark* naming the letters it
handled, so a later or resumed replay skips them, whatever filter it has, and a filtered replay
never hides a letter it did not match.
"""

from __future__ import annotations

import asyncio
import bisect
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.config import KafkaConfig
from service.delivery.dlq import (
    RELAY_PREFIX,
    DeadLetter,
    DeadLetterWriter,
    RecordProducer,
    SourceRecord,
    parse_headers,
    to_headers,
)
from service.kafka import client_kwargs

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# A replay mark: which letters (of one DLQ partition) a replay for one vendor has finished.
MARK_VENDOR = "relay-replay-vendor"
MARK_LETTERS = "relay-replay-letters"  # "<partition>:<ranges>", ranges like "0-41,45,47-90"
MARK_AT = "relay-replayed-at"
# Empty polls at a partition's end before its missing planned letters count as deleted
# (aiokafka's position can run ahead of what getmany returned while records are buffered).
_GONE_AFTER_EMPTY_POLLS = 10


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
    replayed: bool = False  # a replay for its vendor has finished it (see replay marks)


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


# ---- replay marks ------------------------------------------------------------------------------


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


def decode_ranges(text: str) -> set[int]:
    """The offsets of `encode_ranges` text; unreadable parts are ignored (marks are data)."""
    offsets: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            continue
        first, last = int(low), int(high or low)
        if 0 <= last - first <= 10_000_000:
            offsets.update(range(first, last + 1))
    return offsets


def mark_headers(
    vendor: str, partition: int, offsets: Iterable[int], at: datetime
) -> list[tuple[str, bytes]]:
    """The headers of a replay mark: this vendor's replay finished these letters."""
    return [
        (MARK_VENDOR, vendor.encode()),
        (MARK_LETTERS, f"{partition}:{encode_ranges(offsets)}".encode()),
        (MARK_AT, at.astimezone(UTC).isoformat().encode()),
    ]


def parse_mark(headers: Iterable[tuple[Any, Any]]) -> tuple[str, int, set[int]] | None:
    """(vendor, partition, offsets) of a replay mark, or None when the record is a letter."""
    found: dict[str, str] = {}
    for key, value in headers or ():
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        if name in (MARK_VENDOR, MARK_LETTERS) and isinstance(value, bytes | str):
            found[name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if MARK_LETTERS not in found:
        return None
    partition, _, ranges = found[MARK_LETTERS].partition(":")
    if not partition.isdigit():
        return found.get(MARK_VENDOR, ""), -1, set()
    return found.get(MARK_VENDOR, ""), int(partition), decode_ranges(ranges)


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
    consumer = await _assigned_consumer(kafka, topic, max_partition_fetch_bytes=1024)
    try:
        return await _high_watermarks(consumer, timeout_s)
    finally:
        await consumer.stop()


async def _read_records(
    kafka: KafkaConfig, topic: str, ends: dict[TopicPartition, int]
) -> list[Any]:
    """Every record below the given end offsets."""
    consumer = await _assigned_consumer(kafka, topic)
    found: list[Any] = []
    try:
        pending = {tp for tp, end in ends.items() if end > 0}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for tp, records in batch.items():
                found.extend(r for r in records if r.offset < ends[tp])
                # position() may run ahead of what was returned; the last offset seen may not
                if records and records[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
        return found
    finally:
        await consumer.stop()


def letters_of(records: Iterable[Any]) -> list[LetterInfo]:
    """The letters among DLQ records, each flagged when a replay mark of its vendor covers it."""
    records = list(records)
    handled: set[tuple[str, int, int]] = set()
    for record in records:
        mark = parse_mark(record.headers or ())
        if mark is not None:
            vendor, partition, offsets = mark
            handled.update((vendor, partition, offset) for offset in offsets)
    letters = []
    for record in records:
        if parse_mark(record.headers or ()) is not None:
            continue
        info = letter_info(record)
        if (info.vendor, info.dlq_partition, info.dlq_offset) in handled:
            info = msgspec.structs.replace(info, replayed=True)
        letters.append(info)
    return letters


async def read_letters(kafka: KafkaConfig, topic: str) -> list[LetterInfo]:
    """Every letter from the start of the DLQ topic to its end as of now (marks applied)."""
    return letters_of(await _read_records(kafka, topic, await end_offsets(kafka, topic)))


class ReplayPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What a replay will do: the DLQ end offsets it stops at and the letters it replays."""

    vendor: str
    ends: dict[int, int]  # DLQ partition → end offset taken when planning
    letters: list[LetterInfo]  # open letters of the vendor matching the filter, in DLQ order

    def positions(self) -> dict[int, list[int]]:
        """The selected letters' offsets per DLQ partition, ascending."""
        by_partition: dict[int, list[int]] = {}
        for info in self.letters:
            by_partition.setdefault(info.dlq_partition, []).append(info.dlq_offset)
        return {p: sorted(offsets) for p, offsets in by_partition.items()}


def select(letters: Iterable[LetterInfo], vendor: str, wanted: LetterFilter) -> list[LetterInfo]:
    """The letters a replay for `vendor` takes: its own, matching, and not yet replayed."""
    only_vendor = msgspec.structs.replace(wanted, vendor=vendor)
    return [i for i in letters if not i.replayed and only_vendor.matches(i)]


async def plan_replay(
    kafka: KafkaConfig, topic: str, vendor: str, wanted: LetterFilter
) -> ReplayPlan:
    """Take the DLQ's end offsets, read up to them, select; dry run and real run both use this."""
    ends = await end_offsets(kafka, topic)
    letters = letters_of(await _read_records(kafka, topic, ends))
    return ReplayPlan(
        vendor=vendor,
        ends={tp.partition: end for tp, end in ends.items()},
        letters=select(letters, vendor, wanted),
    )


def aggregate(letters: Iterable[LetterInfo], by: Sequence[str]) -> list[dict[str, Any]]:
    """Count letters per combination of fields (vendor, reason, status, state, hour, day)."""

    def key(info: LetterInfo) -> tuple[str | int | None, ...]:
        values: list[str | int | None] = []
        for field in by:
            if field == "status":
                values.append(info.http_status)
            elif field == "state":
                values.append("replayed" if info.replayed else "open")
            elif field in ("hour", "day"):
                fmt = "%Y-%m-%dT%H:00Z" if field == "hour" else "%Y-%m-%d"
                values.append(
                    info.failed_at.astimezone(UTC).strftime(fmt) if info.failed_at else None
                )
            else:
                values.append(getattr(info, field) or None)
        return tuple(values)

    counts = Counter(key(info) for info in letters)
    return [
        {**dict(zip(by, k, strict=True)), "count": n}
        for k, n in sorted(
            counts.items(), key=lambda item: (-item[1], tuple(str(v) for v in item[0]))
        )
    ]


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
    missing header can neither break the pipeline nor be copied into a write-back."""
    parsed = parse_headers(record.headers or ())
    kept = [
        (k, v)
        for k, v in record.headers or ()
        if isinstance(k, str) and isinstance(v, bytes) and not k.startswith(RELAY_PREFIX)
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
    return _Letter(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.value,
        to_headers(letter, failed_at),
        getattr(record, "timestamp", None),
    )


class ReplayConsumer:
    """The consumer a replay gives the vendor's pipeline: only the planned letters, never a
    record at or past the end offsets taken when planning, and `commit` appends replay marks.

    It stands in for aiokafka's consumer (the methods the pipeline calls), assigned rather than
    subscribed: a replay joins no consumer group, so it can hide nothing from a later one.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        topic: str,
        plan: ReplayPlan,
        producer: RecordProducer,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._kafka = kafka
        self._topic = topic
        self._vendor = plan.vendor
        self._producer = producer
        self._now = now
        self._wanted = {TopicPartition(topic, p): offs for p, offs in plan.positions().items()}
        self._wanted_sets = {tp: set(offs) for tp, offs in self._wanted.items()}
        self._ends = {TopicPartition(topic, p): end for p, end in plan.ends.items()}
        self._marked: dict[TopicPartition, int] = {}  # commit point already marked
        self._fetching = set(self._wanted)
        self._seen: dict[TopicPartition, int] = {}  # last offset fetched per partition
        self._empty: dict[TopicPartition, int] = {}  # consecutive empty polls at the end
        self._consumer: AIOKafkaConsumer | None = None
        self._listener: Any = None
        self.done = 0  # letters finished and marked
        self.gone = 0  # planned letters no longer in the topic (retention deleted them)
        self.finished = asyncio.Event()
        if not self._wanted:
            self.finished.set()

    @property
    def total(self) -> int:
        """How many letters this replay handles."""
        return sum(len(offsets) for offsets in self._wanted.values())

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        """Remember the pipeline's rebalance listener (the topic is the DLQ's, fixed)."""
        self._listener = listener

    async def start(self) -> None:
        """Assign the planned partitions, seek to each one's first letter, tell the pipeline."""
        consumer = await _assigned_consumer(self._kafka, self._topic)
        self._consumer = consumer
        consumer.assign(list(self._wanted))
        for tp, offsets in self._wanted.items():
            consumer.seek(tp, offsets[0])
        if self._listener is not None:
            await self._listener.on_partitions_assigned(set(self._wanted))

    def assignment(self) -> set[TopicPartition]:
        """The partitions that hold planned letters."""
        return set(self._wanted)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[_Letter]]:
        """The next planned letters; nothing at or past the end offsets, nothing unplanned."""
        if self._consumer is None or not self._fetching:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        batch = await self._consumer.getmany(
            *self._fetching, timeout_ms=timeout_ms, max_records=max_records
        )
        out: dict[TopicPartition, list[_Letter]] = {}
        for tp, records in batch.items():
            wanted, end, last = self._wanted_sets[tp], self._ends[tp], self._wanted[tp][-1]
            kept = [
                canonical(r)
                for r in records
                if r.offset < end and r.offset in wanted and parse_mark(r.headers or ()) is None
            ]
            if kept:
                out[tp] = kept
            if records:
                self._count_gone(tp, {k.offset for k in kept}, records[-1].offset)
            if records and records[-1].offset >= last:
                self._done_fetching(tp)
        for tp in list(self._fetching):
            if tp in batch or await self._consumer.position(tp) < self._ends[tp]:
                self._empty[tp] = 0
                continue
            self._empty[tp] = self._empty.get(tp, 0) + 1
            if self._empty[tp] >= _GONE_AFTER_EMPTY_POLLS:
                # Read to the end, nothing buffered, and planned letters never came: retention
                # removed them; nothing is left to replay of those.
                seen = self._seen.get(tp, -1)
                self.gone += sum(1 for o in self._wanted[tp] if o > seen)
                self._done_fetching(tp)
        for tp, records in batch.items():
            if records:
                self._seen[tp] = records[-1].offset
        if self.done + self.gone >= self.total:
            self.finished.set()
        return out

    def _count_gone(self, tp: TopicPartition, fetched: set[int], upto: int) -> None:
        """Planned letters the fetch went past without feeding are no longer in the topic
        (retention deleted them), so the run does not wait for them."""
        offsets = self._wanted[tp]
        seen = self._seen.get(tp, -1)
        low, high = bisect.bisect_right(offsets, seen), bisect.bisect_right(offsets, upto)
        self.gone += sum(1 for o in offsets[low:high] if o not in fetched)

    def _done_fetching(self, tp: TopicPartition) -> None:
        self._fetching.discard(tp)
        if self._consumer is not None:
            self._consumer.pause(tp)  # its last planned letter is fetched: read no further

    def pause(self, *partitions: TopicPartition) -> None:
        """Stop fetching (the pipeline is at its in-flight cap or the breaker is open)."""
        if self._consumer is not None:
            self._consumer.pause(*partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        """Fetch again, except partitions whose letters were all fetched."""
        if self._consumer is not None:
            self._consumer.resume(*(tp for tp in partitions if tp in self._fetching))

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Every planned letter below these points is finished: append a replay mark for them."""
        for tp, point in offsets.items():
            below = self._marked.get(tp, -1)
            newly = [o for o in self._wanted.get(tp, ()) if below <= o < point]
            if newly:
                await self._producer.send_and_wait(
                    self._topic,
                    value=b"",
                    partition=tp.partition,
                    headers=mark_headers(self._vendor, tp.partition, newly, self._now()),
                )
                self.done += len(newly)
            self._marked[tp] = point
        if self.done + self.gone >= self.total:
            self.finished.set()

    async def committed(self, tp: TopicPartition) -> int | None:
        """The point up to which this run marked its letters."""
        return self._marked.get(tp)

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The end offsets taken when planning (the replay's end, not the topic's)."""
        return {tp: self._ends.get(tp, 0) for tp in partitions}

    def highwater(self, tp: TopicPartition) -> int | None:
        """The planned end offset."""
        return self._ends.get(tp)

    async def stop(self) -> None:
        """Close the underlying consumer."""
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


class WriteBackWriter(DeadLetterWriter):
    """The replay's dead-letter writer: a letter failing again goes back once, with the new
    reason and `relay-attempts` increased (a replay counts as an attempt even when it failed
    before a request was sent, e.g. a mapping the vendor still cannot take)."""

    async def write(self, letter: DeadLetter) -> None:
        """Write the letter with attempts above the replayed letter's."""
        prior = parse_headers(letter.source.headers).attempts
        if letter.attempts <= prior:
            letter = msgspec.structs.replace(letter, attempts=prior + 1)
        await super().write(letter)


async def wait_done(consumer: ReplayConsumer, stop: asyncio.Event) -> None:
    """Return once every planned letter is marked, or when stopped."""
    finished = asyncio.create_task(consumer.finished.wait())
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({finished, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        finished.cancel()
        stopped.cancel()
