"""Dead-letter headers: the record's story, original headers kept, old relay-* replaced."""

from __future__ import annotations

from datetime import UTC, datetime

from service.delivery.dlq import DeadLetter, SourceRecord, dlq_headers


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
    headers = dlq_headers(letter, datetime(2026, 11, 23, 10, 1, tzinfo=UTC))
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
    names = {k for k, _ in dlq_headers(letter, datetime.now(UTC))}
    assert "relay-http-status" not in names and "relay-first-attempt-at" not in names
    assert dict(dlq_headers(letter, datetime.now(UTC)))["relay-attempts"] == b"0"
