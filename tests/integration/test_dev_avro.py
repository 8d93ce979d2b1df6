"""`conversion-relay dev` shows producers' own formats: a shop's orders in Avro through the stand-in
Schema Registry onto shop.orders (`inputs.shop`) and a CRM's own JSON onto crm.orders
(`inputs.crm`), each mapped by the demo config and delivered to the same vendors as the canonical
stream, none dead-lettered. One dev start serves both tests (dev-mode starts cost CI time)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from service.devtools.demo_avro import ORDER_FIELDS
from service.devtools.demo_crm import CRM_FIELDS
from tests.integration.test_dev_mode import _start, _wait_ready


@dataclass
class DevRun:
    """A running `conversion-relay dev` and the config it wrote."""

    process: subprocess.Popen[bytes]
    config_path: Path
    config: dict[str, Any]
    banner: str  # what dev mode printed at start, up to "Ctrl-C stops everything."

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.config['http']['port']}"


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevRun]:
    process, config_path = _start(tmp_path_factory.mktemp("dev"), "pipe")
    try:
        _wait_ready(process, config_path, settle_s=0)
        assert process.stdout is not None
        banner = b""
        while b"Ctrl-C stops everything." not in banner and process.poll() is None:
            banner += process.stdout.readline()
        config = yaml.safe_load(config_path.read_text())
        yield DevRun(process, config_path, config, banner.decode())
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)
    assert process.returncode == 0


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body


def _samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    families = text_string_to_metric_families(_get(url).decode())
    return [(s.labels, s.value) for f in families for s in f.samples if s.name == name]


def _wait_consumed(dev: DevRun, topic: str, at_least: int = 5) -> dict[str, Any]:
    """Wait until every vendor's pipeline fetched `at_least` records of `topic`; the status."""
    deadline = time.monotonic() + 45
    while True:
        status: dict[str, Any] = json.loads(_get(f"{dev.base}/status"))
        consumed = {
            labels["vendor"]: value
            for labels, value in _samples(
                f"{dev.base}/metrics", "conversion_relay_events_consumed_total"
            )
            if labels["topic"] == topic
        }
        if len(consumed) == len(status["vendors"]) and min(consumed.values()) >= at_least:
            return status
        assert time.monotonic() < deadline, (topic, consumed, status.get("schema_registry"))
        time.sleep(0.5)


async def _read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record the topic holds now (no group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []
        deadline = time.monotonic() + 20
        while True:
            positions = {tp: await consumer.position(tp) for tp in ends}
            if all(positions[tp] >= end for tp, end in ends.items()):
                return records
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
    finally:
        await consumer.stop()


def test_dev_mode_delivers_the_shop_avro_stream_through_its_stand_in_registry(
    dev: DevRun,
) -> None:
    assert dev.config["inputs"]["shop"] == {
        "topic": "shop.orders",
        "format": "avro",
        "fields": ORDER_FIELDS,  # as the bench maps the same orders
    }
    status = _wait_consumed(dev, "shop.orders")
    registry = status["schema_registry"]
    assert registry["state"] == "up" and registry["schemas_cached"] == 1, registry
    assert registry["records_waiting"] == 0
    letters = _samples(f"{dev.base}/metrics", "conversion_relay_dlq_writes_total")
    avro_letters = [
        v for labels, v in letters if labels["reason"] in ("unknown_schema", "undecodable")
    ]
    assert avro_letters and sum(avro_letters) == 0
    fetched = _samples(f"{dev.base}/metrics", "conversion_relay_schema_registry_requests_total")
    assert {labels["result"]: v for labels, v in fetched}["ok"] >= 1


# Where each vendor's request names the customer: the CRM record's field the demo maps there.
CRM_IDENTITY = {
    "sustain_impact": lambda r: r["buyer"]["crm_id"],
    "sales_ninja": lambda r: r["buyer"]["ids"].get("sales_ninja"),
    "expertsender": lambda r: r["buyer"]["ids"]["expertsender_message_guid"],
    "altcraft": lambda r: r["buyer"]["ids"]["altcraft_profile_id"],
    "conductrics": lambda r: r["buyer"]["ids"].get("conductrics"),
    "crm_hook": lambda r: r["order"]["uuid"],
}


def test_dev_mode_delivers_the_crm_json_stream_as_its_mapping_says(dev: DevRun) -> None:
    config = dev.config
    assert "crm.orders" in config["kafka"]["topics"]
    assert config["inputs"]["crm"] == {
        "topic": "crm.orders",
        "format": "json",
        "fields": CRM_FIELDS,
    }
    assert "crm.orders (a CRM's own JSON, 12.5/s)" in dev.banner, dev.banner
    _wait_consumed(dev, "crm.orders")
    # dev mode writes its control endpoint's URL beside its config
    control = json.loads(dev.config_path.with_suffix(".json").read_text())["control_url"]

    def received(vendor: str) -> list[Any]:
        answer = json.loads(_get(f"{control}/vendors/{vendor}/received?last=1000000"))
        return [r["payload"] for r in answer["last"]]

    bootstrap = config["kafka"]["bootstrap_servers"][0]
    deadline = time.monotonic() + 30
    while True:  # until the webhook got paid orders and leads of the CRM's, both
        published = asyncio.run(_read_all(bootstrap, "crm.orders"))
        records = {r["order"]["uuid"]: r for r in (orjson.loads(m.value) for m in published)}
        hooked = [p for p in received("crm_hook") if p["id"] in records]
        kinds = {records[p["id"]]["type"] for p in hooked}
        if len(hooked) >= 6 and kinds == {"order.paid", "lead.created"}:
            break
        assert time.monotonic() < deadline, (len(records), len(hooked), kinds)
        time.sleep(0.5)
    goals = {"order.paid": "sale", "lead.created": "lead"}
    for payload in hooked:  # the webhook's body template: id, type, at, value, contact
        record = records[payload["id"]]
        order = record["order"]
        assert payload["type"] == goals[record["type"]], payload
        assert payload.get("value") == (
            order["total_cents"] / 100 if "total_cents" in order else None
        ), payload
        assert payload["contact"] == {"email": record["buyer"]["email"]}, payload
        at_ms = datetime.fromisoformat(payload["at"]).timestamp() * 1000
        assert abs(at_ms - record["ts"]) < 1, (payload["at"], record["ts"])
    paid = {r["buyer"]["crm_id"]: r for r in records.values() if r["type"] == "order.paid"}
    reached = [p for p in received("sustain_impact") if p["CustomerId"] in paid]
    assert reached, "no CRM order reached sustain_impact by its crm_id"
    for payload in reached:  # customer.ids.sustain_impact from crm_id; params from properties
        record = paid[payload["CustomerId"]]
        assert payload["GoalId"] == config["vendors"]["sustain_impact"]["goals"]["purchase"]
        assert payload["CustomUserScopeParams"] == {
            **record["properties"],
            "first_sku": record["order"]["items"][0]["sku"],
        }, payload
    for vendor, identity in CRM_IDENTITY.items():  # every vendor, matched by its own id
        sent = orjson.dumps(received(vendor)).decode()
        names = {identity(r) for r in records.values()} - {None}
        assert any(name in sent for name in names), f"no CRM record reached {vendor}"
    letters = asyncio.run(_read_all(bootstrap, config["dlq"]["topic"]))
    from_crm = [m for m in letters if (b"crm.orders" in dict(m.headers).values())]
    assert from_crm == [], [dict(m.headers) for m in from_crm]
