"""The control record's codec, offset-reset planning and the `status` layout (core.control)."""

from __future__ import annotations

import re

import pytest

from service.core.control import (
    PartitionOffsets,
    PartitionStatus,
    ResetRequest,
    VendorControl,
    decode_control,
    encode_control,
    parse_offset_spec,
    plan_reset,
    reset_lines,
    status_lines,
)

PARTS = [
    PartitionOffsets("conversions", 1, committed=40, earliest=10, latest=100, at_time=None),
    PartitionOffsets("conversions", 0, committed=50, earliest=0, latest=80, at_time=30),
    PartitionOffsets("other", 0, committed=None, earliest=5, latest=9, at_time=7),
]


def test_control_record_round_trips_with_a_reset() -> None:
    state = VendorControl(
        "altcraft",
        True,
        "ops@host",
        "vendor outage",
        1796650000.5,
        ResetRequest("r1", (("conversions", 0, 12),)),
    )
    assert decode_control(b"altcraft", encode_control(state)) == state


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"altcraft", None),  # a tombstone
        (None, b'{"vendor":"altcraft","paused":true}'),
        (b"altcraft", b"not json"),
        (b"altcraft", b'{"paused":true}'),  # no vendor
        (b"crm", b'{"vendor":"altcraft","paused":true}'),  # key and vendor differ
    ],
)
def test_foreign_or_malformed_control_records_are_ignored(
    key: bytes | None, value: bytes | None
) -> None:
    assert decode_control(key, value) is None


def test_a_record_from_a_newer_relay_with_more_fields_still_reads() -> None:
    value = b'{"vendor":"altcraft","paused":false,"by":"x","ttl_s":5}'
    assert decode_control(b"altcraft", value) == VendorControl("altcraft", False, "x")


def test_to_earliest_and_to_latest_move_every_partition_in_order() -> None:
    early = plan_reset(PARTS, "to-earliest")
    assert [(m.topic, m.partition, m.target) for m in early] == [
        ("conversions", 0, 0),
        ("conversions", 1, 10),
        ("other", 0, 5),
    ]
    assert [m.target for m in plan_reset(PARTS, "to-latest")] == [80, 100, 9]


def test_to_datetime_takes_the_first_offset_at_the_time_else_the_log_end() -> None:
    assert [m.target for m in plan_reset(PARTS, "to-datetime")] == [30, 100, 7]


def test_shift_by_moves_from_the_commit_and_is_clamped_to_the_log() -> None:
    back = plan_reset(PARTS, "shift-by", shift_by=-45)
    assert [m.target for m in back] == [5, 10, 5]  # 50-45; 40-45 < 10; no commit: from 5
    assert [m.delta for m in back] == [-45, -30, None]
    assert [m.target for m in plan_reset(PARTS, "shift-by", shift_by=1000)] == [80, 100, 9]


def test_to_offset_moves_only_the_named_partitions() -> None:
    moves = plan_reset(PARTS, "to-offset", to_offsets={(None, 0): 60, ("conversions", 1): 5})
    assert [(m.topic, m.partition, m.target) for m in moves] == [
        ("conversions", 0, 60),
        ("conversions", 1, 10),  # clamped up to the earliest kept
        ("other", 0, 9),  # partition 0 of every topic, clamped to its end
    ]


def test_offset_specs_name_a_partition_or_a_topic_partition() -> None:
    assert parse_offset_spec("3:42", ["conversions"]) == (None, 3, 42)
    assert parse_offset_spec("conversions:3:42", ["conversions"]) == ("conversions", 3, 42)
    for wrong in ("3", "a:1", "3:-1", "nope:1:2"):
        with pytest.raises(ValueError, match=re.escape(repr(wrong))):
            parse_offset_spec(wrong, ["conversions"])


def test_the_reset_plan_shows_each_move_signed() -> None:
    lines = reset_lines(plan_reset(PARTS, "shift-by", shift_by=-45))
    assert lines[0].split() == ["TOPIC", "PART", "CURRENT", "NEW", "MOVE", "EARLIEST", "END"]
    assert lines[1].split() == ["conversions", "0", "50", "5", "-45", "0", "80"]
    assert lines[3].split() == ["other", "0", "-", "5", "-", "5", "9"]


def test_status_table_stays_within_80_columns_cutting_only_names() -> None:
    rows = [
        PartitionStatus(
            "a-vendor-with-a-very-long-name", "conversions." + "x" * 60, 11, 1234567890, 1234567999
        ),
        PartitionStatus("crm", "conversions", 0, None, 5, start=2),
    ]
    lines = status_lines(rows, {"crm": "paused"})
    assert max(len(line) for line in lines) <= 80
    assert lines[0].split() == ["VENDOR", "TOPIC", "PART", "COMMITTED", "END", "LAG", "STATE"]
    first = lines[1].split()
    assert first[0].endswith("…") and first[1].endswith("…")
    assert first[2:] == ["11", "1234567890", "1234567999", "109", "running"]
    assert lines[2].split() == ["crm", "conversions", "0", "-", "5", "3", "paused"]


def test_status_table_keeps_short_names_whole() -> None:
    lines = status_lines([PartitionStatus("altcraft", "conversions", 0, 3, 10)], {})
    assert lines[1].split() == ["altcraft", "conversions", "0", "3", "10", "7", "running"]


def test_status_output_puts_who_why_when_on_its_own_line_within_80_columns() -> None:
    from service.cli.status import render

    entry = {
        "group": "conversion-relay.altcraft",
        "members": 2,
        "state": "paused",
        "paused": {"by": "ops@host", "reason": "vendor outage " * 8, "at": "2026-12-07T15:31:02"},
        "breaker": "open",
        "partitions": [
            {"topic": "conversions", "partition": 0, "committed": 5, "end": 9, "start": 0}
        ],
    }
    lines = render({"altcraft": entry})
    assert (
        lines[0] == "altcraft: group conversion-relay.altcraft, 2 member(s), paused, breaker open"
    )
    assert lines[1].startswith("  paused by ops@host at 2026-12-07T15:31:02: vendor outage")
    assert lines[1].endswith("…") and max(len(line) for line in lines) <= 80
    assert lines[3].split()[0] == "VENDOR"
    assert lines[4].split() == ["altcraft", "conversions", "0", "5", "9", "4", "paused", "-"]


def test_the_control_topic_is_named_by_the_config_or_after_the_group_prefix() -> None:
    from service.config import KafkaConfig
    from service.delivery.control import control_topic_name

    assert control_topic_name(KafkaConfig(bootstrap_servers=["k:9092"], topics=["c"])) == (
        "conversion-relay.control"
    )
    named = KafkaConfig(bootstrap_servers=["k:9092"], topics=["c"], control_topic="ops.control")
    assert control_topic_name(named) == "ops.control"
