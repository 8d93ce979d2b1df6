"""Pure parts of replay: ranges, marks, selection, canonical headers, write-back attempts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from service.delivery.dlq import DeadLetter, SourceRecord, parse_headers
from service.delivery.replay import (
    LetterFilter,
    LetterInfo,
    WriteBackWriter,
    canonical,
    decode_ranges,
    encode_ranges,
    letters_of,
    mark_headers,
    parse_mark,
    parse_time,
    select,
)
from service.metrics import Metrics

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


def _record(offset: int, headers: list[tuple[str, bytes | None]], value: bytes = b"{}") -> Any:
    return SimpleNamespace(
        topic="dlq", partition=0, offset=offset, key=None, value=value, headers=headers
    )


def test_ranges_round_trip_and_compact() -> None:
    """Offsets encode as compact ranges and decode back to the same set."""
    assert encode_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert decode_ranges("0-2,5,7-8") == {0, 1, 2, 5, 7, 8}
    assert encode_ranges([]) == ""


def test_unreadable_ranges_are_ignored_not_raised() -> None:
    """A damaged mark never breaks inspect or replay."""
    assert decode_ranges("x,3,5-a,-1,9-7") == {3}


def test_marks_flag_the_letters_of_their_vendor_only() -> None:
    """A mark of vendor A covers A's letter at that position, not B's."""
    a = [("relay-vendor", b"a"), ("relay-reason", b"rejected")]
    b = [("relay-vendor", b"b"), ("relay-reason", b"rejected")]
    mark = mark_headers("a", 0, [0, 1], NOW)
    assert parse_mark(mark) == ("a", 0, {0, 1})
    letters = letters_of([_record(0, a), _record(1, b), _record(2, list(mark))])
    assert [(i.vendor, i.replayed) for i in letters] == [("a", True), ("b", False)]


def _info(offset: int, vendor: str = "a", reason: str = "rejected", **extra: Any) -> LetterInfo:
    fields: dict[str, Any] = {
        "vendor": vendor,
        "reason": reason,
        "error": "",
        "http_status": None,
        "attempts": 1,
        "failed_at": NOW,
        "source": "t:0:0",
        "dlq_partition": 0,
        "dlq_offset": offset,
    }
    return LetterInfo(**(fields | extra))


def test_select_takes_the_vendors_open_matching_letters() -> None:
    """The vendor is always part of the filter; replayed letters are never taken again."""
    letters = [
        _info(0),
        _info(1, vendor="b"),
        _info(2, replayed=True),
        _info(3, reason="expired"),
        _info(4, failed_at=NOW - timedelta(days=2)),
    ]
    chosen = select(letters, "a", LetterFilter(vendor="b", since=NOW - timedelta(days=1)))
    assert [i.dlq_offset for i in chosen] == [0, 3]


def test_canonical_headers_replace_null_and_unreadable_ones() -> None:
    """Null values and broken relay-* headers become the codec's; others pass if readable."""
    record = _record(
        7,
        [
            ("relay-vendor", b"a"),
            ("relay-attempts", None),
            ("relay-source-topic", None),
            ("trace", b"t1"),
            ("empty", None),
        ],
    )
    letter = canonical(record)
    assert all(isinstance(v, bytes) for _, v in letter.headers)
    named = dict(letter.headers)
    assert named["trace"] == b"t1"
    assert "empty" not in named
    assert (named["relay-source-topic"], named["relay-source-offset"]) == (b"dlq", b"7")
    assert parse_headers(letter.headers).attempts == 0


class _Producer:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_and_wait(self, topic: str, **kwargs: Any) -> None:
        self.sent.append(kwargs)


@pytest.mark.parametrize(("pipeline_attempts", "written"), [(0, 4), (3, 4), (5, 5)])
async def test_a_write_back_always_has_more_attempts_than_the_letter(
    pipeline_attempts: int, written: int
) -> None:
    """Even a replay that failed before sending (no HTTP attempt) counts as an attempt."""
    producer = _Producer()
    writer = WriteBackWriter(producer, "dlq", Metrics())
    source = SourceRecord("t", 0, 1, None, b"{}", [("relay-attempts", b"3")])
    await writer.write(
        DeadLetter(
            vendor="a", reason="rejected", error="x", source=source, attempts=pipeline_attempts
        )
    )
    assert dict(producer.sent[0]["headers"])["relay-attempts"] == str(written).encode()


def test_parse_time_names_the_accepted_forms() -> None:
    """`yesterday` is refused with a message saying what works."""
    with pytest.raises(ValueError, match=r"ISO time .* or a duration ago"):
        parse_time("yesterday")
    assert parse_time("2h", now=NOW) == NOW - timedelta(hours=2)


def test_every_dead_letter_reason_can_be_filtered_on_and_counts_under_an_outcome() -> None:
    """`dlq --reason` takes every documented reason, and a letter written back for any reason
    counts under its outcome: a registry's unknown_schema and undecodable letters are invalid
    (still not a conversion event), like invalid_event and unreadable_record."""
    from service.cli.dlq import REASONS as CLI_REASONS
    from service.delivery.dlq import REASONS
    from service.replay_run import _WRITE_BACK_OUTCOME, FAILED

    assert set(CLI_REASONS) == set(REASONS)
    assert set(_WRITE_BACK_OUTCOME) == set(REASONS)
    assert set(_WRITE_BACK_OUTCOME.values()) <= set(FAILED)
    for reason in ("invalid_event", "unreadable_record", "unknown_schema", "undecodable"):
        assert _WRITE_BACK_OUTCOME[reason] == "invalid", reason
