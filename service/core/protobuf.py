"""Protobuf in the Confluent Schema Registry wire format, pure: after the 5-byte header come the
message indexes (which message of the schema's file the record is), then the protobuf payload.

The indexes are a zigzag varint count, then that many zigzag varints: the path from the file's
top-level messages down through nested ones (`[1, 0]` = the first message nested in the second
top-level one); a single 0 byte is the shortcut for `[0]`, the first message, as confluent-kafka's
ProtobufSerializer writes it for most records.

A record decodes to dicts and lists, as `json_format.MessageToDict(preserving_proto_field_name=
True)` would make them except where a mapping is better served (measured faster too, see
`ProtobufSchema.read`): field names as in the .proto, every field without presence (a proto3
scalar) present with its default, 64-bit integers as ints (not strings), enums by name, bytes as
base64 text, a Timestamp as its RFC 3339 text, a wrapper as its value, map keys as text.

The `protobuf` package is imported at the first protobuf schema (a relay without one never pays).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Sequence
from typing import Any

from service.core.registry import UNDECODABLE, RegistryEventError

# How many indexes a record may name: a message nested deeper than this is no real schema's.
MAX_INDEXES = 100
# The well-known types (google/protobuf/*.proto) every schema may import without a reference,
# each after the files it imports.
_WELL_KNOWN = (
    "any_pb2",
    "source_context_pb2",
    "type_pb2",
    "api_pb2",
    "descriptor_pb2",
    "duration_pb2",
    "empty_pb2",
    "field_mask_pb2",
    "struct_pb2",
    "timestamp_pb2",
    "wrappers_pb2",
)
_WRAPPERS = frozenset(
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
# Well-known messages shown as their JSON mapping (rare in events: the exact form wins).
_AS_JSON = frozenset(
    {
        "google.protobuf.Duration",
        "google.protobuf.Struct",
        "google.protobuf.Value",
        "google.protobuf.ListValue",
        "google.protobuf.Any",
        "google.protobuf.FieldMask",
        "google.protobuf.Empty",
    }
)


def is_builtin(name: str) -> bool:
    """Whether an imported file is a well-known type every pool holds (never fetched)."""
    return name.startswith("google/protobuf/")


def _protobuf() -> Any:
    """The protobuf package's pieces, imported at the first protobuf schema."""
    import importlib

    from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

    well_known = [importlib.import_module(f"google.protobuf.{m}") for m in _WELL_KNOWN]
    return descriptor_pb2, descriptor_pool, json_format, message_factory, well_known


def serialized(text: str) -> bytes | None:
    """A schema's text as the serialized FileDescriptorProto it is base64 of, or None when it is
    not base64 (then it is .proto text: fetch it again with `?format=serialized`)."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def zigzag(value: int) -> int:
    """A signed int as protobuf's zigzag encoding makes it unsigned (for writing indexes)."""
    return (value << 1) ^ (value >> 63)


def _varint(data: bytes | memoryview, at: int) -> tuple[int, int]:
    """(the zigzag varint at `at`, the offset after it); ValueError when the bytes end."""
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("the message indexes end mid-varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return (value >> 1) ^ -(value & 1), at


def read_indexes(payload: bytes | memoryview) -> tuple[tuple[int, ...], int]:
    """(message indexes, offset of the protobuf payload) of a payload after the 5-byte header;
    ValueError when they cannot be read."""
    if payload and payload[0] == 0:
        return (0,), 1  # the single-0 shortcut: the first message
    count, at = _varint(payload, 0)
    if not 0 <= count <= MAX_INDEXES:
        raise ValueError(f"message index count {count} (expected 0 to {MAX_INDEXES})")
    indexes = []
    for _ in range(count):
        index, at = _varint(payload, at)
        indexes.append(index)
    return tuple(indexes) or (0,), at


def write_indexes(indexes: Sequence[int]) -> bytes:
    """Message indexes as confluent-kafka's ProtobufSerializer writes them ([0] as one 0 byte)."""
    if list(indexes) == [0]:
        return b"\x00"
    out = bytearray()
    for value in (len(indexes), *indexes):
        encoded = zigzag(value)
        while encoded > 0x7F:
            out.append((encoded & 0x7F) | 0x80)
            encoded >>= 7
        out.append(encoded)
    return bytes(out)


Convert = Callable[[Any], Any]


class _Message:
    """One message type of a schema: its class and how an instance becomes a dict."""

    __slots__ = ("convert", "from_bytes", "name")

    def __init__(self, name: str, cls: Any, convert: Convert) -> None:
        self.name = name
        self.from_bytes = cls.FromString
        self.convert = convert


def _key(key: Any) -> str:
    """A map key as the JSON mapping writes it (`true`, `7`)."""
    if type(key) is str:
        return key
    return ("true" if key else "false") if type(key) is bool else str(key)


def _timestamp(message: Any) -> str:
    """A Timestamp as RFC 3339 text, as its ToJsonString writes it (3, 6 or 9 digits of the
    fraction), measured 1.3 against 1.9 µs a Timestamp."""
    nanos = message.nanos
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(message.seconds))
    if not nanos:
        return f"{text}Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1000 == 0:
        return f"{text}.{nanos // 1000:06d}Z"
    return f"{text}.{nanos:09d}Z"


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


