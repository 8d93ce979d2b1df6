"""Avro, Protobuf and JSON Schema in the Confluent Schema Registry wire format, against a
stand-in registry (service/devtools/registry.py: the documented REST endpoints, Confluent's error
bodies, outages and slowness): the client's answers and outages, a drill where confluent-kafka's
own AvroSerializer and librdkafka producer write into the embedded broker while the registry
goes down mid-run, and one where its ProtobufSerializer and JSONSerializer write."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient as ConfluentRegistry
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pool, message_factory

from service.config import SchemaRegistryConfig
from service.core.protobuf import ProtobufSchema
from service.core.registry import UNKNOWN_SCHEMA, AvroSchema, Unusable
from service.delivery.registry import SchemaRegistryClient
from service.devtools.embedded import create_topics
from service.devtools.registry import RegistryServer, proto_text
from service.metrics import Metrics
from tests.conftest import GOAL_PURCHASE, goal_reach_vendor, read_topic, relay_config, wait_for
from tests.protobuf_order import message_class, order_file, schema_text

ORDER_V1 = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [
        {"name": "uuid", "type": "string"},
        {"name": "type", "type": "string"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "total_cents", "type": "long"},
        {"name": "crm_id", "type": "string"},
    ],
}
# A compatible evolution: v2 adds a field with a default.
ORDER_V2 = {
    **ORDER_V1,
    "fields": [
        *ORDER_V1["fields"],
        {"name": "coupon", "type": ["null", "string"], "default": None},
    ],
}
FIELDS = {
    "event_id": "$.uuid",
    "goal": {"from": "$.type", "map": {"order.paid": "purchase"}},
    "occurred_at": "$.ts | epoch_ms",
    "value": "$.total_cents / 100",
    "customer.ids.sustain_impact": "$.crm_id",
}


@pytest.fixture
async def registry() -> Any:
    server = RegistryServer()
    await server.start()
    yield server
    await server.stop()


def _client(server: RegistryServer, metrics: Metrics | None = None, **extra: Any) -> Any:
    config = SchemaRegistryConfig(url=server.url, retry_interval_s=0.1, timeout_s=1.0, **extra)
    return SchemaRegistryClient(config, metrics)


async def _ready(client: Any, schema_id: int, timeout_s: float = 5.0) -> None:
    """Until the client has an answer for the id cached (as a parked record waits)."""
    ready = asyncio.Event()
    client.when_ready(schema_id, ready.set)
    await asyncio.wait_for(ready.wait(), timeout_s)


async def test_client_fetches_each_id_once_and_only_40403_makes_it_unknown(registry) -> None:
    schema_id = registry.register("orders-value", ORDER_V1)
    client = _client(registry)
    try:
        await asyncio.gather(*(_ready(client, schema_id) for _ in range(20)))
        assert isinstance(client.cached(schema_id), AvroSchema)
        assert registry.requests["GET /schemas/ids/{id}"] == 1  # one fetch for 20 records
        await _ready(client, 404)
        unknown = client.cached(404)
        assert isinstance(unknown, Unusable) and unknown.dlq_reason == UNKNOWN_SCHEMA
    finally:
        await client.aclose()


async def test_a_down_slow_or_refusing_registry_is_waited_for_never_unknown(registry) -> None:
    """503, a timeout and a 401 are no answer about the id: the wait goes on, /status and the
    metric say down, and the first answer after the outage is used."""
    schema_id = registry.register("orders-value", ORDER_V1)
    metrics = Metrics()
    client = _client(registry, metrics)

    def down() -> float | None:
        return metrics.registry.get_sample_value("conversion_relay_schema_registry_down")

    try:
        registry.outage = True
        waiting = asyncio.create_task(_ready(client, schema_id, 60))
        await wait_for(lambda: registry.requests["GET /schemas/ids/{id}"] >= 3, 5, "retries")
        assert not waiting.done() and client.cached(schema_id) is None
        assert client.status()["state"] == "down" and down() == 1
        assert client.status()["records_waiting"] == 1
        registry.outage = False
        registry.delay_s = 1.5  # slower than timeout_s: still down
        await asyncio.sleep(1.2)
        assert not waiting.done()
        registry.delay_s = 0
        await asyncio.wait_for(waiting, 3)
        assert isinstance(client.cached(schema_id), AvroSchema)
        assert client.status() | {"url": ""} == {
            "url": "",
            "state": "up",
            "down_for_s": None,
            "last_error": client.status()["last_error"],
            "schemas_cached": 1,
            "max_schemas": 1000,
            "records_waiting": 0,
        }
        assert down() == 0
    finally:
        await client.aclose()


async def test_basic_auth_is_sent_and_a_refused_password_is_an_outage_not_unknown() -> None:
    server = RegistryServer(username="relay", password="s3cret-pw")
    await server.start()
    schema_id = server.register("orders-value", ORDER_V1)
    good = _client(server, username="relay", password="s3cret-pw")
    refused = _client(server, username="relay", password="wrong-password")
    try:
        await _ready(good, schema_id)
        assert isinstance(good.cached(schema_id), AvroSchema)
        refused.when_ready(schema_id, lambda: None)
        await wait_for(lambda: server.requests["GET /schemas/ids/{id}"] >= 3, 5, "401s")
        assert refused.cached(schema_id) is None
        assert "HTTP 401: Unauthorized" in refused.status()["last_error"]
    finally:
        await good.aclose()
        await refused.aclose()
        await server.stop()


async def test_nothing_is_called_back_after_the_client_is_closed(registry) -> None:
    registry.outage = True
    client = _client(registry)
    called: list[int] = []
    client.when_ready(1, lambda: called.append(1))
    await asyncio.sleep(0.2)
    await client.aclose()
    client.when_ready(2, lambda: called.append(2))
    await asyncio.sleep(0.3)
    assert called == [] and client.status()["records_waiting"] == 0


def _serialize(
    url: str, topic: str, schema: dict[str, Any], orders: list[dict[str, Any]]
) -> list[bytes]:
    """Values as confluent-kafka's own AvroSerializer writes them (registering the schema)."""
    serializer = AvroSerializer(ConfluentRegistry({"url": url}), orjson.dumps(schema).decode())
    context = SerializationContext(topic, MessageField.VALUE)
    return [serializer(order, context) for order in orders]


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """librdkafka writes the records, as a producer application would."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for value in values:
        producer.produce(topic, value)
    assert producer.flush(30) == 0


def _orders(count: int, now_ms: int, **extra: Any) -> list[dict[str, Any]]:
    return [
        {
            "uuid": str(uuid.uuid4()),
            "type": "order.paid",
            "ts": now_ms,
            "total_cents": 1000 + i,
            "crm_id": str(uuid.uuid4()),  # the vendor's customer id is a UUID
            **extra,
        }
        for i in range(count)
    ]


# The suite's outage; the issue's 60 s runs with REGISTRY_OUTAGE_S=60 (the same drill).
OUTAGE_S = float(os.environ.get("REGISTRY_OUTAGE_S", "10"))


@pytest.mark.timeout(120 + OUTAGE_S)
async def test_avro_drill_with_a_registry_outage_mid_run_loses_and_dead_letters_nothing(
    broker, topics, sandbox_factory, run_relay, registry, caplog
):
    """confluent-kafka's AvroSerializer writes v1 and v2 orders; the registry goes down for
    OUTAGE_S seconds with v2 not yet fetched: v2's records wait (none delivered, none
    dead-lettered), v1's keep flowing, and within 3 s of the registry's return every record is
    delivered, 0 rejected; only the corrupt record and the unknown id are dead-lettered, with
    reasons undecodable and unknown_schema."""
    sandbox = await sandbox_factory()
    topic = f"{topics.source}.avro"
    await create_topics(broker.bootstrap, {topic: 2})
    inputs = {"shop": {"topic": topic, "format": "avro", "fields": FIELDS}}
    config = relay_config(
        broker,
        topics,
        {"sustain_impact": goal_reach_vendor(sandbox)},
        inputs=inputs,
        schema_registry={"url": registry.url, "retry_interval_s": 0.5, "timeout_s": 1.0},
    )
    config["kafka"]["topics"] = [topics.source, topic]
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    first, second, during = (
        _orders(20, now_ms),
        _orders(20, now_ms, coupon="X1"),
        _orders(20, now_ms),
    )
    v1 = await asyncio.to_thread(_serialize, registry.url, topic, ORDER_V1, first + during)
    v2 = await asyncio.to_thread(_serialize, registry.url, topic, ORDER_V2, second)
    assert v1[0][:5] != v2[0][:5]  # two schema ids
    corrupt = v1[0][:-4]  # the id of a cached schema, bytes cut short
    unknown_id = b"\x00\x00\x00\x03\xe7" + v1[1][5:]  # id 999: never registered
    await asyncio.to_thread(_produce, broker.bootstrap, topic, v1[:20])

    caplog.set_level(logging.INFO, logger="conversion_relay.schema_registry")
    relay = await run_relay(config)
    await wait_for(lambda: len(sandbox.accepted) >= 20, 30, "v1 orders delivered")

    registry.outage = True
    started = time.monotonic()
    await asyncio.to_thread(_produce, broker.bootstrap, topic, [*v2, corrupt, unknown_id, *v1[20:]])
    await wait_for(lambda: len(sandbox.accepted) >= 40, 20, "v1 orders flow during the outage")
    await wait_for(lambda: relay.status()["schema_registry"]["state"] == "down", 10, "down")
    await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - started)))
    status = relay.status()["schema_registry"]
    assert status["records_waiting"] >= 1 and status["down_for_s"] >= OUTAGE_S - 2
    down = relay.metrics.registry.get_sample_value("conversion_relay_schema_registry_down")
    assert down == 1
    assert len(sandbox.accepted) == 40  # v2's records wait for their schema
    letters = await read_topic(broker.bootstrap, topics.dlq, 1)
    assert [dict(letter.headers)["relay-reason"] for letter in letters] == [b"undecodable"]

    registry.outage = False
    back = time.monotonic()
    await wait_for(lambda: len(sandbox.accepted) >= 60, 10, "v2 orders after the outage")
    resumed_s = time.monotonic() - back
    assert resumed_s < 3.0, resumed_s
    letters = await read_topic(broker.bootstrap, topics.dlq, 2)
    reasons = sorted(dict(letter.headers)["relay-reason"].decode() for letter in letters)
    assert reasons == ["undecodable", "unknown_schema"]
    await asyncio.sleep(0.5)
    assert len(sandbox.accepted) == 60 and not sandbox.refused
    payloads = {p["CustomerId"]: p for p in sandbox.payloads()}
    assert set(payloads) == {o["crm_id"] for o in first + second + during}
    assert all(p["GoalId"] == GOAL_PURCHASE for p in payloads.values())
    said = [r.getMessage() for r in caplog.records if r.name == "conversion_relay.schema_registry"]
    assert len(said) == 2, said  # one line when it went down, one when it came back
    assert said[0].startswith("schema registry unreachable; records needing a schema wait")
    print(f"\nregistry outage {OUTAGE_S:.0f}s: delivery resumed {resumed_s:.2f}s after it ended")


async def test_publish_format_avro_registers_the_schema_and_the_relay_delivers_its_records(
    broker, topics, sandbox_factory, run_relay, registry, tmp_path
):
    """`publish --format avro --schema FILE --registry URL` writes each JSON line as a framed
    Avro record of the schema it registered under TOPIC-value; a relay with the mapping delivers
    every one (0 rejected), so an operator tests a mapping end to end."""
    from service.cli import main

    sandbox = await sandbox_factory()
    topic = f"{topics.source}.avro"
    await create_topics(broker.bootstrap, {topic: 1})
    schema = tmp_path / "order.avsc"
    schema.write_text(orjson.dumps(ORDER_V2).decode(), encoding="utf-8")
    orders = _orders(3, int(datetime.now(UTC).timestamp() * 1000), coupon=None)
    lines = tmp_path / "orders.jsonl"
    lines.write_bytes(b"\n".join(orjson.dumps(o) for o in orders) + b"\n")
    argv = ["publish", str(lines), "--format", "avro", "--schema", str(schema)]
    argv += ["--registry", registry.url, "--bootstrap", broker.bootstrap, "--topic", topic]
    assert await asyncio.to_thread(main, argv) == 0
    assert registry.subjects == {f"{topic}-value": [1]}
    records = await read_topic(broker.bootstrap, topic, 3)
    assert {r.value[:5] for r in records} == {b"\x00\x00\x00\x00\x01"}

    inputs = {"shop": {"topic": topic, "format": "avro", "fields": FIELDS}}
    config = relay_config(
        broker,
        topics,
        {"sustain_impact": goal_reach_vendor(sandbox)},
        inputs=inputs,
        schema_registry={"url": registry.url},
    )
    config["kafka"]["topics"] = [topics.source, topic]
    await run_relay(config)
    await wait_for(lambda: len(sandbox.accepted) >= 3, 30, "the published orders delivered")
    assert {p["CustomerId"] for p in sandbox.payloads()} == {o["crm_id"] for o in orders}
    assert not sandbox.refused


async def test_tls_to_the_registry_checks_its_ca_and_presents_the_client_certificate(
    tmp_path,
) -> None:
    """https with ssl_cafile (a private CA) and mutual TLS (ssl_certfile/ssl_keyfile) fetches the
    schema; without the CA the certificate is refused and the client counts the registry down."""
    import ssl

    import trustme

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: a client certificate or nothing
    ca.configure_trust(server_context)
    ca_path, cert_path = tmp_path / "ca.pem", tmp_path / "client.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    client_cert = ca.issue_cert("relay")
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    server = RegistryServer()
    await server.start(server_context)
    schema_id = server.register("orders-value", ORDER_V1)
    trusted = _client(server, ssl_cafile=str(ca_path), ssl_certfile=str(cert_path))
    untrusted = _client(server)
    try:
        await _ready(trusted, schema_id)
        assert isinstance(trusted.cached(schema_id), AvroSchema)
        untrusted.when_ready(schema_id, lambda: None)
        await wait_for(lambda: untrusted.status()["state"] == "down", 5, "refused certificate")
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.status()["last_error"]
    finally:
        await trusted.aclose()
        await untrusted.aclose()
        await server.stop()


# ---- Protobuf and JSON Schema ---------------------------------------------------------------


def _proto_registered(server: RegistryServer, version: int = 1, **extra: Any) -> int:
    return server.register("orders-value", schema_text(order_file(version)), "PROTOBUF", **extra)


async def test_a_protobuf_schema_answered_as_proto_text_is_fetched_again_serialized(
    registry,
) -> None:
    """The stand-in answers as a real registry does by default (.proto text rendered from what
    was registered); the client asks again with ?format=serialized and compiles that."""
    schema_id = _proto_registered(registry)
    client = _client(registry)
    try:
        await _ready(client, schema_id)
        assert isinstance(client.cached(schema_id), ProtobufSchema)
        assert registry.requests["GET /schemas/ids/{id}"] == 2  # the text, then serialized
    finally:
        await client.aclose()
    rendered = proto_text(schema_text(order_file()))
    assert rendered.startswith('syntax = "proto3";\npackage shop;\n')
    for line in (
        'import "google/protobuf/timestamp.proto";',
        "  map<string, string> attrs = 8;",
        "  repeated string tags = 7;",
        "  google.protobuf.Timestamp ts = 3;",
        "  message Buyer {",
    ):
        assert line in rendered.splitlines(), line


def _money_file() -> Any:
    from google.protobuf import descriptor_pb2

    common = descriptor_pb2.FileDescriptorProto(
        name="shop/money.proto", package="shop.common", syntax="proto3"
    )
    money = common.message_type.add(name="Money")
    money.field.add(name="cents", number=1, type=3, label=1)  # int64
    money.field.add(name="currency", number=2, type=9, label=1)  # string
    paid = descriptor_pb2.FileDescriptorProto(
        name="shop/paid.proto",
        package="shop",
        syntax="proto3",
        dependency=["shop/money.proto"],
    )
    order = paid.message_type.add(name="Paid")
    order.field.add(name="uuid", number=1, type=9, label=1)
    order.field.add(name="total", number=2, type=11, label=1, type_name=".shop.common.Money")
    return common, paid


async def test_protobuf_references_are_fetched_first_and_a_missing_one_is_undecodable(
    registry,
) -> None:
    """confluent-kafka's ProtobufSerializer registers the imported shop/money.proto under its own
    subject and lists it in the schema's references; the client fetches it (serialized) before
    compiling the schema. A reference to a subject the registry lacks makes it undecodable."""
    common, paid = _money_file()
    pool = descriptor_pool.DescriptorPool()
    pool.Add(common)
    pool.Add(paid)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("shop.Paid"))
    serializer = ProtobufSerializer(cls, ConfluentRegistry({"url": registry.url}))
    record = cls(uuid="p-1", total={"cents": 2599, "currency": "EUR"})
    context = SerializationContext("paid", MessageField.VALUE)
    value = await asyncio.to_thread(serializer, record, context)
    schema_id = int.from_bytes(value[1:5], "big")
    reference = {"name": "shop/money.proto", "subject": "shop/money.proto", "version": 1}
    assert registry.references[schema_id] == [reference]
    missing = {**reference, "subject": "gone.proto"}
    broken_id = registry.register("broken-value", schema_text(paid), "PROTOBUF", [missing])
    client = _client(registry)
    try:
        await _ready(client, schema_id)
        await _ready(client, broken_id)
    finally:
        await client.aclose()
    schema = client.cached(schema_id)
    assert isinstance(schema, ProtobufSchema)
    assert schema.read(value[5:]) == {"uuid": "p-1", "total": {"cents": 2599, "currency": "EUR"}}
    assert registry.requests["GET /subjects/{subject}/versions/{version}"] == 2
    broken = client.cached(broken_id)
    assert isinstance(broken, Unusable) and broken.dlq_reason == "undecodable"
    assert broken.message == (
        f"schema {broken_id} imports shop/money.proto (subject gone.proto version 1), which is "
        "not in the registry"
    )


ORDER_JSON_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Order",
    "type": "object",
    "properties": {
        "uuid": {"type": "string"},
        "type": {"type": "string"},
        "ts": {"type": "integer"},
        "total_cents": {"type": "integer", "minimum": 0},
        "crm_id": {"type": "string"},
    },
    "required": ["uuid", "type", "ts", "total_cents", "crm_id"],
}
PROTO_FIELDS = {
    "event_id": "$.uuid",
    "goal": {"from": "$.kind", "map": {"ORDER_PAID": "purchase"}},
    "occurred_at": "$.ts",
    "value": "$.total_cents / 100",
    "customer.ids.sustain_impact": "$.buyer.crm_id",
    "params.channel": {"from": "$.channel", "default": "web"},
}


def _proto_values(url: str, topic: str, version: int, orders: list[dict[str, Any]]) -> list[bytes]:
    """Values as confluent-kafka's own ProtobufSerializer writes them (registering the schema),
    the message class built at runtime from the FileDescriptorProto."""
    cls = message_class(order_file(version), "shop.Order")
    serializer = ProtobufSerializer(cls, ConfluentRegistry({"url": url}))
    context = SerializationContext(topic, MessageField.VALUE)
    values = []
    for order in orders:
        message = cls(
            uuid=order["uuid"],
            kind=1,
            total_cents=order["total_cents"],
            buyer={"crm_id": order["crm_id"]},
            **({"channel": "app"} if version >= 2 else {}),
        )
        message.ts.FromMilliseconds(order["ts"])
        values.append(serializer(message, context))
    return values


def _json_values(url: str, topic: str, orders: list[dict[str, Any]]) -> list[bytes]:
    """Values as confluent-kafka's own JSONSerializer writes them (validated, registered)."""
    serializer = JSONSerializer(
        orjson.dumps(ORDER_JSON_SCHEMA).decode(), ConfluentRegistry({"url": url})
    )
    context = SerializationContext(topic, MessageField.VALUE)
    return [serializer(order, context) for order in orders]


