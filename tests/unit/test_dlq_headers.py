"""Dead letters: headers tell the record's story (original headers kept, old relay-* replaced),
and a letter too large for the DLQ topic is written with its value cut short, not retried."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from prometheus_client import CollectorRegistry

from service.delivery.dlq import (
    TRUNCATED_VALUE_BYTES,
    DeadLetter,
    DeadLetterWriter,
    SourceRecord,
    parse_headers,
    to_headers,
)
from service.delivery.replay import letter_info
from service.metrics import Metrics


def test_dead_letter_headers_carry_the_whole_story():
    """Vendor, reason, error, status, attempts, times and source position are all present."""
    first = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    letter = DeadLetter(
        vendor="altcraft",
        reason="rejected",
        error="error 3: bad token",
        source=SourceRecord(
            "conversions", 2, 41, b"k", b"v", [("trace", b"abc"), ("relay-reason", b"old")]
        ),
        http_status=200,
        attempts=3,
        first_attempt_at=first,
        last_attempt_at=first,
    )
    headers = to_headers(letter, datetime(2026, 11, 23, 10, 1, tzinfo=UTC))
    as_dict = dict(headers)
    assert as_dict["trace"] == b"abc"
    assert [k for k, _ in headers].count("relay-reason") == 1
    assert as_dict["relay-reason"] == b"rejected"
    assert as_dict["relay-vendor"] == b"altcraft"
    assert as_dict["relay-error"] == b"error 3: bad token"
    assert as_dict["relay-http-status"] == b"200"
    assert as_dict["relay-attempts"] == b"3"
    assert as_dict["relay-source-topic"] == b"conversions"
    assert as_dict["relay-source-partition"] == b"2"
    assert as_dict["relay-source-offset"] == b"41"
    assert as_dict["relay-first-attempt-at"] == b"2026-11-23T10:00:00+00:00"
    assert as_dict["relay-failed-at"] == b"2026-11-23T10:01:00+00:00"


def test_invalid_events_have_no_status_or_attempt_times():
    """A record that never reached a vendor carries no HTTP status and zero attempts."""
    letter = DeadLetter(
        vendor="v",
        reason="invalid_event",
        error="not valid JSON",
        source=SourceRecord("t", 0, 1, None, b"x"),
    )
    names = {k for k, _ in to_headers(letter, datetime.now(UTC))}
    assert "relay-http-status" not in names and "relay-first-attempt-at" not in names
    assert dict(to_headers(letter, datetime.now(UTC)))["relay-attempts"] == b"0"


class _Producer:
    """Refuses values over a size like a broker would, fails the first send, records the rest."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.sent: list[dict[str, Any]] = []
        self.calls = 0

    async def send_and_wait(self, topic: str, value: bytes | None = None, **kw: Any) -> None:
        self.calls += 1
        if self.calls == 1:
            raise KafkaConnectionError("broker away")
        if value is not None and len(value) > self.max_bytes:
            raise MessageSizeTooLargeError()
        self.sent.append({"topic": topic, "value": value, **kw})


async def test_a_failed_write_is_retried_and_a_too_large_one_truncated():
    """A broker error is retried; a value the topic refuses is cut to a prefix and marked."""
    producer = _Producer(max_bytes=100_000)
    metrics = Metrics(CollectorRegistry())
    writer = DeadLetterWriter(producer, "dlq", metrics, retry_backoff_s=0.001)
    big = b"x" * 200_000
    letter = DeadLetter(
        vendor="v",
        reason="invalid_event",
        error="too large",
        source=SourceRecord("t", 0, 7, b"k", big),
    )
    await writer.write(letter)
    assert len(producer.sent) == 1
    sent = producer.sent[0]
    assert sent["value"] == big[:TRUNCATED_VALUE_BYTES]
    assert dict(sent["headers"])["relay-value-truncated-from"] == b"200000"
    assert dict(sent["headers"])["relay-source-offset"] == b"7"
    assert (
        metrics.registry.get_sample_value(
            "conversion_relay_dlq_write_failures_total", {"vendor": "v"}
        )
        == 1
    )


def test_parse_headers_reads_back_what_to_headers_wrote() -> None:
    letter = DeadLetter(
        vendor="altcraft",
        reason="rejected",
        error="400: bad",
        source=SourceRecord("conversions", 3, 41, b"k", b"v", [("trace", b"t")]),
        http_status=400,
        attempts=2,
        first_attempt_at=datetime(2026, 11, 23, 10, 0, tzinfo=UTC),
        last_attempt_at=datetime(2026, 11, 23, 10, 1, tzinfo=UTC),
    )
    parsed = parse_headers(to_headers(letter, datetime(2026, 11, 23, 10, 2, tzinfo=UTC)))
    assert (parsed.vendor, parsed.reason, parsed.error) == ("altcraft", "rejected", "400: bad")
    assert (parsed.source_topic, parsed.source_partition, parsed.source_offset) == (
        "conversions",
        3,
        41,
    )
    assert (parsed.http_status, parsed.attempts) == (400, 2)
    assert parsed.failed_at == datetime(2026, 11, 23, 10, 2, tzinfo=UTC)
    assert parsed.first_attempt_at == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def test_parse_headers_survives_null_non_utf8_missing_and_absurd_values() -> None:
    parsed = parse_headers(
        [
            ("relay-vendor", None),
            ("relay-reason", b"\xff\xfe"),
            ("relay-attempts", b"1" * 309),
            ("relay-source-partition", "²".encode()),
            ("relay-source-offset", b"-1"),
            ("relay-failed-at", b"yesterday"),
            (None, b"x"),
            (b"\xff-key", b"y"),
        ]
    )
    assert parsed.vendor == ""
    assert parsed.reason == "\ufffd\ufffd"
    assert parsed.attempts == 0
    assert parsed.source_partition is None and parsed.source_offset is None
    assert parsed.failed_at is None


def test_letter_info_of_a_letter_with_a_null_header_value_does_not_raise() -> None:
    record = SimpleNamespace(
        headers=[("relay-vendor", b"altcraft"), ("relay-error", None), ("trace", None)],
        partition=0,
        offset=7,
    )
    info = letter_info(record)
    assert info.vendor == "altcraft" and info.error == "" and info.source == "?:?:?"
