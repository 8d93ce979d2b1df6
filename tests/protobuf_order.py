"""A shop's order as a Protobuf schema built at runtime (a FileDescriptorProto: no protoc), in two
versions, and its message classes, each version in its own descriptor pool (as two producers'
builds would be): for the unit tests and the Schema Registry drill."""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

F = descriptor_pb2.FieldDescriptorProto
OPTIONAL, REPEATED = F.LABEL_OPTIONAL, F.LABEL_REPEATED


def _field(message: Any, name: str, number: int, kind: int, type_name: str = "", **extra: Any):
    if type_name:  # set only for messages and enums (an empty one counts as set)
        extra["type_name"] = type_name
    return message.field.add(
        name=name, number=number, type=kind, label=extra.pop("label", OPTIONAL), **extra
    )


def order_file(version: int = 1) -> descriptor_pb2.FileDescriptorProto:
    """shop/order.proto: `Order` (a Buyer nested in it, a map, a repeated field, an enum, bytes,
    a Timestamp), then `Refund`; version 2 adds `channel` to Order and `Note` nested in Buyer."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="shop/order.proto",
        package="shop",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    kind = proto.enum_type.add(name="Kind")
    kind.value.add(name="KIND_UNSPECIFIED", number=0)
    kind.value.add(name="ORDER_PAID", number=1)
    order = proto.message_type.add(name="Order")
    buyer = order.nested_type.add(name="Buyer")
    _field(buyer, "crm_id", 1, F.TYPE_STRING)
    _field(buyer, "email", 2, F.TYPE_STRING)
    entry = order.nested_type.add(name="AttrsEntry")
    entry.options.map_entry = True
    _field(entry, "key", 1, F.TYPE_STRING)
    _field(entry, "value", 2, F.TYPE_STRING)
    _field(order, "uuid", 1, F.TYPE_STRING)
    _field(order, "kind", 2, F.TYPE_ENUM, ".shop.Kind")
    _field(order, "ts", 3, F.TYPE_MESSAGE, ".google.protobuf.Timestamp")
    _field(order, "total_cents", 4, F.TYPE_INT64)
    _field(order, "buyer", 5, F.TYPE_MESSAGE, ".shop.Order.Buyer")
    _field(order, "token", 6, F.TYPE_BYTES)
    _field(order, "tags", 7, F.TYPE_STRING, label=REPEATED)
    _field(order, "attrs", 8, F.TYPE_MESSAGE, ".shop.Order.AttrsEntry", label=REPEATED)
    if version >= 2:
        _field(order, "channel", 9, F.TYPE_STRING)
        note = buyer.nested_type.add(name="Note")
        _field(note, "text", 1, F.TYPE_STRING)
    refund = proto.message_type.add(name="Refund")
    _field(refund, "uuid", 1, F.TYPE_STRING)
    _field(refund, "cents", 2, F.TYPE_INT64)
    return proto


def message_class(proto: descriptor_pb2.FileDescriptorProto, full_name: str) -> Any:
    """The message class of `full_name`, the file in a pool of its own."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))


def schema_text(proto: descriptor_pb2.FileDescriptorProto) -> str:
    """The schema as confluent-kafka's ProtobufSerializer registers it: base64 of the file."""
    return base64.b64encode(proto.SerializeToString()).decode("ascii")
