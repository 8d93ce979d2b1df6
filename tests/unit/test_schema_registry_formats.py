"""Protobuf and JSON Schema in the Confluent wire format, pure: the message-index framing (the
single-0 shortcut, nested messages) as confluent-kafka writes it, decoding by the writer's
schema and mapping, a schema of another type than the input's format, and corrupt bytes."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from confluent_kafka.schema_registry.common.serde import SchemaId

from service.core.inputs import (
    AvroInput,
    JsonSchemaInput,
    ProtobufInput,
    build_input,
    input_problems,
)
from service.core.json_schema import JsonSchema
from service.core.protobuf import ProtobufSchema, read_indexes, write_indexes
from service.core.registry import (
    UNDECODABLE,
    AvroSchema,
    Cached,
    RegistryEventError,
    Unusable,
    compile_schema,
)
from tests.protobuf_order import message_class, order_file, schema_text

TS_S = 1_765_101_600  # 2025-12-07T10:00:00Z
FIELDS = {
    "event_id": "$.uuid",
    "goal": {"from": "$.kind", "map": {"ORDER_PAID": "purchase"}},
    "occurred_at": "$.ts",
    "value": "$.total_cents / 100",
    "customer.email": "$.buyer.email",
    "customer.ids.shop": "$.buyer.crm_id",
    "params.channel": {"from": "$.channel", "default": "web"},
    "params.token": "$.token",
    "params.tier": "$.attrs.tier",
}
ORDER_JSON_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Order",
    "type": "object",
    "properties": {
        "uuid": {"type": "string"},
        "type": {"type": "string"},
        "ts": {"type": "integer"},
        "total_cents": {"type": "integer", "minimum": 0},
        "buyer": {
            "type": "object",
            "properties": {"crm_id": {"type": "string"}},
            "required": ["crm_id"],
        },
    },
    "required": ["uuid", "type", "ts", "total_cents", "buyer"],
}
JSON_FIELDS = {
    "event_id": "$.uuid",
    "goal": {"from": "$.type", "map": {"order.paid": "purchase"}},
    "occurred_at": "$.ts | epoch_ms",
    "value": "$.total_cents / 100",
    "customer.ids.shop": "$.buyer.crm_id",
}


class Schemas:
    """An in-memory SchemaSource: what the registry client caches, without the I/O."""

    def __init__(self, entries: dict[int, Cached]) -> None:
        self.entries = entries

    def cached(self, schema_id: int) -> Cached | None:
        return self.entries.get(schema_id)

    def when_ready(self, schema_id: int, callback: Callable[[], None]) -> None:
        if schema_id in self.entries:
            callback()


def _header(schema_id: int) -> bytes:
    return b"\x00" + struct.pack(">I", schema_id)


def _confluent_indexes(indexes: list[int]) -> bytes:
    """The indexes as confluent-kafka's serializer writes them."""
    out = io.BytesIO()
    SchemaId._encode_varints(out, indexes, zigzag=True)
    return out.getvalue()


def _order(version: int = 1, **extra: Any) -> Any:
    cls = message_class(order_file(version), "shop.Order")
    message = cls(
        uuid="o-1",
        kind=1,
        total_cents=12999,
        buyer={"crm_id": "c-7", "email": "anna@example.com"},
        token=b"\x00\xffpay",
        tags=["a", "b"],
        attrs={"tier": "gold"},
        **extra,
    )
    message.ts.seconds = TS_S  # the pool's own Timestamp class, not timestamp_pb2's
    return message


def _proto_schema(schema_id: int = 1, version: int = 1) -> ProtobufSchema:
    schema = compile_schema(schema_id, "PROTOBUF", schema_text(order_file(version)))
    assert isinstance(schema, ProtobufSchema), getattr(schema, "message", schema)
    return schema


@pytest.mark.parametrize(
    "indexes", [[0], [1], [0, 0], [0, 1], [1, 0, 2], [200], list(range(10))], ids=str
)
def test_message_indexes_read_and_written_as_confluent_kafka_frames_them(indexes) -> None:
    written = _confluent_indexes(indexes)
    assert write_indexes(indexes) == written
    assert read_indexes(written + b"\x0a\x01x") == (tuple(indexes), len(written))


