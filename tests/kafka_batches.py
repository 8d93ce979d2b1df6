"""Kafka v2 record batches built byte by byte, for records no well-behaved client would write."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from aiokafka import codec
from aiokafka.record.util import calc_crc32c

Header = tuple[bytes | None, bytes | None]
RecordSpec = tuple[bytes | None, bytes | None, Sequence[Header]]


def _varint(value: int) -> bytes:
    value = (value << 1) ^ (value >> 63)  # zigzag
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _chunk(data: bytes | None) -> bytes:
    return _varint(-1) if data is None else _varint(len(data)) + data


def encode_record(
    delta: int, key: bytes | None, value: bytes | None, headers: Sequence[Header]
) -> bytes:
    """One record of a v2 batch (length-prefixed)."""
    body = b"\x00" + _varint(0) + _varint(delta) + _chunk(key) + _chunk(value)
    body += _varint(len(headers)) + b"".join(_chunk(k) + _chunk(v) for k, v in headers)
    return _varint(len(body)) + body


_COMPRESS = {
    0: lambda data: data,
    1: codec.gzip_encode,
    2: codec.snappy_encode,
    3: codec.lz4_encode,
    4: codec.zstd_encode,
}


def encode_batch(
    base_offset: int,
    records: Sequence[RecordSpec],
    codec_id: int = 0,
    raw_records: bytes | None = None,
    corrupt_crc: bool = False,
) -> bytes:
    """A whole v2 batch; `raw_records` replaces the encoded records (already compressed)."""
    encoded = b"".join(encode_record(i, *spec) for i, spec in enumerate(records))
    body = raw_records if raw_records is not None else _COMPRESS[codec_id](encoded)
    count = len(records)
    after_crc = struct.pack(">hiqqqhii", codec_id, count - 1, 1000, 1000, -1, -1, -1, count) + body
    crc = calc_crc32c(after_crc)
    if corrupt_crc:
        crc ^= 0xFFFF
    head = struct.pack(">ibI", 0, 2, crc)  # leader epoch, magic, crc
    length = len(head) + len(after_crc)
    return struct.pack(">qi", base_offset, length) + head + after_crc
