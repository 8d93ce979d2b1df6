"""A stand-in Confluent Schema Registry on a loopback port, for dev mode and the tests (there is
no registry server to install here): the documented REST endpoints the relay and
confluent-kafka's serializers use, Confluent's error bodies, and switchable slowness and
outages.

    GET  /schemas/ids/{id}[?format=serialized]   {"schema", "schemaType"?, "references"?} | 40403
    GET  /subjects                               ["orders-value", ...]
    GET  /subjects/{subject}/versions            [1, 2]                          | 40401
    POST /subjects/{subject}/versions            {"id": n} (same schema, same id)
    POST /subjects/{subject}                     lookup: {"subject", "version", "id", "schema"}
    GET  /subjects/{subject}/versions/{version}  {"subject", "version", "id", "schema"} | 40402

AVRO, PROTOBUF and JSON schemas are kept as registered, with their `schemaType` (absent for
AVRO, as the real one answers) and `references`. A PROTOBUF schema registered as confluent-kafka's
serializer does (a base64 FileDescriptorProto) is answered as .proto text rendered from it, as a
real registry answers by default, and as registered with `?format=serialized`; one registered
as .proto text is answered as registered either way (the stand-in compiles no .proto text).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections import Counter
from typing import Any

import orjson
from aiohttp import web

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def _error(status: int, code: int, message: str) -> web.Response:
    body = orjson.dumps({"error_code": code, "message": message})
    return web.Response(status=status, body=body, content_type=_CONTENT_TYPE)


def _ok(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type=_CONTENT_TYPE)


class RegistryServer:
    """Schemas by id and subjects' versions in memory; `outage` answers 503 (as a registry
    whose backing Kafka is gone), `delay_s` holds each answer (a slow registry)."""

    def __init__(self, username: str | None = None, password: str | None = None) -> None:
        self.schemas: dict[int, tuple[str, str]] = {}  # id → (schema text, schemaType)
        self.references: dict[int, list[dict[str, Any]]] = {}  # id → its references, if any
        self.subjects: dict[str, list[int]] = {}  # subject → schema id per version (1-based)
        self.outage = False
        self.delay_s = 0.0
        self.requests: Counter[str] = Counter()  # "GET /schemas/ids/{id}" → count
        self._auth = (
            "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
            if username is not None
            else None
        )
        self._runner: web.AppRunner | None = None
        self.url = ""

    def register(
        self,
        subject: str,
        schema: str | dict[str, Any],
        schema_type: str = "AVRO",
        references: list[dict[str, Any]] | None = None,
    ) -> int:
        """The id of a schema under a subject, registering it as the next version if new."""
        text = schema if isinstance(schema, str) else orjson.dumps(schema).decode()
        refs = references or []
        same = [
            i
            for i, (known, kind) in self.schemas.items()
            if (known, kind) == (text, schema_type) and self.references.get(i, []) == refs
        ]
        schema_id = same[0] if same else len(self.schemas) + 1
        self.schemas[schema_id] = (text, schema_type)
        if refs:
            self.references[schema_id] = refs
        versions = self.subjects.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
        return schema_id

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        """Listen on a free loopback port (HTTPS with `ssl_context`); `url` is its base URL."""
        app = web.Application(middlewares=[self._gate])
        app.router.add_get("/schemas/ids/{id}", self._schema_by_id)
        app.router.add_get("/subjects", self._subjects)
        app.router.add_get("/subjects/{subject}/versions", self._versions)
        app.router.add_post("/subjects/{subject}/versions", self._register)
        app.router.add_post("/subjects/{subject}", self._lookup)
        app.router.add_get("/subjects/{subject}/versions/{version}", self._version)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        route = request.match_info.route.resource
        self.requests[f"{request.method} {route.canonical if route else request.path}"] += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.outage:
            return _error(503, 50003, "Error while forwarding the request to the primary")
        if self._auth is not None and request.headers.get("Authorization") != self._auth:
            return _error(401, 40101, "Unauthorized")
        response: web.StreamResponse = await handler(request)
        return response

    def _answer(self, schema_id: int, request: web.Request) -> dict[str, Any]:
        """What the registry says of an id: the schema (rendered as .proto text for PROTOBUF
        unless `?format=serialized`), its type unless AVRO, its references if any."""
        text, kind = self.schemas[schema_id]
        if kind == "PROTOBUF" and request.query.get("format") != "serialized":
            text = proto_text(text)
        found: dict[str, Any] = {"schema": text}
        if kind != "AVRO":
            found["schemaType"] = kind
        if schema_id in self.references:
            found["references"] = self.references[schema_id]
        return found

    async def _schema_by_id(self, request: web.Request) -> web.Response:
        schema_id = int(request.match_info["id"])
        if schema_id not in self.schemas:
            return _error(404, 40403, "Schema not found")
        return _ok(self._answer(schema_id, request))

    async def _subjects(self, request: web.Request) -> web.Response:
        return _ok(sorted(self.subjects))

    async def _versions(self, request: web.Request) -> web.Response:
        versions = self.subjects.get(request.match_info["subject"])
        if versions is None:
            return _error(404, 40401, "Subject not found")
        return _ok(list(range(1, len(versions) + 1)))

    async def _register(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        schema_id = self.register(
            request.match_info["subject"],
            body["schema"],
            body.get("schemaType", "AVRO"),
            body.get("references"),
        )
        return _ok({"id": schema_id})

    def _entry(self, subject: str, index: int, request: web.Request) -> dict[str, Any]:
        schema_id = self.subjects[subject][index]
        return {
            "subject": subject,
            "version": index + 1,
            "id": schema_id,
            "schemaType": self.schemas[schema_id][1],
            **self._answer(schema_id, request),
        }

    async def _lookup(self, request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        if subject not in self.subjects:
            return _error(404, 40401, "Subject not found")
        body = orjson.loads(await request.read())
        for index, schema_id in enumerate(self.subjects[subject]):
            if self.schemas[schema_id][0] == body["schema"]:
                return _ok(self._entry(subject, index, request))
        return _error(404, 40403, "Schema not found")

    async def _version(self, request: web.Request) -> web.Response:
        subject, version = request.match_info["subject"], request.match_info["version"]
        versions = self.subjects.get(subject)
        if versions is None:
            return _error(404, 40401, "Subject not found")
        index = len(versions) - 1 if version in ("latest", "-1") else int(version) - 1
        if not 0 <= index < len(versions):
            return _error(404, 40402, "Version not found")
        return _ok(self._entry(subject, index, request))


_SCALARS = {
    1: "double",
    2: "float",
    3: "int64",
    4: "uint64",
    5: "int32",
    6: "fixed64",
    7: "fixed32",
    8: "bool",
    9: "string",
    12: "bytes",
    13: "uint32",
    15: "sfixed32",
    16: "sfixed64",
    17: "sint32",
    18: "sint64",
}


def proto_text(schema: str) -> str:
    """The .proto text of a base64 FileDescriptorProto, as a real registry renders it by default
    (messages, nested ones, enums, maps, oneofs, imports: what confluent-kafka's deserializer
    and the relay need to see that it is text); `schema` as it is when it is not base64."""
    from google.protobuf import descriptor_pb2

    try:
        raw = base64.b64decode(schema, validate=True)
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
    except Exception:  # .proto text already (binascii.Error), or no FileDescriptorProto
        return schema
    lines = [f'syntax = "{proto.syntax or "proto2"}";']
    lines += [f"package {proto.package};"] if proto.package else []
    lines += [f'import "{name}";' for name in proto.dependency]
    for enum in proto.enum_type:
        lines += _enum_text(enum, "")
    for message in proto.message_type:
        lines += _message_text(message, "", proto.syntax == "proto3")
    return "\n".join(lines) + "\n"


def _enum_text(enum: Any, indent: str) -> list[str]:
    values = [f"{indent}  {v.name} = {v.number};" for v in enum.value]
    return [f"{indent}enum {enum.name} {{", *values, f"{indent}}}"]


def _type_text(field: Any, maps: dict[str, Any]) -> str:
    if field.type_name:
        entry = maps.get(field.type_name.rpartition(".")[2])
        if entry is not None:
            key, value = entry.field
            return f"map<{_type_text(key, {})}, {_type_text(value, {})}>"
        return str(field.type_name).lstrip(".")
    return _SCALARS[field.type]


def _message_text(message: Any, indent: str, proto3: bool) -> list[str]:
    maps = {n.name: n for n in message.nested_type if n.options.map_entry}
    lines = [f"{indent}message {message.name} {{"]
    for nested in message.nested_type:
        if nested.name not in maps:
            lines += _message_text(nested, indent + "  ", proto3)
    for enum in message.enum_type:
        lines += _enum_text(enum, indent + "  ")
    oneofs: dict[int, list[str]] = {}
    for field in message.field:
        kind = _type_text(field, maps)
        label = ""
        if field.label == field.LABEL_REPEATED and not kind.startswith("map<"):
            label = "repeated "
        elif field.proto3_optional or (not proto3 and field.label == field.LABEL_OPTIONAL):
            label = "optional "
        elif field.label == field.LABEL_REQUIRED:
            label = "required "
        line = f"{label}{kind} {field.name} = {field.number};"
        if field.HasField("oneof_index") and not field.proto3_optional:
            oneofs.setdefault(field.oneof_index, []).append(line)
        else:
            lines.append(f"{indent}  {line}")
    for index, members in oneofs.items():
        lines.append(f"{indent}  oneof {message.oneof_decl[index].name} {{")
        lines += [f"{indent}    {line}" for line in members]
        lines.append(f"{indent}  }}")
    lines.append(f"{indent}}}")
    return lines