def test_a_single_0_byte_is_the_first_message_and_an_empty_count_too() -> None:
    assert _confluent_indexes([0]) == b"\x00"
    assert read_indexes(b"\x00\x0a\x03o-1") == ((0,), 1)
    # A count of 0 written out in full (zigzag 0 is 0): also the first message.
    assert read_indexes(b"\x00") == ((0,), 1)


@pytest.mark.parametrize("payload", [b"", b"\x02", b"\x04\x80", b"\x01", b"\xff\xff\x03"])
def test_indexes_that_cannot_be_read_are_an_error(payload: bytes) -> None:
    """Cut short mid-varint, a negative count (zigzag 1 is -1), a count past the bound."""
    with pytest.raises(ValueError, match=r"mid-varint|index count"):
        read_indexes(payload)


def test_a_protobuf_record_decodes_by_its_schema_and_maps_like_json() -> None:
    """int64 as an int, the enum by name, bytes as base64, the Timestamp as RFC 3339, a nested
    message as an object, a map as an object: what `fields` reads."""
    source = Schemas({1: _proto_schema()})
    value = _header(1) + b"\x00" + _order().SerializeToString()
    decoded = _proto_schema().read(value[5:])
    assert decoded == {
        "uuid": "o-1",
        "kind": "ORDER_PAID",
        "ts": "2025-12-07T10:00:00Z",
        "total_cents": 12999,
        "buyer": {"crm_id": "c-7", "email": "anna@example.com"},
        "token": "AP9wYXk=",
        "tags": ["a", "b"],
        "attrs": {"tier": "gold"},
    }
    event = ProtobufInput(FIELDS, source, "orders").decode(value, None)
    assert (event.event_id, event.goal, event.value) == ("o-1", "purchase", 129.99)
    assert event.occurred_at.timestamp() == TS_S
    assert (event.customer.email, event.customer.ids) == ("anna@example.com", {"shop": "c-7"})
    assert event.params == {"channel": "web", "token": "AP9wYXk=", "tier": "gold"}


def test_a_proto3_scalar_left_at_its_default_is_present_with_it() -> None:
    """A proto3 field without presence is never absent: 0 cents is 0, not a missing field."""
    cls = message_class(order_file(), "shop.Order")
    decoded = _proto_schema().read(b"\x00" + cls(uuid="o-0").SerializeToString())
    assert decoded == {
        "uuid": "o-0",
        "kind": "KIND_UNSPECIFIED",
        "total_cents": 0,
        "token": "",
        "tags": [],
        "attrs": {},
    }  # the unset messages (ts, buyer) are absent, as their presence says


def test_nested_and_second_top_level_messages_are_found_by_their_indexes() -> None:
    """[1] is Refund (the second top-level message), [0, 0] Order.Buyer (nested in the first)."""
    schema = _proto_schema()
    refund = message_class(order_file(), "shop.Refund")(uuid="r-1", cents=-500)
    buyer = message_class(order_file(), "shop.Order.Buyer")(crm_id="c-1")
    assert schema.read(_confluent_indexes([1]) + refund.SerializeToString()) == {
        "uuid": "r-1",
        "cents": -500,
    }
    assert schema.read(_confluent_indexes([0, 0]) + buyer.SerializeToString()) == {
        "crm_id": "c-1",
        "email": "",
    }
    v2 = _proto_schema(2, version=2)
    note = message_class(order_file(2), "shop.Order.Buyer.Note")(text="hi")
    assert v2.read(_confluent_indexes([0, 0, 0]) + note.SerializeToString()) == {"text": "hi"}


def test_an_older_schema_id_still_decodes_after_the_producer_moves_to_v2() -> None:
    """Schema evolution: v1 and v2 define the same shop.Order; each id reads its own."""
    source = Schemas({1: _proto_schema(1), 2: _proto_schema(2, version=2)})
    proto = ProtobufInput(FIELDS, source, "orders")
    old = proto.decode(_header(1) + b"\x00" + _order().SerializeToString(), None)
    new = proto.decode(_header(2) + b"\x00" + _order(2, channel="app").SerializeToString(), None)
    assert old.params["channel"] == "web"  # v1 has no channel: the mapping's default
    assert new.params["channel"] == "app"
    assert old.event_id == new.event_id == "o-1"


def _undecodable(input_: Any, value: bytes) -> str:
    with pytest.raises(RegistryEventError) as raised:
        input_.decode(value, None)
    assert raised.value.dlq_reason == UNDECODABLE
    return str(raised.value)


