"""The Confluent wire format, pure: framing, the bounded schema cache, Avro decoding by the
writer's schema id (schema evolution), and the DLQ reasons of unknown ids and corrupt bytes."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import fastavro
import pytest

from service.core.inputs import AvroInput, build_input, input_problems
from service.core.registry import (
    UNDECODABLE,
    UNKNOWN_SCHEMA,
    AvroSchema,
    Cached,
    RegistryEventError,
    SchemaCache,
    SchemaPending,
    Unusable,
    compile_schema,
    split_frame,
)
from service.delivery.stages import RecordPath, Terminal, TopicInputs

V1 = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "kind", "type": "string"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "cents", "type": "long"},
    ],
}
# v2 adds the customer (with a default, as a compatible evolution does).
V2 = {
    **V1,
    "fields": [*V1["fields"], {"name": "customer", "type": ["null", "string"], "default": None}],
}
FIELDS = {
    "event_id": "$.id",
    "goal": {"from": "$.kind", "map": {"order.paid": "purchase"}},
    "occurred_at": "$.ts | epoch_ms",
    "value": "$.cents / 100",
    "customer.ids.shop": {"from": "$.customer", "default": "anonymous"},
}
TS_MS = 1_765_100_000_000


def framed(schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    """A value as confluent-kafka's serializers write it: 0, the id (big-endian), the Avro."""
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return b"\x00" + struct.pack(">I", schema_id) + out.getvalue()


class Schemas:
    """An in-memory SchemaSource: what the registry client caches, without the I/O."""

    def __init__(self, entries: dict[int, Cached]) -> None:
        self.entries = entries

    def cached(self, schema_id: int) -> Cached | None:
        return self.entries.get(schema_id)

    def when_ready(self, schema_id: int, callback: Callable[[], None]) -> None:
        if schema_id in self.entries:
            callback()


def order(**extra: Any) -> dict[str, Any]:
    return {"id": "o-1", "kind": "order.paid", "ts": TS_MS, "cents": 2599, **extra}


def test_split_frame_reads_the_big_endian_schema_id_after_magic_byte_0() -> None:
    schema_id, payload = split_frame(b"\x00\x00\x01\x00\x02rest")
    assert schema_id == 65538
    assert bytes(payload) == b"rest"


@pytest.mark.parametrize("value", [b"", b"\x00\x00\x01", b"\x01\x00\x00\x00\x01x", b'{"a":1}'])
def test_a_value_without_the_wire_format_frame_is_undecodable(value: bytes) -> None:
    with pytest.raises(RegistryEventError) as raised:
        split_frame(value)
    assert raised.value.dlq_reason == UNDECODABLE


def test_records_written_with_older_and_newer_schema_versions_decode_through_their_ids() -> None:
    """Schema evolution: each record is read by its writer's schema, found by the id it carries."""
    source = Schemas({1: AvroSchema(1, V1), 2: AvroSchema(2, V2)})
    avro = AvroInput(FIELDS, source)
    old = avro.decode(framed(1, V1, order()), None)
    new = avro.decode(framed(2, V2, order(id="o-2", customer="c-9")), None)
    assert (old.event_id, old.goal, old.value, old.customer.ids) == (
        "o-1",
        "purchase",
        25.99,
        {"shop": "anonymous"},
    )
    assert old.occurred_at.timestamp() == TS_MS / 1000  # a timestamp-millis is its long
    assert (new.event_id, new.customer.ids) == ("o-2", {"shop": "c-9"})


def test_an_uncached_schema_id_is_pending_not_invalid() -> None:
    avro = AvroInput(FIELDS, Schemas({}))
    with pytest.raises(SchemaPending) as raised:
        avro.decode(framed(7, V1, order()), None)
    assert raised.value.schema_id == 7


def _record(value: bytes, topic: str = "orders") -> Any:
    """A fetched record: what the decode stage reads of one."""
    return SimpleNamespace(topic=topic, partition=0, offset=0, key=None, value=value, headers=())


def _path(source: Schemas) -> RecordPath:
    return RecordPath(
        "v",
        None,  # type: ignore[arg-type]
        {},
        None,
        1 << 20,
        lambda: datetime.now(UTC),
        inputs={"orders": AvroInput(FIELDS, source)},
        dlq_topic="dlq",
    )


def test_unknown_schema_id_and_corrupt_avro_are_dead_lettered_with_their_own_reasons() -> None:
    source = Schemas({1: AvroSchema(1, V1), 9: Unusable(UNKNOWN_SCHEMA, "schema id 9 unknown")})
    decode = TopicInputs({"orders": AvroInput(FIELDS, source)}, "dlq")
    unknown = decode(_record(framed(9, V1, order())))
    good = framed(1, V1, order())
    corrupt = decode(_record(good[:-3]))  # truncated: the last field cannot be read
    trailing = decode(_record(good + b"\x02"))  # bytes after the record
    not_framed = decode(_record(b'{"id": "o-1"}'))
    assert isinstance(unknown, Terminal) and unknown.dlq_reason == "unknown_schema"
    assert "schema id 9" in unknown.error
    for ended in (corrupt, trailing, not_framed):
        assert isinstance(ended, Terminal) and ended.dlq_reason == "undecodable", ended
    assert isinstance(decode(_record(good)), Terminal) is False


def test_record_path_passes_a_pending_schema_up_as_its_third_outcome() -> None:
    read = _path(Schemas({})).read(_record(framed(3, V1, order())))
    assert isinstance(read, SchemaPending) and read.schema_id == 3


def test_the_schema_cache_keeps_max_schemas_dropping_the_least_recently_used() -> None:
    cache = SchemaCache(2)
    for schema_id in (1, 2):
        cache.put(schema_id, AvroSchema(schema_id, V1))
    assert cache.get(1) is not None  # 1 is now the most recently used
    cache.put(3, AvroSchema(3, V1))
    assert len(cache) == 2
    assert cache.get(2) is None and cache.get(1) is not None and cache.get(3) is not None


def test_a_schema_that_is_not_valid_or_of_no_known_type_decodes_nothing_and_says_why() -> None:
    broken = compile_schema(5, "AVRO", '{"type": "record"}')
    unknown = compile_schema(4, "XML", "<order/>")
    assert isinstance(broken, Unusable) and broken.dlq_reason == UNDECODABLE
    assert isinstance(unknown, Unusable) and unknown.message == (
        "schema 4 is XML, which no input decodes"
    )


def test_an_avro_input_checks_its_mapping_like_a_json_one() -> None:
    assert input_problems("avro", FIELDS, "auto") == []
    assert input_problems("avro", {"goal": "$.kind"}, "binary")[0] == (
        "mode",
        "only for format: cloudevents",
    )
    assert isinstance(build_input("avro", FIELDS), AvroInput)


def test_a_relay_without_avro_never_imports_fastavro() -> None:
    """fastavro (about 25 ms to import) loads at the first schema, not with the relay."""
    import subprocess
    import sys

    code = "import sys, service.app, service.cli.map; print('fastavro' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