class ProtobufSchema:
    """One writer schema (a FileDescriptorProto and the files it imports) in its own descriptor
    pool, so two versions of one message never clash; `read` decodes a payload to dicts."""

    __slots__ = ("_messages", "_pool", "_top", "schema_id")

    schema_type = "PROTOBUF"

    def __init__(
        self, schema_id: int, file_bytes: bytes, imports: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        """`imports`: (file name, serialized FileDescriptorProto) of each referenced file, each
        after the files it imports itself."""
        descriptor_pb2, descriptor_pool, _, _, well_known = _protobuf()
        self.schema_id = schema_id
        self._pool = pool = descriptor_pool.DescriptorPool()
        # Only the well-known files the schema imports: all of them cost 220 KiB a schema
        # (measured; descriptor.proto most), which max_schemas of 1000 would not fit.
        built_in = {module.DESCRIPTOR.name: module.DESCRIPTOR for module in well_known}
        added: set[str] = set()
        for name, raw in imports:
            proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
            proto.name = name  # the name the importing file uses, as the reference says
            _add_built_in(pool, proto.dependency, built_in, added)
            pool.Add(proto)
        proto = descriptor_pb2.FileDescriptorProto.FromString(file_bytes)
        if not proto.name:
            proto.name = f"schema-{schema_id}.proto"
        _add_built_in(pool, proto.dependency, built_in, added)
        pool.Add(proto)
        prefix = f"{proto.package}." if proto.package else ""
        self._top = [pool.FindMessageTypeByName(prefix + m.name) for m in proto.message_type]
        if not self._top:
            raise ValueError("the file defines no message")
        self._messages: dict[tuple[int, ...], _Message] = {}

    def message(self, indexes: tuple[int, ...]) -> _Message:
        """The message type the indexes name; ValueError when they name none."""
        found = self._messages.get(indexes)
        if found is not None:
            return found
        choices = self._top
        descriptor: Any = None
        for index in indexes:
            if not 0 <= index < len(choices):
                where = (
                    f"the schema has {len(choices)} top-level messages"
                    if descriptor is None
                    else f"{descriptor.full_name} has {len(choices)} nested"
                )
                raise ValueError(f"message indexes {list(indexes)} name no message ({where})")
            descriptor = choices[index]
            choices = list(descriptor.nested_types)
        _, _, _, message_factory, _ = _protobuf()
        cls = message_factory.GetMessageClass(descriptor)
        found = self._messages[indexes] = _Message(
            descriptor.full_name, cls, _converter(descriptor, {})
        )
        return found

    def read(self, payload: bytes | memoryview) -> Any:
        """The decoded record; RegistryEventError (undecodable) when the bytes do not parse."""
        try:
            indexes, at = read_indexes(payload)
            message = self.message(indexes)
        except ValueError as exc:
            raise RegistryEventError(f"schema {self.schema_id}: {exc}", UNDECODABLE) from None
        try:
            parsed = message.from_bytes(bytes(payload[at:]))
        except Exception as exc:  # protobuf's DecodeError (upb), or a RuntimeError in recursion
            raise RegistryEventError(
                f"bytes do not match schema {self.schema_id} ({message.name}): "
                f"{type(exc).__name__}: {exc}"[:300],
                UNDECODABLE,
            ) from None
        return message.convert(parsed)


def _add_built_in(
    pool: Any, names: Sequence[str], built_in: dict[str, Any], added: set[str]
) -> None:
    """Add the well-known files among `names` to the pool, each after the ones it imports (a
    file neither built in nor referenced is left out: the pool then says it is missing)."""
    for name in names:
        found = built_in.get(name)
        if found is None or name in added:
            continue
        added.add(name)
        _add_built_in(pool, [d.name for d in found.dependencies], built_in, added)
        pool.AddSerializedFile(found.serialized_pb)


def _converter(descriptor: Any, done: dict[str, Convert]) -> Convert:
    """How an instance of the message becomes a dict: one small function per field, built once
    per message type (recursive types share theirs through `done`)."""
    name = descriptor.full_name
    if name in done:
        return done[name]
    if name in _WRAPPERS:  # the wrapped value, converted as a field of its type (bytes: base64)
        leaf = _leaf(descriptor.fields_by_name["value"])
        if leaf is None:
            return lambda message: message.value
        return lambda message: leaf(message.value)
    if name == "google.protobuf.Timestamp":
        return _timestamp
    if name in _AS_JSON:
        _, _, json_format, _, _ = _protobuf()
        return lambda message: json_format.MessageToDict(message, preserving_proto_field_name=True)
    plan: list[tuple[str, bool, Convert | None]] = []

    def convert(message: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field, present, leaf in plan:
            if present and not message.HasField(field):
                continue
            value = getattr(message, field)
            out[field] = value if leaf is None else leaf(value)
        return out

    done[name] = convert
    for field in descriptor.fields:
        plan.append((field.name, _has_presence(field), _field_converter(field, done)))
    return convert


def _has_presence(field: Any) -> bool:
    """Whether an unset field is absent (a message, `optional`, a oneof member), not default."""
    if field.is_repeated:  # protobuf ≥ 7 (the pin); repeated fields never have presence
        return False
    return bool(field.has_presence)


def _leaf(field: Any) -> Convert | None:
    """A scalar's converter, or None when the value is taken as it is."""
    kind = field.type
    if kind == field.TYPE_BYTES:
        return _b64
    if kind == field.TYPE_ENUM:
        names = {v.number: v.name for v in field.enum_type.values}
        return lambda number: names.get(number, number)
    return None


def _field_converter(field: Any, done: dict[str, Convert]) -> Convert | None:
    """The field's converter (None: taken as it is), repeated and map fields included."""
    message_type = field.message_type
    if message_type is not None and message_type.GetOptions().map_entry:
        # The key as text, as in the JSON mapping; each value converted as a field of its type.
        value = _field_converter(message_type.fields_by_name["value"], done)
        if value is None:
            return lambda entries: {_key(k): v for k, v in entries.items()}
        return lambda entries: {_key(k): value(v) for k, v in entries.items()}
    one = _converter(message_type, done) if message_type is not None else _leaf(field)
    if not field.is_repeated:
        return one
    if one is None:
        return list
    return lambda values: [one(v) for v in values]
