"""The Confluent Schema Registry wire format, pure: a record's value is magic byte 0, a 4-byte
big-endian schema id, then the payload in that schema: Avro here, Protobuf in
service/core/protobuf.py, JSON Schema in service/core/json_schema.py. Schemas are compiled once
per id and kept in one bounded cache whatever their type; the I/O that fills it is
service/delivery/registry.py.

A record whose schema is not cached yet is neither an event nor an invalid one: `SchemaPending`
says so, and its record waits (never dead-lettered) until the registry has answered.
"""

from __future__ import annotations

import io
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import orjson

from service.errors import EventError

if TYPE_CHECKING:
    from service.core.json_schema import JsonSchema
    from service.core.protobuf import ProtobufSchema

MAGIC = 0
HEADER_BYTES = 5  # magic byte + 4-byte schema id
_ID = struct.Struct(">I")
# Not in the registry (Confluent's error 40403): dead-lettered as unknown_schema.
UNKNOWN_SCHEMA = "unknown_schema"
# Bytes that do not match their schema (or no wire-format frame): dead-lettered as undecodable.
UNDECODABLE = "undecodable"


class RegistryEventError(EventError):
    """A framed record that cannot be read, with the DLQ reason it is dead-lettered under."""

    def __init__(self, message: str, dlq_reason: str) -> None:
        super().__init__(message, kind=dlq_reason)
        self.dlq_reason = dlq_reason


class SchemaPending(Exception):
    """The record's schema is not cached yet: it waits for the registry, never dead-lettered."""

    def __init__(self, schema_id: int, source: SchemaSource) -> None:
        super().__init__(f"schema {schema_id} not fetched yet")
        self.schema_id = schema_id
        self.source = source

    def when_ready(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the registry has answered for the id (however long it is down)."""
        self.source.when_ready(self.schema_id, callback)


class Unusable:
    """What the registry answered for an id that decodes nothing: unknown, or no schema that
    compiles."""

    __slots__ = ("dlq_reason", "message")

    def __init__(self, dlq_reason: str, message: str) -> None:
        self.dlq_reason = dlq_reason
        self.message = message


def _plain_types(node: Any) -> Any:
    """The schema without logical types: a timestamp-millis is read as its long (map it with
    `| epoch_ms`), a decimal as its bytes; no datetime or Decimal is built per record."""
    if isinstance(node, dict):
        return {k: _plain_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_plain_types(v) for v in node]
    return node


def _fastavro() -> Any:
    """fastavro, imported at the first schema (about 25 ms: a relay without Avro never pays)."""
    import fastavro
    import fastavro._read

    return fastavro


def _reader() -> Callable[..., Any]:
    """fastavro's compiled reader under `schemaless_reader`, which parses the (parsed) schema
    again and builds its options at every call: measured 4.9 against 7.7 µs a record. The
    public function where a fastavro release no longer has it (the pin is 1.13.1)."""
    fastavro = _fastavro()
    found: Callable[..., Any] | None = getattr(fastavro._read, "_read_data", None)
    if found is not None:
        return found
    return lambda buffer, parsed, named, reader, options: fastavro.schemaless_reader(
        buffer, parsed, None
    )


_OPTIONS = {
    "return_record_name": False,
    "return_record_name_override": False,
    "handle_unicode_errors": "strict",
    "return_named_type": False,
    "return_named_type_override": False,
}


class AvroSchema:
    """One writer schema, parsed once; `read` decodes a payload to dicts and lists."""

    __slots__ = ("_named", "_parsed", "_read", "schema_id")

    schema_type = "AVRO"

    def __init__(self, schema_id: int, schema: Any) -> None:
        self.schema_id = schema_id
        self._named: dict[str, dict[str, Any]] = {"writer": {}, "reader": {}}
        self._parsed = _fastavro().parse_schema(_plain_types(schema), self._named["writer"])
        self._read = _reader()

    def read(self, payload: bytes | memoryview) -> Any:
        """The decoded record; RegistryEventError (undecodable) when the bytes do not match."""
        buffer = io.BytesIO(payload)
        try:
            record = self._read(buffer, self._parsed, self._named, None, _OPTIONS)
        except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, ...
            raise RegistryEventError(
                f"bytes do not match schema {self.schema_id}: {type(exc).__name__}: {exc}"[:300],
                UNDECODABLE,
            ) from None
        left = len(payload) - buffer.tell()
        if left:
            raise RegistryEventError(
                f"bytes do not match schema {self.schema_id}: {left} bytes after the record",
                UNDECODABLE,
            )
        return record


# A compiled schema of any type (each has `schema_type` and `read`), or why an id decodes nothing.
Cached: TypeAlias = "AvroSchema | ProtobufSchema | JsonSchema | Unusable"
# The schema type each framed input format reads (a schema of another type is dead-lettered).
SCHEMA_TYPES = {"avro": "AVRO", "protobuf": "PROTOBUF", "json_schema": "JSON"}


def frame(schema_id: int, payload: bytes) -> bytes:
    """A value in the wire format: magic byte 0, the schema id, the payload."""
    return bytes((MAGIC,)) + _ID.pack(schema_id) + payload


def avro_value(schema_id: int, parsed: Any, record: Any) -> bytes:
    """A record (JSON-shaped: a timestamp-millis as its long) written as a framed Avro value, as
    confluent-kafka's AvroSerializer writes it; ValueError naming what does not fit."""
    out = io.BytesIO()
    try:
        _fastavro().schemaless_writer(out, parsed, record)
    except Exception as exc:  # fastavro raises ValueError, TypeError, KeyError, ...
        raise ValueError(f"does not fit the schema: {type(exc).__name__}: {exc}"[:300]) from None
    return frame(schema_id, out.getvalue())


def parse_for_writing(schema: Any) -> Any:
    """A schema parsed to write JSON-shaped records with (logical types as their plain type)."""
    return _fastavro().parse_schema(_plain_types(schema))


def compile_schema(
    schema_id: int,
    schema_type: str,
    schema_text: str,
    imports: Sequence[tuple[str, bytes]] = (),
    references: Sequence[str] = (),
) -> Cached:
    """What a registry answer becomes in the cache: the compiled schema, or why it decodes
    nothing. A PROTOBUF schema is a base64 FileDescriptorProto (`?format=serialized`), `imports`
    the files its references name, already fetched; a JSON schema's `references` are not
    resolved (named here to say so)."""
    kind = schema_type.upper()
    try:
        if kind == "AVRO":
            return AvroSchema(schema_id, orjson.loads(schema_text))
        if kind == "PROTOBUF":
            from service.core.protobuf import ProtobufSchema, serialized

            raw = serialized(schema_text)
            if raw is None:
                return Unusable(
                    UNDECODABLE,
                    f"schema {schema_id} is .proto text; the relay reads it serialized "
                    "(?format=serialized)",
                )
            return ProtobufSchema(schema_id, raw, imports)
        if kind == "JSON":
            if references:
                return Unusable(
                    UNDECODABLE,
                    f"schema {schema_id} references {', '.join(references)}: JSON Schema "
                    "references are not resolved",
                )
            from service.core.json_schema import JsonSchema

            return JsonSchema(schema_id, orjson.loads(schema_text))
    except Exception as exc:  # not JSON, or no schema its library accepts
        return Unusable(
            UNDECODABLE,
            f"schema {schema_id} cannot be compiled: {type(exc).__name__}: {exc}"[:300],
        )
    return Unusable(UNDECODABLE, f"schema {schema_id} is {schema_type}, which no input decodes")


class SchemaCache:
    """Compiled schemas by id, least recently used first out past `max_schemas`."""

    def __init__(self, max_schemas: int) -> None:
        self.max_schemas = max_schemas
        self._by_id: OrderedDict[int, Cached] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, schema_id: int) -> Cached | None:
        """The cached entry (now the most recently used), or None."""
        found = self._by_id.get(schema_id)
        if found is not None:
            self._by_id.move_to_end(schema_id)
        return found

    def put(self, schema_id: int, entry: Cached) -> None:
        """Keep an entry, dropping the least recently used past the bound."""
        self._by_id[schema_id] = entry
        self._by_id.move_to_end(schema_id)
        while len(self._by_id) > self.max_schemas:
            self._by_id.popitem(last=False)


