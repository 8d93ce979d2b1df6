"""The dead-letter write loop: a letter too large is cut down to fit (or written as a stub naming
its source), a DLQ that keeps failing is retried with back-off, and the loop always awaits."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from service.delivery.dlq import DeadLetter, DeadLetterWriter, SourceRecord, parse_headers
from service.metrics import Metrics


class Frozen(Exception):
    """The writer tried far more often than any cut-down sequence needs."""


class Producer:
    """A DLQ that refuses records over `limit_bytes`, checks what aiokafka's producer checks."""

    def __init__(self, limit_bytes: int, max_calls: int = 500) -> None:
        self.limit_bytes = limit_bytes
        self.max_calls = max_calls
        self.calls = 0
        self.sent: list[dict[str, Any]] = []

    async def send_and_wait(
        self, topic: str, value=None, key=None, partition=None, timestamp_ms=None, headers=None
    ) -> None:
        self.calls += 1
        if self.calls > self.max_calls:
            raise Frozen(f"{self.calls} tries")
        assert not (value is None and key is None), "Need at least one: key or value"
        for name, _ in headers or ():
            name.encode("utf-8")  # aiokafka's record builder encodes every header name
        size = len(key or b"") + len(value or b"")
        size += sum(len(k) + len(v or b"") for k, v in headers or ())
        if size > self.limit_bytes:
            raise MessageSizeTooLargeError()
        self.sent.append({"key": key, "value": value, "headers": list(headers or ())})


class Down(Producer):
    """A DLQ that is unreachable."""

    async def send_and_wait(self, topic: str, **kwargs: Any) -> None:
        self.calls += 1
        raise KafkaConnectionError("down")


def _letter(key: bytes | None, value: bytes | None, headers=()) -> DeadLetter:
    source = SourceRecord("events", 2, 41, key, value, headers)
    return DeadLetter(vendor="v", reason="invalid_event", error="bad", source=source)


async def _write_counting_turns(writer: DeadLetterWriter, letter: DeadLetter, timeout_s: float):
    """Write while a ticker counts event-loop turns (a loop without an await starves it)."""
    turns = 0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal turns
        while not done.is_set():
            await asyncio.sleep(0)
            turns += 1

    ticker = asyncio.create_task(tick())
    try:
        await asyncio.wait_for(writer.write(letter), timeout_s)
    finally:
        done.set()
        await ticker
    return turns


async def test_a_letter_whose_key_and_headers_alone_are_too_large_is_written_as_a_stub():
    """A 9 KB key plus headers over the DLQ's limit ends as a stub naming the source, in a few
    tries, with the event loop turning meanwhile."""
    producer = Producer(limit_bytes=4000)
    writer = DeadLetterWriter(producer, "dlq", Metrics())
    letter = _letter(b"k" * 9000, b"x" * 200_000, [("trace", b"t" * 3000)])
    turns = await _write_counting_turns(writer, letter, 5.0)
    assert producer.calls <= 5
    assert turns > 0
    [sent] = producer.sent
    assert sent["key"] is None and sent["value"] == b""
    told = parse_headers(sent["headers"])
    assert (told.source_topic, told.source_partition, told.source_offset) == ("events", 2, 41)
    assert told.reason == "invalid_event"
    assert ("relay-truncated", b"value,headers,key") in sent["headers"]


async def test_a_large_value_is_cut_and_the_source_headers_kept_when_that_fits():
    """Cutting the value is the first cut; the original headers stay when the cut letter fits."""
    producer = Producer(limit_bytes=100_000)
    writer = DeadLetterWriter(producer, "dlq", Metrics())
    await writer.write(_letter(b"key", b"x" * 500_000, [("trace", b"t")]))
    [sent] = producer.sent
    assert sent["key"] == b"key" and len(sent["value"]) == 64 * 1024
    assert ("trace", b"t") in sent["headers"]
    assert ("relay-value-truncated-from", b"500000") in sent["headers"]


async def test_a_dlq_smaller_than_any_stub_backs_off_with_few_warnings(caplog):
    """When even the stub is refused the writer backs off (bounded tries, loop turning) and
    warns a few times, not once per try."""
    producer = Producer(limit_bytes=10)
    writer = DeadLetterWriter(producer, "dlq", Metrics(), retry_backoff_s=0.02, max_backoff_s=0.05)
    caplog.set_level(logging.WARNING, logger="conversion_relay.dlq")
    with pytest.raises(TimeoutError):
        await _write_counting_turns(writer, _letter(b"k" * 9000, b"v"), 1.0)
    assert 4 < producer.calls < 80
    assert len(caplog.records) <= 3


async def test_an_unreachable_dlq_is_retried_with_back_off_and_rate_limited_warnings(caplog):
    """A DLQ that keeps failing is tried with growing delays; warnings are not one per try."""
    producer = Down(limit_bytes=10**9)
    metrics = Metrics()
    writer = DeadLetterWriter(producer, "dlq", metrics, retry_backoff_s=0.01, max_backoff_s=0.04)
    caplog.set_level(logging.WARNING, logger="conversion_relay.dlq")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(writer.write(_letter(b"k", b"v")), 0.5)
    assert 5 < producer.calls < 60
    assert len(caplog.records) <= 2
    failures = metrics.registry.get_sample_value(
        "conversion_relay_dlq_write_failures_total", {"vendor": "v"}
    )
    assert failures == producer.calls


async def test_a_record_with_null_key_and_null_value_is_dead_lettered():
    """A record with neither key nor value (the producer needs one) is written with an empty
    value."""
    producer = Producer(limit_bytes=10**6)
    await DeadLetterWriter(producer, "dlq", Metrics()).write(_letter(None, None))
    [sent] = producer.sent
    assert sent["key"] is None and sent["value"] == b""


async def test_header_names_that_are_not_utf8_and_null_header_values_are_written():
    """A source header named by non-UTF-8 bytes is written as its escaped text; null values stay
    null; forged relay-* headers of the source are not copied."""
    producer = Producer(limit_bytes=10**6)
    headers = [(b"\xffname", b"v"), ("empty", None), ("relay-source-offset", b"9")]
    await DeadLetterWriter(producer, "dlq", Metrics()).write(_letter(b"k", b"{}", headers))
    [sent] = producer.sent
    assert ("\\xffname", b"v") in sent["headers"]
    assert ("empty", None) in sent["headers"]
    assert parse_headers(sent["headers"]).source_offset == 41
