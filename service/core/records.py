"""A lenient reader of Kafka v2 record batches, for the batches the fast reader refuses.

aiokafka's reader raises on the first thing it cannot read (a header name that is not UTF-8, a
record cut short, a codec it lacks, a CRC mismatch) and so loses the whole fetch. This reader
keeps what is readable, one record at a time: a header name that is not UTF-8 stays bytes (as
librdkafka keeps it), a record it cannot read becomes an `Unreadable` at its offset, and a batch
whose bytes cannot be read at all (CRC mismatch, undecodable compression) becomes one
`Unreadable` per offset it spans, so every offset is accounted for.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

# Offsets of the v2 batch header fields (KIP-98), and its length.
_BASE_OFFSET = struct.Struct(">q")
_LENGTH = struct.Struct(">i")
_HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_BYTES = _HEADER.size  # 61
LOG_OVERHEAD = 12  # base offset + batch length
CODEC_MASK = 0x07
TRANSACTIONAL_BIT = 0x10
CONTROL_BIT = 0x20
TIMESTAMP_TYPE_BIT = 0x08


class Unreadable(msgspec.Struct, frozen=True, kw_only=True):
    """A record the client could not read; it stands at its offset so it can be dead-lettered."""

    topic: str
    partition: int
    offset: int
    error: str
    timestamp: int = -1
    timestamp_type: int = 0
    key: bytes | None = None
    value: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    checksum: None = None
    serialized_key_size: int = -1
    serialized_value_size: int = -1


class Fetched(msgspec.Struct, frozen=True, gc=False):
    """A fetched record, with the fields of aiokafka's ConsumerRecord: built in C and not
    tracked by the garbage collector (a backlog holds thousands; none can form a cycle)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    checksum: int | None
    serialized_key_size: int
    serialized_value_size: int
    headers: tuple[tuple[str | bytes, bytes | None], ...]


class Record(msgspec.Struct, frozen=True):
    """One record read leniently: header names are str when UTF-8, else the raw bytes."""

    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str | bytes, bytes | None], ...]


class BatchHeader(msgspec.Struct, frozen=True):
    """The fixed-size header of a v2 record batch."""

    base_offset: int
    length: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    first_timestamp: int
    producer_id: int
    record_count: int

    @property
    def next_offset(self) -> int:
        """The offset after the batch's last one."""
        return self.base_offset + self.last_offset_delta + 1

    @property
    def codec(self) -> int:
        """0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd."""
        return self.attributes & CODEC_MASK


def split_batches(buffer: bytes | memoryview) -> Iterator[memoryview]:
    """The whole batches of a fetched message set, in order (a trailing partial one is left)."""
    view = memoryview(buffer)
    pos = 0
    while len(view) - pos >= LOG_OVERHEAD:
        (length,) = _LENGTH.unpack_from(view, pos + 8)
        end = pos + LOG_OVERHEAD + length
        if length < 0 or end > len(view):
            return
        yield view[pos:end]
        pos = end


def read_header(batch: memoryview) -> BatchHeader | None:
    """The batch header, or None when the batch is too short to hold one."""
    if len(batch) < HEADER_BYTES:
        return None
    fields = _HEADER.unpack_from(batch, 0)
    base, length, _epoch, magic, crc, attrs, last_delta, first_ts, _max_ts, pid = fields[:10]
    return BatchHeader(base, length, magic, crc, attrs, last_delta, first_ts, pid, fields[12])


def _varint(buf: memoryview | bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint (Kafka's record encoding) and the position after it."""
    shift = 0
    result = 0
    while True:
        if pos >= len(buf):
            raise ValueError("varint runs past the end of the record")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")
    return (result >> 1) ^ -(result & 1), pos


def _chunk(buf: memoryview, pos: int, end: int) -> tuple[bytes | None, int]:
    length, pos = _varint(buf, pos)
    if length < 0:
        return None, pos
    if pos + length > end:
        raise ValueError("field runs past the end of the record")
    return bytes(buf[pos : pos + length]), pos + length


def _name(raw: bytes | None) -> str | bytes:
    if raw is None:
        raise ValueError("header with a null name")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw  # readable as bytes, as librdkafka keeps it


def _record(buf: memoryview, pos: int, end: int, header: BatchHeader) -> Record:
    pos += 1  # attributes: unused
    ts_delta, pos = _varint(buf, pos)
    offset_delta, pos = _varint(buf, pos)
    key, pos = _chunk(buf, pos, end)
    value, pos = _chunk(buf, pos, end)
    count, pos = _varint(buf, pos)
    if count < 0 or count > end - pos:
        raise ValueError(f"impossible header count {count}")
    headers: list[tuple[str | bytes, bytes | None]] = []
    for _ in range(count):
        name, pos = _chunk(buf, pos, end)
        h_value, pos = _chunk(buf, pos, end)
        headers.append((_name(name), h_value))
    if pos != end:
        raise ValueError("record length does not match its fields")
    ts_type = 1 if header.attributes & TIMESTAMP_TYPE_BIT else 0
    return Record(
        header.base_offset + offset_delta,
        header.first_timestamp + ts_delta,
        ts_type,
        key,
        value,
        tuple(headers),
    )


def read_records(
    batch: memoryview, header: BatchHeader, decompress: Callable[[int, bytes], bytes]
) -> Iterator[Record | tuple[int, str]]:
    """Each record of a CRC-checked batch, or (offset, why) for each one that cannot be read."""
    body: memoryview | bytes = batch[HEADER_BYTES:]
    if header.codec:
        try:
            body = decompress(header.codec, bytes(body))
        except Exception as exc:  # any codec failure: the batch's records are unreadable
            why = f"cannot decompress (codec {header.codec}): {type(exc).__name__}: {exc}"
            for offset in range(header.base_offset, header.next_offset):
                yield offset, why
            return
    buf = memoryview(body)
    pos = 0
    for index in range(header.record_count):
        fallback = header.base_offset + index  # offset deltas equal indexes unless compacted
        try:
            length, start = _varint(buf, pos)
            end = start + length
            if length < 0 or end > len(buf):
                raise ValueError("record runs past the end of the batch")
        except ValueError as exc:
            # The framing is lost: the rest of the batch cannot be told apart.
            for offset in range(fallback, header.next_offset):
                yield offset, f"record framing lost: {exc}"
            return
        try:
            yield _record(buf, start, end, header)
        except ValueError as exc:
            yield fallback, f"unreadable record: {exc}"
        pos = end


def unreadable(topic: str, partition: int, offset: int, why: str, **extra: Any) -> Unreadable:
    """An Unreadable at a record's coordinates."""
    return Unreadable(topic=topic, partition=partition, offset=offset, error=why[:500], **extra)
