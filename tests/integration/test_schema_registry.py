"""Avro in the Confluent Schema Registry wire format, against a stand-in registry
(service/devtools/registry.py: the documented REST endpoints, Confluent's error bodies, outages and
slowness): the client's answers and outages, and a drill where confluent-kafka's own
AvroSerializer and librdkafka producer write into the embedded broker while the registry goes
down mid-run."""

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
from confluent_kafka.serialization import MessageField, SerializationContext

from service.config import SchemaRegistryConfig
from service.core.registry import UNKNOWN_SCHEMA, AvroSchema, Unusable
from service.delivery.registry import SchemaRegistryClient
from service.devtools.embedded import create_topics
from service.devtools.registry import RegistryServer
from service.metrics import Metrics
from tests.conftest import GOAL_PURCHASE, goal_reach_vendor, read_topic, relay_config, wait_for

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