class SchemaSource(Protocol):
    """Where an input's schemas come from: a cache filled from the registry."""

    def cached(self, schema_id: int) -> Cached | None:
        """The compiled schema if it is cached; None if the registry must be asked."""
        ...

    def when_ready(self, schema_id: int, callback: Callable[[], None]) -> None:
        """Fetch the id if no one is fetching it; call `callback` once it is cached."""
        ...


def split_frame(value: bytes) -> tuple[int, memoryview]:
    """(schema id, payload) of a value in the wire format; RegistryEventError if not framed."""
    if len(value) < HEADER_BYTES or value[0] != MAGIC:
        shown = "too short" if len(value) < HEADER_BYTES else f"magic byte {value[0]}"
        raise RegistryEventError(
            f"not in the Schema Registry wire format ({shown}; expected magic byte 0 and a "
            "4-byte schema id)",
            UNDECODABLE,
        )
    return _ID.unpack_from(value, 1)[0], memoryview(value)[HEADER_BYTES:]


def read_framed(
    value: bytes, source: SchemaSource, schema_type: str = "AVRO", where: str = ""
) -> Any:
    """The record a framed value holds, decoded by its schema; SchemaPending on a cache miss,
    RegistryEventError (undecodable) when the schema is not of `schema_type` (the type the
    input's format reads: `where` names that format, e.g. `inputs.shop.format is avro`)."""
    schema_id, payload = split_frame(value)
    entry = source.cached(schema_id)
    if entry is None:
        raise SchemaPending(schema_id, source)
    if type(entry) is Unusable:
        raise RegistryEventError(entry.message, entry.dlq_reason)
    decoder: Any = entry
    if decoder.schema_type != schema_type:
        said = where or f"the input reads {schema_type}"
        raise RegistryEventError(
            f"schema {schema_id} is {decoder.schema_type}; {said}", UNDECODABLE
        )
    return decoder.read(payload)