@pytest.mark.timeout(120)
async def test_protobuf_and_json_schema_records_from_confluent_serializers_are_delivered(
    broker, topics, sandbox_factory, run_relay, registry
):
    """confluent-kafka's ProtobufSerializer (two schema versions: the older id still decodes)
    and JSONSerializer write orders that librdkafka produces; the relay decodes each through the
    stand-in registry and delivers every one, 0 rejected. A protobuf record on the JSON Schema
    topic and a JSON document failing its schema are dead-lettered as undecodable."""
    sandbox = await sandbox_factory()
    proto_topic, json_topic = f"{topics.source}.proto", f"{topics.source}.jsonschema"
    await create_topics(broker.bootstrap, {proto_topic: 2, json_topic: 1})
    inputs = {
        "mobile": {"topic": proto_topic, "format": "protobuf", "fields": PROTO_FIELDS},
        "web": {"topic": json_topic, "format": "json_schema", "fields": FIELDS},
    }
    config = relay_config(
        broker,
        topics,
        {"sustain_impact": goal_reach_vendor(sandbox)},
        inputs=inputs,
        schema_registry={"url": registry.url, "retry_interval_s": 0.5, "timeout_s": 1.0},
    )
    config["kafka"]["topics"] = [topics.source, proto_topic, json_topic]
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    v1_orders, v2_orders, json_orders = (
        _orders(15, now_ms),
        _orders(15, now_ms),
        _orders(15, now_ms),
    )
    v1 = await asyncio.to_thread(_proto_values, registry.url, proto_topic, 1, v1_orders)
    v2 = await asyncio.to_thread(_proto_values, registry.url, proto_topic, 2, v2_orders)
    documents = await asyncio.to_thread(_json_values, registry.url, json_topic, json_orders)
    assert v1[0][:6] != v2[0][:6] and v1[0][5] == 0  # two ids; the single-0 index shortcut
    invalid = documents[0][:5] + orjson.dumps({**json_orders[0], "total_cents": -5})
    await asyncio.to_thread(_produce, broker.bootstrap, proto_topic, [*v1, *v2])
    await asyncio.to_thread(_produce, broker.bootstrap, json_topic, [*documents, v1[0], invalid])

    relay = await run_relay(config)
    await wait_for(lambda: len(sandbox.accepted) >= 45, 60, "every order delivered")
    letters = await read_topic(broker.bootstrap, topics.dlq, 2)
    assert [dict(letter.headers)["relay-reason"] for letter in letters] == [b"undecodable"] * 2
    errors = sorted(dict(letter.headers)["relay-error"].decode() for letter in letters)
    assert errors[0].startswith(f"does not match schema {documents[0][4]} at $.total_cents")
    assert errors[1] == (f"schema {v1[0][4]} is PROTOBUF; inputs.web.format is json_schema")
    await asyncio.sleep(0.5)
    assert len(sandbox.accepted) == 45 and not sandbox.refused
    payloads = {p["CustomerId"]: p for p in sandbox.payloads()}
    assert set(payloads) == {o["crm_id"] for o in v1_orders + v2_orders + json_orders}
    assert all(p["GoalId"] == GOAL_PURCHASE for p in payloads.values())
    assert relay.status()["schema_registry"]["schemas_cached"] == 3
