"""Mappings read the Kafka record around a value: `@key`, `@timestamp`, `@topic`, `@partition`,
`@offset` and `@headers.NAME`, as Kafka Connect's InsertField and Redpanda Connect's metadata do."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from aiokafka.structs import ConsumerRecord

from service.core.mapping import MappingError, SpecError, compile_fields, spec_problems

TS_MS = 1796686805412


def _record(
    key: bytes | None = b"deal-7",
    timestamp: int = TS_MS,
    headers: list[tuple[str, bytes | None]] | None = None,
    value: bytes = b'{"type": "purchase"}',
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        "crm.deals", 3, 42, timestamp, 0, key, value, None, 6, len(value), headers or []
    )


BY_RECORD = {
    "event_id": "@key",
    "goal": "$.type",
    "occurred_at": "@timestamp | epoch_ms",
    "attributes.topic": "@topic",
    "attributes.tenant": "@headers.tenant",
    "attributes.trace": '@headers["x-trace id"]',
    "order.order_id": "@offset | string",
    "params.partition": "@partition | string",
}


def test_record_paths_fill_the_event_from_the_key_timestamp_topic_offset_and_headers() -> None:
    mapper = compile_fields(BY_RECORD)
    record = _record(headers=[("tenant", b"old"), ("x-trace id", b"t-1"), ("tenant", b"acme")])
    event = mapper.apply(mapper.decode(record.value), record)
    assert event.event_id == "deal-7"
    assert event.occurred_at == datetime.fromtimestamp(TS_MS / 1000, UTC)
    # The last of a repeated header wins, as Kafka clients read a single header.
    assert event.attributes == {"topic": "crm.deals", "tenant": "acme", "trace": "t-1"}
    assert event.order.order_id == "42"
    assert event.params == {"partition": "3"}


def test_a_record_without_a_key_fails_the_required_field_it_fills_by_name() -> None:
    mapper = compile_fields(BY_RECORD)
    record = _record(key=None)
    with pytest.raises(MappingError, match=r"event_id \(from @key\): missing or null"):
        mapper.apply(mapper.decode(record.value), record)


def test_a_record_without_a_timestamp_takes_the_default_or_fails_naming_occurred_at() -> None:
    record = _record(timestamp=-1)  # the message format before Kafka 0.10 has none
    strict = compile_fields(BY_RECORD)
    with pytest.raises(MappingError, match=r"occurred_at \(from @timestamp \| epoch_ms\)"):
        strict.apply(strict.decode(record.value), record)
    fallback = compile_fields(
        {**BY_RECORD, "occurred_at": {"from": "@timestamp | epoch_ms", "default": 0}}
    )
    assert fallback.apply(
        fallback.decode(record.value), record
    ).occurred_at == datetime.fromtimestamp(0, UTC)


def test_a_key_that_is_not_utf8_is_an_invalid_event_naming_the_field() -> None:
    mapper = compile_fields(BY_RECORD)
    record = _record(key=b"\xff\xfe")
    with pytest.raises(MappingError, match=r"event_id .*the record's key is not UTF-8") as caught:
        mapper.apply(mapper.decode(record.value), record)
    assert caught.value.field == "event_id"


def test_a_missing_header_reads_null_so_its_default_applies() -> None:
    mapper = compile_fields(
        {**BY_RECORD, "attributes.tenant": {"from": "@headers.tenant", "default": "none"}}
    )
    record = _record(headers=[("other", b"x")])
    assert mapper.apply(mapper.decode(record.value), record).attributes["tenant"] == "none"


def test_without_a_record_record_paths_read_null() -> None:
    mapper = compile_fields(
        {
            "event_id": "$.id",
            "goal": "$.type",
            "occurred_at": "$.ts | epoch_ms",
            "attributes.k": "@key",
        }
    )
    made = mapper.apply(mapper.decode(b'{"id": "e1", "type": "lead", "ts": 0}'))
    assert made.event_id == "e1"
    assert made.attributes == {}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("@nope", "unknown record path '@nope'; choose from @key, @timestamp"),
        ("@key.id", "@key is a whole value"),
        ("@headers", "name one header"),
        ("@headers[0]", "name one header"),
    ],
)
def test_a_bad_record_path_is_named_by_check_config_with_the_choices(
    spec: str, message: str
) -> None:
    problems = spec_problems({**BY_RECORD, "attributes.tenant": spec})
    assert [p.where for p in problems] == ["attributes.tenant"]
    assert message in problems[0].message
    with pytest.raises(SpecError):
        compile_fields({**BY_RECORD, "attributes.tenant": spec})