def test_bytes_that_do_not_parse_or_indexes_naming_no_message_are_undecodable() -> None:
    proto = ProtobufInput(FIELDS, Schemas({1: _proto_schema()}), "orders")
    good = _header(1) + b"\x00" + _order().SerializeToString()
    assert "bytes do not match schema 1 (shop.Order)" in _undecodable(proto, good[:-3])
    assert "bytes do not match schema 1" in _undecodable(proto, good[:6] + b"\xff\xff\xff")
    said = _undecodable(proto, _header(1) + _confluent_indexes([5]) + b"")
    assert said == (
        "schema 1: message indexes [5] name no message (the schema has 2 top-level messages)"
    )
    said = _undecodable(proto, _header(1) + _confluent_indexes([0, 3]))
    assert said == "schema 1: message indexes [0, 3] name no message (shop.Order has 2 nested)"
    assert "mid-varint" in _undecodable(proto, _header(1) + b"\x04\x80")


def test_a_schema_of_another_type_than_the_inputs_format_is_undecodable_naming_both() -> None:
    avro_schema = AvroSchema(3, {"type": "record", "name": "R", "fields": []})
    json_schema = JsonSchema(4, ORDER_JSON_SCHEMA)
    source = Schemas({7: _proto_schema(7), 3: avro_schema, 4: json_schema})
    avro = build_input("avro", FIELDS, schemas=source, name="orders")
    proto = build_input("protobuf", FIELDS, schemas=source, name="mobile")
    json_input = build_input("json_schema", JSON_FIELDS, schemas=source, name="web")
    framed = _header(7) + b"\x00" + _order().SerializeToString()
    assert _undecodable(avro, framed) == "schema 7 is PROTOBUF; inputs.orders.format is avro"
    assert _undecodable(proto, _header(3)) == "schema 3 is AVRO; inputs.mobile.format is protobuf"
    assert (
        _undecodable(json_input, framed) == "schema 7 is PROTOBUF; inputs.web.format is json_schema"
    )
    assert _undecodable(proto, _header(4) + b"{}") == (
        "schema 4 is JSON; inputs.mobile.format is protobuf"
    )


def _json_order(**extra: Any) -> dict[str, Any]:
    return {
        "uuid": "o-1",
        "type": "order.paid",
        "ts": TS_S * 1000,
        "total_cents": 12999,
        "buyer": {"crm_id": "c-7"},
        **extra,
    }


def test_a_json_schema_record_is_validated_then_mapped() -> None:
    source = Schemas({4: JsonSchema(4, ORDER_JSON_SCHEMA)})
    json_input = JsonSchemaInput(JSON_FIELDS, source, "web")
    event = json_input.decode(_header(4) + orjson.dumps(_json_order(extra="kept")), None)
    assert (event.event_id, event.goal, event.value) == ("o-1", "purchase", 129.99)
    assert event.customer.ids == {"shop": "c-7"}
    assert event.occurred_at.timestamp() == TS_S


def test_invalid_json_or_a_failed_validation_is_undecodable_naming_the_path() -> None:
    json_input = JsonSchemaInput(JSON_FIELDS, Schemas({4: JsonSchema(4, ORDER_JSON_SCHEMA)}), "web")
    assert _undecodable(json_input, _header(4) + b'{"uuid": ').startswith(
        "not valid JSON (schema 4): "
    )
    negative = _header(4) + orjson.dumps(_json_order(total_cents=-1))
    assert _undecodable(json_input, negative) == (
        "does not match schema 4 at $.total_cents: -1 is less than the minimum of 0"
    )
    no_crm = _header(4) + orjson.dumps(_json_order(buyer={}))
    assert _undecodable(json_input, no_crm) == (
        'does not match schema 4 at $.buyer: "crm_id" is a required property'
    )


def test_schemas_that_cannot_be_compiled_decode_nothing_and_say_why() -> None:
    text = compile_schema(5, "PROTOBUF", 'syntax = "proto3"; message A { string a = 1; }')
    assert isinstance(text, Unusable) and "serialized" in text.message
    broken = compile_schema(6, "PROTOBUF", "AAAA")  # base64, but of no FileDescriptorProto
    assert isinstance(broken, Unusable) and broken.dlq_reason == UNDECODABLE
    no_schema = compile_schema(8, "JSON", '{"type": 12}')
    assert isinstance(no_schema, Unusable) and "cannot be compiled" in no_schema.message
    refs = compile_schema(9, "JSON", "{}", references=["common.json"])
    assert isinstance(refs, Unusable) and "references common.json" in refs.message
    assert isinstance(
        compile_schema(10, "JSON", orjson.dumps(ORDER_JSON_SCHEMA).decode()), JsonSchema
    )


