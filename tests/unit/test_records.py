"""Reading fetched batches: nothing in one record or batch stops the partition (service.kafka
wraps aiokafka's record parsing; service.core.records reads what the compiled reader refuses)."""

from __future__ import annotations

import dataclasses
import gc

from aiokafka import TopicPartition
from aiokafka.consumer import fetcher
from aiokafka.record.memory_records import MemoryRecords as _MemoryRecords
from aiokafka.structs import ConsumerRecord

import service.kafka  # noqa: F401  (installs the lenient reader)
from tests.kafka_batches import encode_batch

TP = TopicPartition("events", 3)
_FIELDS = [f.name for f in dataclasses.fields(ConsumerRecord)]
_AiokafkaRecords = fetcher.PartitionRecords.__mro__[1]  # aiokafka's own, under the lenient one
EVENT = b'{"event_id":"e1"}'


def _unreadable(record: object) -> bool:
    return type(record).__name__ == "Unreadable"


def _read(raw: bytes, fetch_offset: int = 0) -> list:
    """Records as aiokafka's fetcher hands them to getmany."""
    records = fetcher.PartitionRecords(
        TP, fetcher.MemoryRecords(raw), [], fetch_offset, None, None, True, fetcher.READ_COMMITTED
    )
    return list(records)


def test_a_header_name_that_is_not_utf8_is_read_as_bytes_and_its_batch_survives():
    """A non-UTF-8 header name (aiokafka raises on it) is kept as bytes; its batch is delivered."""
    raw = encode_batch(
        0,
        [(None, EVENT, []), (b"k", EVENT, [(b"\xff\xfename", b"v")]), (None, EVENT, [])],
    )
    got = _read(raw)
    assert [r.offset for r in got] == [0, 1, 2]
    assert got[1].headers == ((b"\xff\xfename", b"v"),)
    assert not any(_unreadable(r) for r in got)


def test_records_carry_consumer_record_fields_and_are_not_tracked_by_the_gc():
    """What getmany returns has every field of aiokafka's ConsumerRecord, equal to aiokafka's
    own reading, but costs no Python __init__ and is invisible to the cyclic collector."""
    raw = encode_batch(7, [(b"key", EVENT, [(b"h", b"v")]), (None, EVENT, [])])
    got = _read(raw, 7)
    plain = list(_AiokafkaRecords(TP, _MemoryRecords(raw), [], 7, None, None, True, 0))
    assert len(got) == len(plain) == 2
    for mine, theirs in zip(got, plain, strict=True):
        assert {f: getattr(mine, f) for f in _FIELDS} == {f: getattr(theirs, f) for f in _FIELDS}
        assert not gc.is_tracked(mine)


def test_null_header_names_values_keys_and_values_are_read():
    """Null keys, values and header values are what Kafka allows; none of them raises."""
    raw = encode_batch(5, [(None, None, [(b"relay-attempts", None)]), (b"k", b"", [])])
    got = _read(raw, 5)
    assert [(r.offset, r.key, r.value) for r in got] == [(5, None, None), (6, b"k", b"")]
    assert got[0].headers == (("relay-attempts", None),)


def test_a_record_that_cannot_be_read_becomes_unreadable_at_its_offset_and_the_rest_are_read():
    """A record with a null header name (no parser can read it) stands alone as Unreadable."""
    raw = encode_batch(10, [(None, EVENT, []), (None, EVENT, [(None, b"v")]), (None, EVENT, [])])
    got = _read(raw, 10)
    assert [type(r).__name__ for r in got] == ["Fetched", "Unreadable", "Fetched"]
    assert got[1].offset == 11 and got[1].topic == "events" and got[1].partition == 3


def test_a_corrupt_batch_is_stepped_over_with_every_offset_accounted_for():
    """A CRC mismatch makes each offset of the batch an Unreadable; the next batch is read."""
    bad = encode_batch(0, [(None, EVENT, [])] * 3, corrupt_crc=True)
    good = encode_batch(3, [(None, EVENT, [])])
    got = _read(bad + good)
    assert [(r.offset, _unreadable(r)) for r in got] == [
        (0, True),
        (1, True),
        (2, True),
        (3, False),
    ]
    assert "CRC" in got[0].error


def test_a_batch_whose_compression_cannot_be_decoded_is_stepped_over():
    """Garbage under a codec flag (or a codec the client lacks) is unreadable, not a crash."""
    bad = encode_batch(0, [(None, EVENT, [])] * 2, codec_id=2, raw_records=b"not snappy at all")
    good = encode_batch(2, [(None, EVENT, [])], codec_id=4)
    got = _read(bad + good)
    assert [(r.offset, _unreadable(r)) for r in got] == [
        (0, True),
        (1, True),
        (2, False),
    ]


def test_every_codec_kafka_defines_is_read():
    """gzip, snappy, lz4 and zstd batches (what librdkafka and Java producers write) are read."""
    for codec_id in (0, 1, 2, 3, 4):
        raw = encode_batch(0, [(b"k", EVENT, [(b"h", b"v")])] * 3, codec_id=codec_id)
        got = _read(raw)
        assert [(r.offset, r.value) for r in got] == [(i, EVENT) for i in range(3)], codec_id


def test_a_fetch_that_starts_inside_a_batch_returns_only_the_later_records():
    """Records before the fetch offset (inside a compressed batch) are not returned again."""
    raw = encode_batch(0, [(None, EVENT, [(b"\xff", b"")])] * 4, codec_id=1)
    assert [r.offset for r in _read(raw, 2)] == [2, 3]
