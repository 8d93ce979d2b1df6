"""JSON Schema records in the Confluent Schema Registry wire format, pure: after the 5-byte
header the payload is the JSON document itself, validated against its writer's schema as
confluent-kafka's JSONDeserializer does (the draft the schema's `$schema` names, 2020-12 when it
names none; `format` keywords not asserted; no remote `$ref` fetched), then mapped like any JSON.

Validated by jsonschema-rs (every draft; measured 0.39 µs a record where `jsonschema`, which
confluent-kafka uses, took 29-32 µs), imported at the first JSON schema (a relay without one
never pays).
"""

from __future__ import annotations

from typing import Any

import orjson

from service.core.registry import UNDECODABLE, RegistryEventError


def _no_remote(uri: str) -> Any:
    """A `$ref` outside the schema: never fetched (a record must not wait on the internet)."""
    raise ValueError(f"remote reference {uri} is not fetched; inline it or bundle the schema")


class JsonSchema:
    """One writer schema, its validator built once; `read` parses and validates a payload."""

    __slots__ = ("_valid", "_validator", "schema_id")

    schema_type = "JSON"

    def __init__(self, schema_id: int, schema: Any) -> None:
        import jsonschema_rs

        self.schema_id = schema_id
        # Raises ValidationError (a ValueError) for a schema that is not valid under its draft
        # or whose references cannot be resolved: compile_schema makes it Unusable once.
        self._validator = jsonschema_rs.validator_for(
            schema, validate_formats=False, retriever=_no_remote
        )
        self._valid = self._validator.is_valid

    def read(self, payload: bytes | memoryview) -> Any:
        """The decoded document; RegistryEventError (undecodable) when it is not JSON or does not
        match the schema (naming the failing path)."""
        try:
            record = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise RegistryEventError(
                f"not valid JSON (schema {self.schema_id}): {exc}"[:300], UNDECODABLE
            ) from None
        if not self._valid(record):  # the fast path; the errors are collected only on failure
            error = next(iter(self._validator.iter_errors(record)))
            where = "$" + "".join(
                f"[{step}]" if isinstance(step, int) else f".{step}" for step in error.instance_path
            )
            raise RegistryEventError(
                f"does not match schema {self.schema_id} at {where}: {error.message}"[:300],
                UNDECODABLE,
            )
        return record