def test_protobuf_and_json_schema_inputs_check_their_mapping_like_a_json_one() -> None:
    for name in ("protobuf", "json_schema"):
        assert input_problems(name, FIELDS, "auto") == []
        assert input_problems(name, {"goal": "$.kind"}, "binary")[0] == (
            "mode",
            "only for format: cloudevents",
        )
    assert type(build_input("protobuf", FIELDS)) is ProtobufInput
    assert type(build_input("json_schema", FIELDS)) is JsonSchemaInput
    assert type(build_input("avro", FIELDS)) is AvroInput


def test_a_relay_without_protobuf_or_json_schema_never_imports_their_libraries() -> None:
    """protobuf and jsonschema-rs load at the first schema of their type, not with the relay."""
    import subprocess
    import sys

    code = (
        "import sys, service.app, service.cli.map, service.delivery.registry; "
        "print(sorted(m for m in ('google.protobuf', 'jsonschema_rs') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


def _wkt_file() -> Any:
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.FileDescriptorProto(
        name="shop/extra.proto",
        package="shop",
        syntax="proto3",
        dependency=[
            "google/protobuf/wrappers.proto",
            "google/protobuf/duration.proto",
            "google/protobuf/struct.proto",
            "google/protobuf/api.proto",  # imports type.proto, which imports any.proto
        ],
    )
    extra = proto.message_type.add(name="Extra")
    for number, (name, type_name) in enumerate(
        [
            ("count", "Int64Value"),
            ("took", "Duration"),
            ("meta", "Struct"),
            ("note", "StringValue"),
            ("api", "Api"),
        ],
        start=1,
    ):
        extra.field.add(
            name=name, number=number, type=11, label=1, type_name=f".google.protobuf.{type_name}"
        )
    return proto


def test_well_known_types_decode_as_their_json_mapping_and_wrappers_as_their_value() -> None:
    """Only the well-known files a schema imports are in its pool (all of them cost 220 KiB a
    schema, measured), each after the ones it imports (api.proto needs type.proto, any.proto)."""
    from google.protobuf import descriptor_pool, message_factory

    proto = _wkt_file()
    schema = compile_schema(3, "PROTOBUF", schema_text(proto))
    assert isinstance(schema, ProtobufSchema), getattr(schema, "message", schema)
    from google.protobuf import (
        any_pb2,
        api_pb2,
        duration_pb2,
        source_context_pb2,
        struct_pb2,
        type_pb2,
        wrappers_pb2,
    )

    own = descriptor_pool.DescriptorPool()  # the producer's side, each file after its imports
    for module in (any_pb2, source_context_pb2, type_pb2, api_pb2, duration_pb2, struct_pb2):
        own.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    own.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    own.Add(proto)
    extra = message_factory.GetMessageClass(own.FindMessageTypeByName("shop.Extra"))()
    extra.count.value = 5_000_000_000
    extra.took.seconds, extra.took.nanos = 1, 500_000_000
    extra.meta.update({"a": 1, "b": ["x"]})
    extra.note.value = "gift"
    assert schema.read(b"\x00" + extra.SerializeToString()) == {
        "count": 5_000_000_000,  # an Int64Value: its int
        "took": "1.500s",
        "meta": {"a": 1.0, "b": ["x"]},
        "note": "gift",
    }
    order = _proto_schema()
    with pytest.raises(KeyError):  # the order imports timestamp.proto alone
        order._pool.FindFileByName("google/protobuf/descriptor.proto")
    order._pool.FindFileByName("google/protobuf/timestamp.proto")


def test_a_json_schema_with_a_remote_ref_is_never_fetched_and_decodes_nothing() -> None:
    """A record must not wait on the internet: a `$ref` to a URI makes the schema unusable."""
    schema = {"type": "object", "properties": {"buyer": {"$ref": "http://127.0.0.1:9/buyer.json"}}}
    entry = compile_schema(6, "JSON", orjson.dumps(schema).decode())
    assert isinstance(entry, Unusable)
    assert entry.dlq_reason == "undecodable"
    assert "http://127.0.0.1:9/buyer.json" in entry.message
